"""The teacher of a trace set, offline (`teacher.name=traces:DIR`, `TraceStoreTeacher`), and the
tokenizer a trace set's token ids are in (`trace_tokenizer`)."""

from __future__ import annotations

from ...errors import DataError
from ..tasks.base import Prompt, manifest_format
from .base import Teacher


class TraceStoreTeacher(Teacher):
    """The teacher of a trace set, offline: the log-prob of every sampled token and the top-k
    `retort traces` stored (with `sampling.topk=K`), looked up by (prompt ids, completion ids).
    Continuations it did not sample are refused with a message; it cannot generate."""

    kind = "trace store"
    capabilities = frozenset({"score_stored"})  # scores of its own traces only, not of any continuation

    def __init__(self, path: str):
        from ..data.collate import encode_prompt
        from ..data.traces import read_manifest, read_traces

        manifest = read_manifest(path)
        params = manifest["params"]
        if "teacher" not in params:
            raise DataError(f"{path}: the manifest does not name its teacher (a curated set?); use the set "
                            "`retort traces` wrote")
        if len(params.get("teachers") or []) > 1 and manifest.get("tokenizer_sha256") is None:
            who = ", ".join(t["name"] for t in params["teachers"])
            raise DataError(f"{path}: sampled by teachers with different tokenizers ({who}): its token ids are not in "
                            "one vocabulary, so they cannot be scored as one teacher's; train on the text (sft), or "
                            "sample one teacher per set")
        tok = trace_tokenizer(manifest, path, purpose="its log-probs as token ids")
        super().__init__(f"traces:{path}", tok)
        self.k = self.max_topk = int(params.get("sampling", {}).get("topk") or 0)
        cols = read_traces(path, columns=["prompt", "completion_ids", "completion_logprobs", "topk",
                                          "finish_reason"]).to_pydict()
        self._rows: dict[tuple, int] = {}
        prompts: dict[str, tuple] = {}
        # the prompts as the student's are encoded from the set (`TraceEncoder`): with the system
        # message its teacher was prompted with
        system = manifest_format(manifest)["system"]
        for i, (p, c) in enumerate(zip(cols["prompt"], cols["completion_ids"])):
            if p not in prompts:
                prompts[p] = tuple(encode_prompt(tok, Prompt(p, system)))
            key = prompts[p]
            self._rows[(key, tuple(c))] = i
        self._cols = cols

    def score(self, prompt_ids, completion_ids, *, topk: int = 0, **_):
        from ..data import topk as codec
        from ..rollout.score import Scored

        if topk and not self.k:
            raise DataError(f"{self.name}: the traces hold no top-k (made without sampling.topk)")
        if topk > self.k:
            raise DataError(f"{self.name}: the traces hold the top-{self.k}; top-{topk} asked")
        eos = self.tokenizer.eos_token_id
        out = []
        for p, c in zip(prompt_ids, completion_ids):
            c = list(c)
            stop = bool(c) and c[-1] == eos
            row = self._rows.get((tuple(p), tuple(c[:-1] if stop else c)))
            if row is None or stop != (self._cols["finish_reason"][row] == "stop"):
                raise DataError(f"{self.name}: a continuation this trace store did not sample ({len(c)} tokens); "
                                "it can only score its own traces (train on data.traces= of the same set)")
            lps = list(self._cols["completion_logprobs"][row])
            if len(lps) != len(c) - stop:
                raise DataError(f"{self.name}: no teacher log-probs stored for a trace (an API server that gave none, "
                                "or tokens that did not map to ids); it can be learnt from as text (sft), not scored")
            ids, lp = codec.decode(self._cols["topk"][row]) if self._cols["topk"][row] else (None, None)
            if stop:  # the EOS step's log-prob is kept only inside the stored top-k
                # an API server's traces may hold no row for the EOS step (it lists only the text's
                # tokens): the scores then cover the sampled tokens, and the EOS step has no teacher
                hit = [] if ids is None or len(ids) < len(c) else [j for j, t in enumerate(ids[len(c) - 1]) if t == eos]
                if not hit and not topk:
                    raise DataError(f"{self.name}: no log-prob stored for the end-of-sequence step of a trace "
                                    "(it is kept only when EOS is among the stored top-k)")
                # NaN: outside the stored top-k, unknown (a top-k consumer does not read it)
                lps.append(float(lp[len(c) - 1][hit[0]]) if hit else float("nan"))
            scored = Scored(lps)
            if topk:
                scored.topk_ids = [list(map(int, r[:topk])) for r in ids[:len(c)]]
                scored.topk_logprobs = [list(map(float, r[:topk])) for r in lp[:len(c)]]
            out.append(scored)
        return out


def trace_tokenizer(manifest: dict, path, *, purpose: str):
    """The tokenizer whose ids a trace set's `completion_ids` and top-k are in: its teacher's, or for
    an API teacher the checked `teacher.api.tokenizer`. Refused (naming `purpose`) when the set's
    token ids are not ids of any known tokenizer (an API teacher without a checked token map)."""
    from ..config import ModelConfig
    from ..models import load_tokenizer

    params = manifest["params"]
    while "teacher" not in params and isinstance(params.get("source_params"), dict):
        params = params["source_params"]  # a curated set: its source's teacher
    t = dict(params["teacher"])
    api = t.pop("api", None)
    if api is not None:
        tmap = manifest.get("token_map") or {}
        if not api.get("tokenizer") or not tmap.get("ids"):
            why = tmap.get("check") or "no teacher.api.tokenizer"
            raise DataError(f"{path}: sampled from {t['name']} with no checked token map ({why}): its rows hold text and the server's token strings, not token "
                            f"ids, so {purpose} cannot be used. Sample again with teacher.api.tokenizer set to the "
                            "served model's tokenizer (checked against the server), or train on the text (sft)")
        from .tokens import server_tokenizer

        return server_tokenizer(api["tokenizer"])
    return load_tokenizer(ModelConfig(**t))


__all__ = ["TraceStoreTeacher", "trace_tokenizer"]
