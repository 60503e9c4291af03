"""`curate --multi-turn`: MinD's data (Multi-Turn Decomposition, Zeng et al. 2025, arXiv:2505.19788,
spec §18.2 steps 1-4): each correct trace rewritten in the turn format of `retort.lm.data.turns`.

1. The correct traces of the set (rejection sampling was `retort traces` + the verifier).
2. Segmentation, by rules (retort ships rules, not the paper's GPT-4o prompt): the trace's final
   answer step is taken off; the rest is cut before every thought switch (the task's transition
   words, else "Wait", "Alternatively", "Hmm", ... as Retro-Search's: `trace_text.TRANSITIONS`), and a
   unit longer than `unit_steps` steps (blank-line paragraphs, or lines in a set without them) is
   cut at step boundaries into pieces of that many.
3. The intermediate answer a_k of each prefix u_1..u_k (k < K), by `intermediate`:
   - `teacher` (the default): the trace set's teacher (or `reviser`; a local model or the set's
     server) continues the prompt + the prefix + an answer cue (`answer_cue`: the opener of the
     task's answer format, `A:` or `\\boxed{`; `--answer-cue` for a reasoning model, e.g.
     `</think>`), greedily, and the task reads the answer from cue + continuation;
   - `last-result`: a rule, for the built-in tiny tasks whose tiny teacher cannot be asked: the
     last number written after `=` in the prefix. Chosen explicitly, never by fallback.
   A prefix whose answer cannot be read (neither way) is no turn boundary: its unit is joined to
   the next (counted, `joined`). a_K is the trace's own final answer. A trace without a final
   answer step, or with nothing before it, is skipped (counted, `skipped`).
4. The turns written with `render_turns`, each answer in the task's format; a row whose turn text
   the task's verifier does not accept is dropped (counted).

Rows keep their prompt, reference and ids; the completion is the turn text in the teacher's tokens
(not re-scored: no teacher wrote it as it is). The output is an ordinary trace set (resumable,
`retort.lm.curate.output`), for `method=sft data.source=traces`, then `method=grpo
method_args.reward=mind_turns`."""

from __future__ import annotations

import re
from itertools import pairwise

from ...errors import DataError
from ..data.turns import render_turns
from .output import holds_out
from .progress import CurateProgress
from .revision import (
    RescoredOutput,
    correct_rows,
    max_new_tokens,
    revising_server,
    token_counter,
)
from .trace_text import TRANSITIONS, step_sep, steps, switch_points

INTERMEDIATE = ("teacher", "last-result")
_RESULT = re.compile(r"=\s*(-?\d+(?:\.\d+)?)")


def split_answer(text: str, task, prompt=None, sep: str = "\n") -> tuple[str, str | None]:
    """(the trace before its final answer step, that answer), the answer step being the last step
    the task reads an answer from; (text, None) when there is none."""
    parts = steps(text, sep)
    if parts and task.extract_answer(parts[-1], prompt) is not None:
        return sep.join(p.strip("\n") for p in parts[:-1]), task.extract_answer(parts[-1], prompt)
    return text, None


def segment(body: str, keywords, sep: str, unit_steps: int = 0) -> list[str]:
    """The thinking units of a trace body: cut before each thought switch (`keywords`, whole words,
    any case), then every unit of more than `unit_steps` steps (0: no limit) into pieces of that many."""
    words = tuple(keywords) + tuple(k.lower() for k in keywords) + tuple(k.capitalize() for k in keywords)
    cuts = [0, *switch_points(body, sorted(set(words))), len(body)]
    units = []
    for a, b in pairwise(cuts):
        piece = body[a:b].strip()
        if not piece:
            continue
        parts = steps(piece, sep)
        if unit_steps and len(parts) > unit_steps:
            units += [sep.join(p.strip("\n") for p in parts[i:i + unit_steps]).strip()
                      for i in range(0, len(parts), unit_steps)]
        else:
            units.append(piece)
    return [u for u in units if u]


def last_result(prefix: str) -> str | None:
    """The `last-result` rule: the last number written after `=` in `prefix` (None if none)."""
    found = _RESULT.findall(prefix)
    return found[-1] if found else None


def answer_cue(task) -> str:
    """What opens an answer in the task's format (`A:`, `\\boxed{`, `<answer>`)."""
    marked = task.completion_of("\x00")
    return marked.split("\x00")[0]


def join_unanswered(units: list[str], answers: list[str | None], sep: str) -> tuple[list[str], list[str], int]:
    """Units whose answer is None joined to the next one (the last unit always has its answer)."""
    out_u, out_a, pending, joined = [], [], [], 0
    for u, a in zip(units, answers):
        pending.append(u)
        if a is None:
            joined += 1
            continue
        out_u.append(sep.join(pending))
        out_a.append(a)
        pending = []
    return out_u, out_a, joined


@holds_out
def multi_turn(src: str, out: str, *, intermediate: str = "teacher", unit_steps: int = 4, keywords=None,
               cue: str | None = None, answer_tokens: int = 16, reviser: str | None = None, max_prompts: int = 0,
               seed: int = 0, batch_size: int = 64, shard_rows: int = 512, overwrite: bool = False,
               teacher_url: str | None = None, console=None) -> dict:
    """MinD's turn-format rows of `src`'s correct traces in `out` (module docstring)."""
    from ..config import ModelConfig, TaskConfig
    from ..models import load_tokenizer
    from ..tasks import get_task
    from .server import api_teacher

    if intermediate not in INTERMEDIATE:
        raise DataError(f"curate --intermediate {intermediate!r}: expected one of {', '.join(INTERMEDIATE)}")
    manifest, rows = correct_rows(src, max_prompts, reads="curate --multi-turn",
                                  nothing="no correct trace to split into turns")
    task = get_task(TaskConfig(**manifest["params"]["task"]))
    keywords = tuple(keywords or task.transitions or TRANSITIONS)
    sep = step_sep(r["completion"] for r in rows[:200])
    cue = answer_cue(task) if cue is None else cue
    rv = None
    if intermediate == "teacher":
        from ..rollout.revise import Reviser

        rv = Reviser(src, manifest, name=reviser, api=revising_server(src, manifest, reviser, teacher_url))
        tok = rv.tok
    elif "api" in manifest["params"]["teacher"]:
        tok = api_teacher(src, manifest, teacher_url).tokenizer
    else:
        tok = load_tokenizer(ModelConfig(**manifest["params"]["teacher"]))
    params = {"multi_turn": {"intermediate": intermediate, "unit_steps": unit_steps, "keywords": list(keywords),
                             "cue": cue, "answer_tokens": answer_tokens, "step_sep": sep,
                             "reviser": rv.name if rv is not None else None, "max_prompts": max_prompts,
                             "seed": seed, "shard_rows": shard_rows}}
    sink = RescoredOutput(src, out, manifest, params, overwrite, rows, shard_rows, tok, None, batch_size)
    counts = sink.counts("multi_turn_counts", {"traces": 0, "written": 0, "skipped": 0, "rejected": 0,
                                               "turns": 0, "joined": 0, "tokens_before": 0, "tokens_after": 0})
    count = token_counter(tok)
    max_new = min(answer_tokens, max_new_tokens(manifest))
    with CurateProgress(console, "multi-turn", len(rows), "traces") as bar:
        for index, shard, done in sink.shards():
            if done:
                bar(len(shard))
                continue
            plans = []  # (row, units, final answer) of the traces that can be rewritten
            counts["traces"] += len(shard)
            for r in shard:
                body, final = split_answer(r["completion"], task, r["prompt"], sep)
                units = segment(body, keywords, sep, unit_steps) if final is not None else []
                if final is None or not units:
                    counts["skipped"] += 1
                    continue
                plans.append((r, units, final))
            asks = [(i, k) for i, (_, units, _) in enumerate(plans) for k in range(1, len(units))]
            got: dict = {}
            if rv is not None and asks:
                prefixes = [sep.join(plans[i][1][:k]) + sep + cue for i, k in asks]
                conts = rv.continue_([plans[i][0]["prompt"] for i, _ in asks], prefixes, n=1,
                                     max_new_tokens=max_new, temperature=0.0, top_p=1.0,
                                     seed=seed * 1_000_003 + index, batch_size=batch_size)
                for (i, k), c in zip(asks, conts):
                    said = task.extract_answer(cue + c[0].text, plans[i][0]["prompt"])
                    got[i, k] = said.strip() if said and said.strip() else None
            else:
                for i, k in asks:
                    got[i, k] = last_result(sep.join(plans[i][1][:k]))
            kept, texts = [], []
            for i, (r, units, final) in enumerate(plans):
                answers = [got[i, k] for k in range(1, len(units))] + [final]
                units, answers, joined = join_unanswered(units, answers, sep)
                text = render_turns(units, [task.completion_of(a) for a in answers])
                counts["joined"] += joined
                if not task.verify(text, r["reference"], r["prompt"]):
                    counts["rejected"] += 1
                    continue
                counts["written"] += 1
                counts["turns"] += len(units)
                counts["tokens_before"] += count(r["completion"])
                counts["tokens_after"] += count(text)
                kept.append(r)
                texts.append(text)
            sink.write(index, kept, texts, "multi_turn_counts", counts)
            bar(len(shard))
    return sink.finish("multi_turn_counts", counts)


__all__ = ["INTERMEDIATE", "answer_cue", "join_unanswered", "last_result", "multi_turn", "segment", "split_answer"]
