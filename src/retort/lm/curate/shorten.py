"""Shortening traces, the three drivers of `retort curate`: DAP rewrites (Wu et al. 2025, "Concise
Reasoning, Big Gains: Pruning Long Reasoning Trace with Difficulty-Aware Prompting", LiteCoT,
arXiv:2505.19716), Retro-Search revisions (Lu et al. 2025, "Retro-Search: Exploring Untaken Paths
for Deeper and Efficient Reasoning", arXiv:2504.04383), and the plain cut both are compared with.

- `rewrite(mode="dap")`: the teacher is shown each correct trace with a budget per difficulty
  level, judges the level and rewrites the trace within that level's budget. A rewrite that does
  not finish, names no level, or whose answer differs from the original's or fails the task's
  check is rejected (counted by reason; the row is dropped). `mode="uniform"`: one budget for
  every problem (the control: uniform-length rewrites at the same mean length).
- `retro_search`: each correct trace is walked thought by thought. At every thought switch (a
  transition keyword: "Wait", "Alternatively", ... or the task's own) the reviser continues the
  trace from just before the switch, with the keywords suppressed where its next step opens; the
  continuation replaces the rest of the trace when it reaches the right answer in fewer steps
  (value gamma^N x R, N the steps left to the answer, R = 1 when correct). The walk goes on in the
  revised trace. `partial`: stop at the first revision.
- `truncate_like`: the originals cut to the length of the matching rows of another set (at a step
  boundary, the answer step kept): what a shortening method must beat.

The reviser (`retort.lm.rollout.revise`) is the trace set's teacher by default: a local model, or
its server (`openai:MODEL`, `retort.lm.curate.server`), or the local model `reviser=` names. The
prompts and the text rules are `retort.lm.curate.trace_text` (whose names this module still
offers); a built-in teacher trained on its task's rewrite prompts (task `detours`) declares its own
in its run (`teacher.json`, `declared_templates`), and `template=` overrides both.

Outputs are ordinary trace sets (`retort.lm.curate.output`), written in shards and resumable: rerun
the same command after a crash and it continues.
"""

from __future__ import annotations

import json
from pathlib import Path

from ...errors import DataError
from ..data.traces import is_trace_set, read_traces
from ..rollout.revise import OpeningBan, Reviser
from .output import holds_out
from .progress import CurateProgress
from .revision import (
    RescoredOutput,
    correct_rows,
    max_new_tokens,
    revising_server,
    token_counter,
)
from .server import api_teacher
from .trace_text import (
    DAP_TEMPLATE,
    DEFAULT_BUDGETS,
    LEVELS,
    TRANSITIONS,
    UNIFORM_TEMPLATE,
    cut_to,
    opens_with_switch,
    parse_budgets,
    parse_rewrite,
    step_sep,
    steps,
    switch_points,
    value,
)


def declared_templates(teacher_name: str) -> dict:
    """The rewrite prompts a built-in teacher was trained on (its run's teacher.json), else {}."""
    from ..models import builtin_teacher_dir

    if teacher_name.startswith("builtin:teacher"):
        task = teacher_name.removeprefix("builtin:teacher").removeprefix("-") or "modchain"
        run = builtin_teacher_dir(task)
    else:
        run = Path(teacher_name).parent
    info = run / "teacher.json"
    if not info.is_file():
        return {}
    try:
        return dict(json.loads(info.read_text()).get("rewrite_templates") or {})
    except (OSError, ValueError):
        return {}


@holds_out
def rewrite(src: str, out: str, *, mode: str = "dap", budgets: dict | None = None, budget: int | None = None,
            template: str | None = None, reviser: str | None = None, temperature: float = 0.0, top_p: float = 1.0,
            max_prompts: int = 0, seed: int = 0, batch_size: int = 64, shard_rows: int = 512,
            overwrite: bool = False, teacher_url: str | None = None, console=None) -> dict:
    """DAP (`mode="dap"`, a budget per level) or uniform (`mode="uniform"`, one `budget`) rewrites
    of a trace set's correct traces by its teacher (or `reviser`)."""
    from ..config import TaskConfig
    from ..tasks import get_task

    if mode not in ("dap", "uniform"):
        raise DataError(f"curate --rewrite: expected dap or uniform, got {mode!r}")
    if mode == "uniform" and not budget:
        raise DataError("curate --rewrite uniform needs --budget N (tokens, the same for every problem)")
    if mode == "dap" and budget:
        raise DataError("curate --budget goes with --rewrite uniform; DAP takes a budget per level (--budgets)")
    budgets = budgets or dict(DEFAULT_BUDGETS)
    manifest, rows = correct_rows(src, max_prompts, reads="shortening", nothing="no correct trace to shorten")
    if template is None:
        template = declared_templates(manifest["params"]["teacher"]["name"]).get(mode) if not reviser else None
        template = template or (DAP_TEMPLATE if mode == "dap" else UNIFORM_TEMPLATE)
    need = ["question", "trace"] + (list(LEVELS) if mode == "dap" else ["budget"])
    missing = [k for k in need if "{" + k + "}" not in template]
    if missing:
        raise DataError(f"curate --rewrite-template: the {mode} prompt must hold {{{'}, {'.join(missing)}}}")
    task = get_task(TaskConfig(**manifest["params"]["task"]))
    rv = Reviser(src, manifest, name=reviser, api=revising_server(src, manifest, reviser, teacher_url))
    max_new = max_new_tokens(manifest)
    params = {"rewrite": {"mode": mode, "budgets": budgets if mode == "dap" else None, "budget": budget,
                          "template": template, "reviser": rv.name, "temperature": temperature, "top_p": top_p,
                          "max_prompts": max_prompts, "seed": seed, "shard_rows": shard_rows}}
    sink = RescoredOutput(src, out, manifest, params, overwrite, rows, shard_rows, rv.tok, rv.scorer(), batch_size)
    counts = sink.counts("rewrite_counts", {"traces": 0, "kept": 0, "rejected": {}, "over_budget": 0,
                                            "levels": {}, "tokens_before": 0, "tokens_after": 0})
    count = token_counter(rv.tok)
    with CurateProgress(console, f"rewrite {mode}", len(rows), "traces") as bar:
        for index, shard, done in sink.shards():
            if done:
                bar(len(shard))
                continue
            texts = [template.format(question=r["prompt"], trace=r["completion"],
                                     **(budgets if mode == "dap" else {"budget": budget})) for r in shard]
            replies = rv.ask(texts, max_new_tokens=max_new, temperature=temperature, top_p=top_p,
                             seed=seed * 1_000_003 + index, batch_size=batch_size)
            kept_rows, kept_texts = [], []
            for r, c in zip(shard, replies):
                level, text = parse_rewrite(c.text, mode)
                reason = None
                if c.finish_reason != "stop":
                    reason = "unfinished"
                elif mode == "dap" and level is None:
                    reason = "no_level"
                elif task.extract_answer(text, r.get("prompt")) != task.extract_answer(r["completion"], r.get("prompt")):
                    reason = "answer_changed"
                elif not task.verify(text, r["reference"], r.get("prompt")):
                    reason = "unverified"
                counts["traces"] += 1
                if reason:
                    counts["rejected"][reason] = counts["rejected"].get(reason, 0) + 1
                    continue
                key = f"{level}|{r.get('difficulty')}"
                counts["levels"][key] = counts["levels"].get(key, 0) + 1
                n = count(text)
                counts["over_budget"] += n > (budgets[level] if mode == "dap" else budget)
                counts["tokens_before"] += count(r["completion"])
                counts["tokens_after"] += n
                counts["kept"] += 1
                kept_rows.append(r)
                kept_texts.append(text)
            sink.write(index, kept_rows, kept_texts, "rewrite_counts", counts)
            bar(len(shard))
    return sink.finish("rewrite_counts", counts)


@holds_out
def retro_search(src: str, out: str, *, gamma: float = 0.9, keywords=None, partial: bool = False, tries: int = 2,
                 reviser: str | None = None, temperature: float = 0.6, top_p: float = 0.95, max_prompts: int = 0,
                 seed: int = 0, batch_size: int = 64, shard_rows: int = 512, overwrite: bool = False,
                 teacher_url: str | None = None, console=None) -> dict:
    """Retro-Search revisions of a trace set's correct traces (module docstring)."""
    from ..config import TaskConfig
    from ..tasks import get_task

    if not 0 < gamma < 1:
        raise DataError(f"curate --gamma: expected 0 < gamma < 1, got {gamma}")
    manifest, rows = correct_rows(src, max_prompts, reads="shortening", nothing="no correct trace to shorten")
    task = get_task(TaskConfig(**manifest["params"]["task"]))
    keywords = tuple(keywords or task.transitions or TRANSITIONS)
    sep = step_sep(r["completion"] for r in rows[:200])
    rv = Reviser(src, manifest, name=reviser, api=revising_server(src, manifest, reviser, teacher_url))
    max_new = max_new_tokens(manifest)
    params = {"retro_search": {"gamma": gamma, "keywords": list(keywords), "partial": partial, "tries": tries,
                               "step_sep": sep, "reviser": rv.name, "temperature": temperature, "top_p": top_p,
                               "max_prompts": max_prompts, "seed": seed, "shard_rows": shard_rows}}
    sink = RescoredOutput(src, out, manifest, params, overwrite, rows, shard_rows, rv.tok, rv.scorer(), batch_size)
    counts = sink.counts("retro_counts", {"traces": 0, "revised_traces": 0, "switches": 0, "rollouts": 0,
                                          "no_untaken_path": 0, "wrong": 0, "not_shorter": 0, "revisions": 0,
                                          "tokens_before": 0, "tokens_after": 0})
    count = token_counter(rv.tok)
    with CurateProgress(console, "retro-search", len(rows), "traces") as bar:
        for index, shard, done in sink.shards():
            if done:
                bar(len(shard))
                continue
            texts = [r["completion"] for r in shard]
            pos = [0] * len(shard)
            active = list(range(len(shard)))
            revised = [0] * len(shard)
            rnd = 0
            while active:
                asks = []
                for i in active:
                    pts = [p for p in switch_points(texts[i], keywords) if p > pos[i]]
                    if pts:
                        asks.append((i, pts[0], texts[i][:pts[0]].rstrip()))
                active = [i for i, _, _ in asks]
                if not asks:
                    break
                conts = rv.continue_([shard[i]["prompt"] for i, _, _ in asks], [x for _, _, x in asks], n=tries,
                                     ban=keywords, max_new_tokens=max_new, temperature=temperature, top_p=top_p,
                                     seed=(seed * 1_000_003 + index) * 1_009 + rnd, batch_size=batch_size)
                rnd += 1
                counts["switches"] += len(asks)
                counts["rollouts"] += len(asks) * tries
                for (i, p, prefix), cands in zip(asks, conts):
                    pos[i] = p
                    pick = next((c for c in cands if c.finish_reason == "stop"
                                 and not opens_with_switch(c.text, sep, keywords)), None)
                    if pick is None:
                        counts["no_untaken_path"] += 1
                        continue
                    ok = task.verify(prefix + pick.text, shard[i]["reference"], shard[i].get("prompt"))
                    if value(len(steps(pick.text, sep)), ok, gamma) <= value(len(steps(texts[i][len(prefix):], sep)),
                                                                         True, gamma):
                        counts["wrong" if not ok else "not_shorter"] += 1
                        continue
                    texts[i] = prefix + pick.text
                    pos[i] = len(prefix)
                    revised[i] += 1
                    counts["revisions"] += 1
                    if partial:
                        active.remove(i)
            for r, text, k in zip(shard, texts, revised):
                counts["traces"] += 1
                counts["revised_traces"] += k > 0
                counts["tokens_before"] += count(r["completion"])
                counts["tokens_after"] += count(text)
            sink.write(index, shard, texts, "retro_counts", counts)
            bar(len(shard))
    return sink.finish("retro_counts", counts)


@holds_out
def truncate_like(src: str, out: str, like: str, *, overwrite: bool = False, console=None) -> dict:
    """The source's correct traces cut to the token count of the matching rows (prompt, sample) of
    `like` (e.g. Retro-Search's revisions), at a step boundary, the answer step kept: the baseline of
    the same length. Rows `like` lacks are dropped."""
    from ..config import ModelConfig
    from ..models import load_tokenizer

    manifest, rows = correct_rows(src, 0, reads="shortening", nothing="no correct trace to shorten")
    if not is_trace_set(like):
        raise DataError(f"curate --truncate-like {like}: not a retort trace set")
    target = {(r["prompt_id"], r["sample_idx"]): r["n_tokens"]
              for r in read_traces(like, columns=["prompt_id", "sample_idx", "n_tokens"]).to_pylist()}
    rows = [r for r in rows if (r["prompt_id"], r["sample_idx"]) in target]
    if not rows:
        raise DataError(f"curate --truncate-like {like}: no row of it matches a correct trace of {src} "
                        "(same prompt id and sample index)")
    tok = load_tokenizer(ModelConfig(**manifest["params"]["teacher"])) if "api" not in manifest["params"]["teacher"] \
        else None
    if tok is None:
        tok = api_teacher(src, manifest, None).tokenizer
    count = token_counter(tok)
    sep = step_sep(r["completion"] for r in rows[:200])
    params = {"truncate_like": {"like": str(Path(like).resolve()), "step_sep": sep}}

    # rows re-tokenised, not re-scored: a cut trace is text the teacher never wrote as it is
    sink = RescoredOutput(src, out, manifest, params, overwrite, rows, 4096, tok, None, 64)
    counts = sink.counts("truncate_counts", {"traces": 0, "cut": 0, "tokens_before": 0, "tokens_after": 0})
    with CurateProgress(console, "truncate", len(rows), "traces") as bar:
        for index, shard, done in sink.shards():
            if done:
                bar(len(shard))
                continue
            texts = [cut_to(r["completion"], target[(r["prompt_id"], r["sample_idx"])], count, sep) for r in shard]
            for r, t in zip(shard, texts):
                counts["traces"] += 1
                counts["cut"] += t != r["completion"]
                counts["tokens_before"] += count(r["completion"])
                counts["tokens_after"] += count(t)
            sink.write(index, shard, texts, "truncate_counts", counts)
            bar(len(shard))
    return sink.finish("truncate_counts", counts)


__all__ = ["DAP_TEMPLATE", "DEFAULT_BUDGETS", "LEVELS", "TRANSITIONS", "UNIFORM_TEMPLATE", "OpeningBan", "Reviser", "cut_to",
           "declared_templates", "opens_with_switch", "parse_budgets", "parse_rewrite", "retro_search", "rewrite",
           "step_sep", "steps", "switch_points", "truncate_like", "value"]
