"""`retort traces agent=code`: agent trajectories of a teacher (agent distillation, Kang et al.,
arXiv 2505.17612; repo Nardien/agent-distillation, `run_agent_teacher_train.sh`: the teacher greedy).

Each question gets one greedy CodeAct episode of the teacher (`retort.lm.rollout.agent`): a thought
and a ```python action per step, run in the sandbox (`retort.sandbox`, state kept across steps by
replaying the earlier actions), its output as a tool turn, until `final_answer(x)` or
`agent.max_steps`. Any teacher that generates: a local model (built-in, packaged, a directory) or a
server (`teacher.name=openai:MODEL`, through its chat endpoint). A row is multi-turn (`messages`:
system?, user, assistant, tool, ..., so `sft` trains the assistant turns only), `correct` by the
task's checker on the final answer, and its `agent` column keeps the steps, parse errors, execution
errors and whether it hit max_steps (`retort curate --agent-filter` keeps the paper's rows).
First-thought prefix (`agent.first_thought=cot`): step 1 continues "Thought: " + the first paragraph
of the teacher's own CoT answer (`agent.cot`, a trace set of it, or answered greedily here first).
Resumable per shard like every trace set (`retort.lm.data.traces`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from math import ceil
from pathlib import Path

from .. import __version__
from ..errors import ConfigError, DataError
from .config import teacher_params
from .data.hashes import tokenizer_sha256
from .data.traces import TraceWriter, read_traces
from .eval.agent import agent_system, answer_reader, is_correct, summary
from .rollout.agent import first_thought, run_episodes, sandbox_executor, teacher_policy
from .tasks.base import task_params


def stored_cot(path, examples) -> dict:
    """prompt id -> the first CoT answer of trace set `path` (`agent.cot`) to the same prompt, for
    every question of `examples` (read before anything is written: a missing one is refused)."""
    t = read_traces(path, columns=["prompt", "completion"]).to_pydict()
    by_prompt: dict = {}
    for p, c in zip(t["prompt"], t["completion"]):
        by_prompt.setdefault(p, c)
    missing = [e for e in examples if str(e.prompt) not in by_prompt]
    if missing:
        raise DataError(f"agent.cot={path}: no CoT answer to {len(missing)} of the questions, e.g. "
                        f"{str(missing[0].prompt)[:60]!r}; make it with `retort traces` on the same task, split and "
                        "n_prompts")
    return {e.id: by_prompt[str(e.prompt)] for e in examples}


def cot_answers(run, teacher, shard, stored=None) -> dict:
    """The teacher's CoT answer to each question of `shard` (prompt id -> text): from `stored`
    (`stored_cot`), else a greedy answer sampled now."""
    if stored is not None:
        return {e.id: stored[e.id] for e in shard}
    sp = run.sampling
    outs = teacher.generate([e.prompt for e in shard], max_new_tokens=sp.max_new_tokens, temperature=0.0,
                            num_samples=1, batch_size=run.batch_size, seed=sp.seed)
    return {e.id: o[0].text for e, o in zip(shard, outs)}


def run_agent_traces(run, task, examples, console=None) -> Path:
    """Agent episodes of `examples` (module docstring) into `run.out`."""
    from .teachers import open_teacher

    if run.teachers:
        raise ConfigError("agent=code: one teacher (teacher.name), not teachers=[...]")
    if run.program == "python":
        raise ConfigError("agent=code and program=python: one way of answering at a time")
    if run.teacher.name.startswith("openai:") and run.teacher.api.endpoint != "chat":
        raise ConfigError("agent=code with an API teacher sends conversations: teacher.api.endpoint=chat")
    cfg, sp = run.agent, run.sampling
    if cfg.cot and cfg.first_thought != "cot":
        raise ConfigError(f"agent.cot={cfg.cot}: the CoT answers are read for agent.first_thought=cot")
    stored = stored_cot(cfg.cot, examples) if cfg.cot else None
    execute = sandbox_executor(cfg.limits(), cfg.observation_chars)  # refused here before the teacher loads
    device = "cpu"
    if not run.teacher.name.startswith("openai:"):
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    teacher = open_teacher(run.teacher, seed=run.seed, device=device)
    tok = teacher.tokenizer
    s = run.shard_prompts
    n_shards = ceil(len(examples) / s)
    identity = teacher.identity()
    params = {**task_params(run.task, task), "teacher": teacher_params(run.teacher), "teacher_weights_sha256": identity,
              "sampling": asdict(sp), "split": run.split, "n_prompts": len(examples), "seed": run.seed,
              "shard_prompts": s, "agent": {k: v for k, v in asdict(cfg).items() if k != "workers"}}
    meta = {"retort_version": __version__, "task": task.name, "teacher": run.teacher.name,
            "tokenizer_sha256": tokenizer_sha256(tok) if tok is not None else None,
            "vocab_size": len(tok) if tok is not None else None,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    plan = {i: [e.id for e in examples[i * s:(i + 1) * s]] for i in range(n_shards)}
    writer = TraceWriter(run.out, params, meta, {i: len(v) for i, v in plan.items()}, plan=plan)
    policy = teacher_policy(teacher, max_new_tokens=sp.max_new_tokens, temperature=0.0, batch_size=run.batch_size,
                            seed=sp.seed)
    system = agent_system(cfg, task)
    for index in [i for i in range(n_shards) if i not in writer.done()]:
        shard = examples[index * s:(index + 1) * s]
        prefixes = None
        if cfg.first_thought == "cot":
            cots = cot_answers(run, teacher, shard, stored)
            prefixes = [first_thought(cots[e.id]) for e in shard]
        episodes = run_episodes([e.prompt for e in shard], policy, execute, max_steps=cfg.max_steps,
                                answer_of=answer_reader(task), prefixes=prefixes, system=system, workers=cfg.workers)
        rows = []
        for k, (e, ep) in enumerate(zip(shard, episodes)):
            turns = ep.messages[next(i for i, m in enumerate(ep.messages) if m["role"] == "user") + 1:]
            text = "\n".join(m["content"] for m in turns)
            own = [m["content"] for m in turns if m["role"] == "assistant"]
            ids = [t for c in own for t in tok(c, add_special_tokens=False)["input_ids"]] if tok is not None else []
            record = ep.record()
            if prefixes is not None:
                record["first_thought"] = prefixes[k]
            rows.append({
                "prompt_id": e.id, "sample_idx": 0, "prompt": str(e.prompt), "completion": text, "completion_ids": ids,
                "completion_logprobs": [], "topk": None, "answer": ep.final, "reference": e.answer,
                "correct": is_correct(task, ep.final, e), "finish_reason": "stop" if ep.final is not None else "length",
                "n_tokens": len(ids), "difficulty": e.difficulty, "messages": json.dumps(ep.messages),
                "teacher": run.teacher.name, "teacher_sha256": identity, "agent": json.dumps(record),
            })
        writer.write_shard(index, rows)
        if console is not None:
            m = summary(episodes)
            console.print(f"traces: shard {index + 1}/{n_shards}: {sum(r['correct'] for r in rows)}/{len(rows)} "
                          f"episodes correct, {m['agent_steps']:.2f} steps, parse errors {m['parse_error_rate']:.2f} "
                          f"and execution errors {m['exec_error_rate']:.2f} per step")
    from .curate import trace_stats

    table = read_traces(run.out, allow_incomplete=True)
    stats = trace_stats(table)
    records = [json.loads(a) for a in table.column("agent").to_pylist()]
    steps = sum(r["steps"] for r in records)
    stats["agent"] = {"steps_mean": steps / max(1, len(records)),
                      "parse_errors_per_step": sum(r["parse_errors"] for r in records) / max(1, steps),
                      "exec_errors_per_step": sum(r["exec_errors"] for r in records) / max(1, steps),
                      "hit_max_steps": sum(r["hit_max_steps"] for r in records) / max(1, len(records)),
                      "clean_correct": sum(ok and not (r["parse_errors"] or r["exec_errors"] or r["hit_max_steps"])
                                           for ok, r in zip(table.column("correct").to_pylist(), records))}
    writer.finish(stats)
    if console is not None:
        a = stats["agent"]
        console.print(f"traces: {stats['rows']} episodes ({stats['prompts']} questions), correct {stats['accuracy']:.3f}, "
                      f"{a['steps_mean']:.2f} steps each; {a['clean_correct']} pass the paper's filter (correct, no "
                      f"parse or execution error, under max_steps: `retort curate {run.out} --agent-filter --out DIR`); "
                      f"in {run.out}")
    return Path(run.out)


__all__ = ["cot_answers", "run_agent_traces", "stored_cot"]
