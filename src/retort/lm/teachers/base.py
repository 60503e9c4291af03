"""The Teacher interface, its local-model and trace-store implementations, and the kind registry."""

from __future__ import annotations

from typing import Optional

from ...errors import ConfigError, DataError

CAPABILITIES = ("generate", "score", "hidden", "score_stored")


class Teacher:
    """What methods use of a teacher. `capabilities` says which calls work (`CAPABILITIES`)."""

    kind = "teacher"
    capabilities: frozenset = frozenset()
    max_topk: Optional[int] = None  # the most top-k entries `score` can give per position (None: any)

    def __init__(self, name: str, tokenizer=None):
        self.name, self.tokenizer = name, tokenizer

    def identity(self) -> str:
        """What identifies this teacher exactly (recorded in trace manifests, checked on reuse)."""
        return self.name

    def generate(self, prompts: list[str], **kw) -> list:
        """`num_samples` completions (text, token ids, finish reason; with `scores=K` the teacher's
        log-probs and top-K at each sampled token) of each prompt; see `retort.lm.rollout.generate`."""
        raise NotImplementedError(self._lacks("generate"))

    def score(self, prompt_ids: list[list[int]], completion_ids: list[list[int]], *, topk: int = 0) -> list:
        raise NotImplementedError(self._lacks("score"))

    def hidden(self, batch) -> "tuple[torch.Tensor, torch.Tensor]":  # noqa: F821 (torch: lazily, a server needs none)
        raise NotImplementedError(self._lacks("hidden"))

    def _lacks(self, what: str) -> str:
        return f"teacher {self.name} ({self.kind}) cannot {what}"


class LocalTeacher(Teacher):
    """A model in this process: every capability. `model` is the frozen module itself."""

    kind = "local model"
    capabilities = frozenset({"generate", "score", "hidden", "score_stored"})

    def __init__(self, name: str, model, tokenizer):
        super().__init__(name, tokenizer)
        self.model = model

    def __call__(self, *args, **kw):
        """The model's forward: where code wants the model itself, the teacher runs as one."""
        return self.model(*args, **kw)

    def identity(self) -> str:
        from ..data.hashes import weights_sha256

        return weights_sha256(self.model)

    def generate(self, prompts, **kw):
        from ..rollout.generate import generate

        return generate(self.model, self.tokenizer, prompts, **kw)

    def score(self, prompt_ids, completion_ids, *, topk: int = 0, batch_size: int = 16):
        from ..rollout.score import score

        pad = self.tokenizer.pad_token_id or 0
        return score(self.model, prompt_ids, completion_ids, topk=topk, batch_size=batch_size, pad_id=pad)

    def hidden(self, batch):
        model = getattr(self.model, "module", self.model)
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         output_hidden_states=True, logits_to_keep=1)
        return out.hidden_states[-1], model.get_output_embeddings().weight


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
        for i, (p, c) in enumerate(zip(cols["prompt"], cols["completion_ids"])):
            key = prompts.setdefault(p, tuple(encode_prompt(tok, p)))
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

    t = dict(manifest["params"]["teacher"])
    api = t.pop("api", None)
    if api is not None:
        tmap = manifest.get("token_map") or {}
        if not api.get("tokenizer") or not tmap.get("ids"):
            why = tmap.get("check") or "no teacher.api.tokenizer"
            raise DataError(f"{path}: sampled from {t['name']} with no checked token map ({why}): its rows hold text and the server's token strings, not token "
                            f"ids, so {purpose} cannot be used. Sample again with teacher.api.tokenizer set to the "
                            "served model's tokenizer (checked against the server), or train on the text (sft)")
        from .api import server_tokenizer

        return server_tokenizer(api["tokenizer"])
    return load_tokenizer(ModelConfig(**t))


# `teacher.name` prefix -> the Teacher class of that kind (None: not available in this version)
KINDS: dict[str, Optional[type]] = {"traces": TraceStoreTeacher, "openai": None}


def _kind(name: str) -> Optional[str]:
    prefix = name.split(":", 1)[0]
    return prefix if ":" in name and prefix in KINDS else None


def capabilities_of(name: str) -> frozenset:
    """What the teacher `teacher.name` names can do, known without loading it."""
    kind = _kind(name)
    if kind is None:
        return LocalTeacher.capabilities
    cls = KINDS[kind]
    if cls is None:
        raise ConfigError(f"teacher.name={name}: {kind}: teachers (an OpenAI-compatible server) are not available "
                          "in this version of retort; use a local model or traces:DIR")
    return cls.capabilities


def check_capabilities(method: str, needs: tuple, teacher_name: str) -> None:
    """Refuse, before step 0, a teacher that lacks every set of capabilities `needs` lists (each
    set is one way the method can work, e.g. `hidden`, or `score` for the sparse top-k path)."""
    if not needs:
        return
    have = capabilities_of(teacher_name)
    if any(set(way) <= have for way in needs):
        return
    ways = " or ".join("+".join(sorted(w)) for w in needs)
    kinds = {"local model": LocalTeacher, **{f"{prefix}:": cls for prefix, cls in KINDS.items() if cls}}
    missing = sorted({c for w in needs for c in w} - have)
    where = "; ".join(f"{c}: {', '.join(k for k, cls in kinds.items() if c in cls.capabilities) or 'none yet'}"
                      for c in missing)
    raise ConfigError(f"method {method} needs a teacher that can {ways}; teacher.name={teacher_name} can "
                      f"{', '.join(sorted(have)) or 'nothing'} (teachers that can {where})")


def open_teacher(cfg, *, seed: int = 0, device="cpu") -> Teacher:
    """The Teacher a `ModelConfig` names, loaded and frozen."""
    kind = _kind(cfg.name)
    capabilities_of(cfg.name)  # refuses kinds not available
    if kind == "openai":
        return KINDS[kind](cfg)
    if kind is not None:
        return KINDS[kind](cfg.name.split(":", 1)[1])
    from ..models import load_model

    model, tok = load_model(cfg, seed=seed)
    return LocalTeacher(cfg.name, model.to(device).eval().requires_grad_(False), tok)


from .api import ApiTeacher  # noqa: E402  (api.py builds on Teacher above)

KINDS["openai"] = ApiTeacher

__all__ = ["ApiTeacher", "CAPABILITIES", "KINDS", "LocalTeacher", "Teacher", "TraceStoreTeacher", "capabilities_of",
           "check_capabilities", "open_teacher", "trace_tokenizer"]
