"""`retort curate TRACES --out DIR --knowledge`: the training rows of LoRID's three reasoners (Li et al.,
"Multi-LoRA Interaction for Reasoning Distillation", IJCAI 2025, arXiv:2508.13037; the knowledge
augmentation of the authors' `src/gen_data.py`).

For each correct trace (question q, rationale r) the teacher is asked for the knowledge the
rationale uses (`KNOWLEDGE_TEMPLATE`: the released role and input, "Question: ...\\nRationale:
...\\nKnowledge: ", a JSON list of points, temperature 0.2), and three ordinary trace sets are written:

- `DIR/ir`: q -> r, the source rows as they are (the intuitive reasoner: plain CoT distillation);
- `DIR/kg`: KG_TEMPLATE(q) -> the knowledge (the knowledge generator);
- `DIR/dr`: DR_TEMPLATE(q, knowledge) -> r (the deep reasoner).

Each is trained by `retort train method=sft data.source=traces data.traces=DIR/ROLE
student.lora.r=R` into its own run (the paper trains the three LoRAs apart), and `retort eval
--lorid` puts the three adapters on one base. The KG/DR prompts (`retort.lm.eval.lorid`) are
recorded in the sets' manifests (`params.knowledge`), so evaluation prompts as training did.

The teacher is any that generates: the set's own (a local model, or its server, `openai:MODEL`), or
the local model `reviser=` names. A reply that is a JSON list of strings becomes one point per line;
other text is kept as it is (counted, `not_json`); an unfinished or empty reply drops the row
(counted by reason). retort's built-in tiny teachers learned their task and nothing else, so they
cannot write knowledge: with one of them the command is refused unless `rule=True`
(`--knowledge-rule`), which writes each question's knowledge by its task's rule (`RULES`: the facts
a solution rests on that the question does not state: the modulus, the order of work, for `vars`
the dependency order) and records that it did (`params.knowledge.source = "rule"`).

KG and DR rows carry the teacher's tokens but no teacher log-probs or top-k (the teacher never
scored those texts in those contexts): they are for `sft`. Resumable per shard, like the other
curate outputs.
"""

from __future__ import annotations

import json
import re
from math import ceil
from pathlib import Path

import pyarrow as pa

from ...errors import DataError
from ...paths import entries
from ..data.traces import SCHEMA, read_traces, remove_trace_set
from ..eval.lorid import DR_TEMPLATE, KG_TEMPLATE, ROLES, dr_prompt, kg_prompt
from ..tasks.base import Prompt
from .output import holds_out, open_output
from .progress import CurateProgress
from .revision import correct_rows, max_new_tokens
from .server import api_teacher
from .stats import trace_stats

KNOWLEDGE_SYSTEM = "You are a thoughtful and logical teacher designed to output JSON."
KNOWLEDGE_TEMPLATE = ("List the knowledge needed to solve the question: the facts, definitions, rules and formulas "
                      "the rationale relies on, not its computation or its answer. Reply with a JSON list of short "
                      "strings and nothing else.\n\nQuestion: {question}\nRationale: {rationale}\nKnowledge: ")


def _modchain(task, question: str) -> str:
    ops = len(re.findall(r"[-+*]\d", str(question).removeprefix("Q:")))
    return f"{ops} operations, left to right; reduce each result mod {task.modulus}"


def _vars(task, question: str) -> str:
    body = str(question).strip().removeprefix("Q:")
    defs, _, target = body.partition(";")
    deps = {}
    for d in defs.split(","):
        name, _, expr = d.partition("=")
        deps[name] = next((c for c in expr if c.isalpha()), None)
    order, name = [], target.rstrip("?")
    while name is not None and name not in order:
        order.append(name)
        name = deps.get(name)
    return f"order {','.join(reversed(order))}; reduce each result mod {task.modulus}"


# task name -> knowledge(task, question): the built-in tasks' facts a solution rests on (--knowledge-rule)
RULES = {"modchain": _modchain, "detours": _modchain, "vars": _vars}


def parse_knowledge(text: str) -> tuple[str, bool]:
    """(knowledge, whether the reply was a JSON list): a JSON list of strings (also inside a ```json
    fence) becomes one point per line; any other reply is kept as its stripped text."""
    body = text.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", body, re.DOTALL)
    if fenced:
        body = fenced.group(1)
    try:
        points = json.loads(body)
    except ValueError:
        return text.strip(), False
    if isinstance(points, list) and points and all(isinstance(p, str) for p in points):
        return "\n".join(p.strip() for p in points if p.strip()), True
    return text.strip(), False


def _outputs(src: str, out: str, manifest: dict, params: dict, overwrite: bool) -> dict:
    """role -> the writer of DIR/role. `out` holds nothing but (some of) ir/, kg/, dr/."""
    others = [e.name for e in entries(Path(out)) if e.name not in ROLES or not e.is_dir()] \
        if Path(out).is_dir() else []
    if others:
        raise DataError(f"curate --knowledge: --out {out} holds {', '.join(sorted(others)[:3])}; it writes only "
                        f"{', '.join(ROLES)} there: choose a new or empty directory")
    writers = {}
    for role in ROLES:
        p = {**params, "knowledge": {**params["knowledge"], "role": role}}
        if role != "ir":  # rows the teacher never scored in these contexts: no top-k for offline KD
            p["sampling"] = {**p["sampling"], "topk": 0}
        writers[role] = open_output(str(Path(out) / role), p, manifest, overwrite=overwrite, resume=True)
    return writers


def _rule(task, name: str):
    if name not in RULES:
        raise DataError(f"curate --knowledge-rule: task {name} has no knowledge rule (rules: {', '.join(RULES)}); "
                        "let a teacher that writes text write it (--reviser MODEL, or a set sampled from one)")
    return lambda q: RULES[name](task, q)


@holds_out
def knowledge(src: str, out: str, *, rule: bool = False, template: str | None = None, reviser: str | None = None,
              temperature: float = 0.2, top_p: float = 1.0, max_prompts: int = 0, seed: int = 0,
              batch_size: int = 64, shard_rows: int = 512, overwrite: bool = False, teacher_url: str | None = None,
              console=None) -> dict:
    """Write DIR/ir, DIR/kg and DIR/dr from `src`'s correct traces (module docstring); returns the counts."""
    from ..config import ModelConfig, TaskConfig
    from ..models import load_tokenizer
    from ..rollout.revise import Reviser
    from ..tasks import get_task

    template = template or KNOWLEDGE_TEMPLATE
    missing = [k for k in ("question", "rationale") if "{" + k + "}" not in template]
    if missing:
        raise DataError(f"curate --knowledge-template: the prompt must hold {{{'}, {'.join(missing)}}}")
    if rule and (reviser or teacher_url):
        raise DataError("curate --knowledge-rule writes the knowledge by the task's rule; --reviser and --teacher-url "
                        "name a teacher to write it: pass one or the other")
    manifest, rows = correct_rows(src, max_prompts, reads="curate --knowledge", single_turn=True,
                                  nothing="no correct single-turn trace to write knowledge for")
    teacher = manifest["params"]["teacher"]
    task = get_task(TaskConfig(**manifest["params"]["task"]))
    if rule:
        write_rule = _rule(task, task.name)
        rv = None
        tok = load_tokenizer(ModelConfig(**teacher)) if "api" not in teacher else \
            api_teacher(src, manifest, None).tokenizer
        how = {"source": "rule", "rule": task.name}
    else:
        if reviser is None and str(teacher["name"]).startswith(("builtin:", "preset:")):
            raise DataError(f"curate --knowledge: {src}'s teacher ({teacher['name']}) is one of retort's tiny models, "
                            "trained on its task alone: it cannot write knowledge. Pass --knowledge-rule to write it "
                            f"by the task's rule ({', '.join(RULES)}), or --reviser MODEL for a model that writes text")
        api = api_teacher(src, manifest, teacher_url, "--knowledge asks the teacher") if reviser is None else None
        rv = Reviser(src, manifest, name=reviser, api=api)
        tok = rv.tok
        how = {"source": "teacher", "teacher": rv.name, "template": template, "system": KNOWLEDGE_SYSTEM,
               "temperature": temperature, "top_p": top_p, "seed": seed}
    params = {"source": str(Path(src).resolve()), "source_params": manifest["params"],
              "knowledge": {**how, "kg_template": KG_TEMPLATE, "dr_template": DR_TEMPLATE,
                            "max_prompts": max_prompts, "shard_rows": shard_rows},
              "teacher": teacher, "task": manifest["params"]["task"],
              "sampling": manifest["params"].get("sampling", {})}
    fresh = [role for role in ROLES if not (Path(out) / role).exists()]
    writers = _outputs(src, out, manifest, params, overwrite)
    counts = dict(writers["kg"].manifest.get("knowledge_counts") or
                  {"traces": 0, "kept": 0, "not_json": 0, "rejected": {}})
    max_new = max_new_tokens(manifest)
    with CurateProgress(console, "knowledge", len(rows), "traces") as bar:
        for index in range(ceil(len(rows) / shard_rows)):
            shard = rows[index * shard_rows:(index + 1) * shard_rows]
            if all(index in w.done() for w in writers.values()):
                bar(len(shard))
                continue
            if rv is None:
                written = [(write_rule(r["prompt"]), True) for r in shard]
                reasons = [None] * len(shard)
            else:
                asks = [Prompt(template.format(question=str(r["prompt"]).strip(), rationale=r["completion"].strip()),
                               KNOWLEDGE_SYSTEM) for r in shard]
                replies = rv.ask(asks, max_new_tokens=max_new, temperature=temperature, top_p=top_p,
                                 seed=seed * 1_000_003 + index, batch_size=batch_size)
                written = [parse_knowledge(c.text) for c in replies]
                reasons = ["unfinished" if c.finish_reason != "stop" else "empty" if not k else None
                           for c, (k, _) in zip(replies, written)]
            kept = []
            for r, (k, is_json), why in zip(shard, written, reasons):
                counts["traces"] += 1
                if why:
                    counts["rejected"][why] = counts["rejected"].get(why, 0) + 1
                    continue
                counts["kept"] += 1
                counts["not_json"] += not is_json
                kept.append((r, k))
            _write(writers, index, kept, tok, counts)
            bar(len(shard))
    if not counts["kept"]:
        for role in fresh:  # nothing half-written: the sets this command began go
            remove_trace_set(Path(out) / role)
        rejected = ", ".join(f"{k} {v}" for k, v in sorted(counts["rejected"].items()))
        raise DataError(f"curate --knowledge: the teacher wrote no usable knowledge for any of {counts['traces']} "
                        f"traces ({rejected}); nothing to train KG and DR on")
    stats = {}
    for role, w in writers.items():
        w.finish({**trace_stats(read_traces(Path(out) / role, allow_incomplete=True)), "knowledge_counts": counts})
        stats[role] = w.manifest["stats"].get("rows")
    return {"knowledge_counts": counts, "rows": stats, "out": {role: str(Path(out) / role) for role in ROLES}}


def _write(writers: dict, index: int, kept: list, tok, counts: dict) -> None:
    """Shard `index` of the three sets: the source rows (ir), question -> knowledge (kg), question +
    knowledge -> rationale (dr)."""
    out = {role: [] for role in ROLES}
    for r, k in kept:
        base = {key: r.get(key) for key in SCHEMA.names}
        base["prompt"] = str(r["prompt"])
        out["ir"].append(base)
        ids = tok(k, add_special_tokens=False)["input_ids"]
        out["kg"].append({**base, "prompt": str(kg_prompt(r["prompt"])), "completion": k, "completion_ids": ids,
                          "completion_logprobs": [], "topk": None, "finish_reason": "stop", "n_tokens": len(ids),
                          "answer": None, "reasoning": None, "api_tokens": None})
        out["dr"].append({**base, "prompt": str(dr_prompt(r["prompt"], k)), "completion_logprobs": [],
                          "topk": None, "reasoning": None, "api_tokens": None})
    for role, w in writers.items():
        w.manifest["knowledge_counts"] = counts
        w.write_shard(index, pa.Table.from_pylist(out[role], schema=SCHEMA))


__all__ = ["KNOWLEDGE_SYSTEM", "KNOWLEDGE_TEMPLATE", "RULES", "knowledge", "parse_knowledge"]
