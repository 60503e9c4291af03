"""`retort traces program=python`: program distillation's annotation (Jie & Lu, "Leveraging Training
Data in Few-Shot Prompting for Numerical Reasoning", ACL 2023 Findings, arXiv 2305.18170; repo
allanj/dynamic-pal, `scripts/eval_trainset.py` and `eval_basedon_sim.py`).

For each question the teacher writes a program; the sandbox (`retort.sandbox`) runs it, and it is
correct when the last line it prints is the answer by the task's checker (`tasks.programs`). The
first try is greedy, later ones sample at `programs.temperature` (the repo's 0.5), up to
`programs.tries`. With `programs.exemplars=k` the teacher sees a PAL prompt: k solved questions
with their programs, then the question; dynamic program prompting picks the k most similar
*correctly annotated* questions (TF-IDF cosine over the question text, scikit-learn; the repo
used OpenAI embeddings; TF-IDF needs no model and is what the issue allows), static the same first
k for all, random k drawn per question (the paper's ablations).

A row is (the task's question, the program): `prompt` is the question without the exemplars, so
`sft` on the set trains the student on (question, program), and `retort eval program=python` runs
the student's programs. The row's `program` column keeps the program's output, exit code, the tries
it took and the exemplars shown. One row per question (the last try when none was correct).
Resumable per shard like every trace set (`retort.lm.data.traces`).
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import asdict
from math import ceil
from pathlib import Path

from .. import __version__
from ..errors import ConfigError, DataError
from .config import teacher_params
from .data.hashes import tokenizer_sha256
from .data.traces import TraceWriter, read_traces
from .tasks.base import task_params
from .tasks.programs import as_program, extract_program, output_answer

PAL_HEAD = "Write a Python program that prints the answer to the last question.\n\n"


def pal_prompt(question: str, exemplars: list[tuple[str, str]], *, native: bool = False) -> str:
    """The PAL prompt: each solved question and its program in a fenced block, then the question
    and an open fence (the program goes there; the block's end closes it). `native` with no
    exemplars: the question alone, for a model trained to answer it with a program (progs)."""
    if native and not exemplars:
        return question
    shots = "".join(f"Question: {q.strip()}\n```python\n{p.strip()}\n```\n\n" for q, p in exemplars)
    return f"{PAL_HEAD}{shots}Question: {str(question).strip()}\n```python\n"


class Exemplars:
    """The solved questions (question, program) exemplars are chosen from, and how (`select`)."""

    def __init__(self, pool: list[tuple[str, str]], k: int, select: str, seed: int = 0):
        self.pool, self.k, self.select, self.seed = pool, k, select, seed
        self.vectorizer = self.matrix = None
        if k and select == "dynamic" and pool:
            from ..errors import require

            text = require("sklearn.feature_extraction.text", "programs", "programs.select=dynamic (TF-IDF)")
            self.vectorizer = text.TfidfVectorizer(token_pattern=r"[A-Za-z]+|\d+|[^\sA-Za-z\d]")
            self.matrix = self.vectorizer.fit_transform([q for q, _ in pool])

    def for_question(self, question: str) -> list[int]:
        """Indices into the pool of the exemplars for `question` (never the question itself), most
        similar first for `dynamic`."""
        if not self.k or not self.pool:
            return []
        same = {i for i, (q, _) in enumerate(self.pool) if q.strip() == str(question).strip()}
        if self.select == "static":
            return [i for i in range(len(self.pool)) if i not in same][:self.k]
        if self.select == "random":
            rng = random.Random(hashlib.sha256(f"{self.seed}:{question}".encode()).hexdigest())
            return rng.sample([i for i in range(len(self.pool)) if i not in same], min(self.k, len(self.pool) - len(same)))
        sims = (self.matrix @ self.vectorizer.transform([str(question)]).T).toarray().ravel()
        order = sorted(range(len(self.pool)), key=lambda i: (-sims[i], i))
        return [i for i in order if i not in same][:self.k]


def exemplar_pool(run, task) -> list[tuple[str, str]]:
    """(question, program) pairs: the correct rows of `programs.pool` (a program trace set), else
    the task's own worked solutions of the train split when they are programs."""
    cfg = run.programs
    if not cfg.exemplars:
        return []
    if cfg.pool:
        from .data.traces import read_manifest

        params = read_manifest(cfg.pool).get("params") or {}
        if params.get("program") != "python":
            raise DataError(f"programs.pool={cfg.pool}: not a trace set made with program=python (its rows' "
                            "completions are not checked programs)")
        t = read_traces(cfg.pool, columns=["prompt", "completion", "correct"]).to_pydict()
        pairs = [(p, c) for p, c, ok in zip(t["prompt"], t["completion"], t["correct"]) if ok]
        if not pairs:
            raise DataError(f"programs.pool={cfg.pool}: no correct program to show as an exemplar")
        return pairs[:cfg.pool_size]
    if getattr(task.inner, "program", None) != "python":
        raise ConfigError(f"programs.exemplars={cfg.exemplars}: task {task.name}'s worked solutions are not "
                          "programs; set programs.pool=DIR, a trace set made with program=python (annotate the "
                          "train split with programs.exemplars=0 or a few first)")
    return [(e.prompt, e.solution) for e in task.examples("train", cfg.pool_size, run.seed)]


def _seed(seed: int, index: int, attempt: int) -> int:
    return int(hashlib.sha256(f"{seed}:{index}:{attempt}".encode()).hexdigest()[:8], 16)


def run_program_traces(run, task, examples, console=None) -> Path:
    """Annotate `examples` with checked programs (module docstring) into `run.out`."""
    from .teachers import open_teacher

    if run.teacher.name.startswith("openai:") or run.teachers:
        raise ConfigError("program=python: one local teacher in this version (not teacher.name=openai:..., not "
                          "teachers=[...])")
    cfg, sp = run.programs, run.sampling
    ptask = as_program(task, cfg)  # the sandbox refuses here, before the teacher is loaded
    pool = exemplar_pool(run, ptask)
    chooser = Exemplars(pool, cfg.exemplars, cfg.select, run.seed)
    native = getattr(ptask.inner, "program", None) == "python"  # the task's own answers are programs
    import torch

    teacher = open_teacher(run.teacher, seed=run.seed, device="cuda" if torch.cuda.is_available() else "cpu")
    tok = teacher.tokenizer
    s = run.shard_prompts
    n_shards = ceil(len(examples) / s)
    params = {**task_params(run.task, task), "teacher": teacher_params(run.teacher),
              "teacher_weights_sha256": teacher.identity(), "sampling": asdict(sp), "split": run.split,
              "n_prompts": len(examples), "seed": run.seed, "shard_prompts": s, "program": "python",
              "programs": {k: v for k, v in asdict(cfg).items() if k != "workers"}}
    meta = {"retort_version": __version__, "task": task.name, "teacher": run.teacher.name,
            "tokenizer_sha256": tokenizer_sha256(tok), "vocab_size": len(tok),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    plan = {i: [e.id for e in examples[i * s:(i + 1) * s]] for i in range(n_shards)}
    writer = TraceWriter(run.out, params, meta, {i: len(v) for i, v in plan.items()}, plan=plan)
    todo = [i for i in range(n_shards) if i not in writer.done()]
    for index in todo:
        shard = examples[index * s:(index + 1) * s]
        shown = {e.id: chooser.for_question(e.prompt) for e in shard}
        prompts = {e.id: pal_prompt(e.prompt, [pool[i] for i in shown[e.id]], native=native) for e in shard}
        last, pending = {}, list(shard)
        for attempt in range(cfg.tries):
            outs = teacher.generate([prompts[e.id] for e in pending], max_new_tokens=sp.max_new_tokens,
                                    temperature=0.0 if attempt == 0 else cfg.temperature, top_p=sp.top_p,
                                    num_samples=1, batch_size=run.batch_size, seed=_seed(sp.seed, index, attempt),
                                    stop=list(sp.stop) or None)
            ptask.prepare([o[0].text for o in outs])
            still = []
            for e, o in zip(pending, outs):
                ok = ptask.verify(o[0].text, e.answer, e.prompt)
                last[e.id] = (o[0], attempt + 1, ok)
                if not ok:
                    still.append(e)
            pending = still
            if not pending:
                break
        rows = []
        for e in shard:
            c, tries, ok = last[e.id]
            code = extract_program(c.text)
            res = ptask.execute(c.text)
            ids = tok(code, add_special_tokens=False)["input_ids"]
            rows.append({
                "prompt_id": e.id, "sample_idx": 0, "prompt": e.prompt, "completion": code, "completion_ids": ids,
                "completion_logprobs": [], "topk": None, "answer": output_answer(res.stdout) if res.ok else None,
                "reference": e.answer, "correct": ok, "finish_reason": c.finish_reason, "n_tokens": len(ids),
                "difficulty": e.difficulty, "teacher": run.teacher.name, "teacher_sha256": params["teacher_weights_sha256"],
                "program": json.dumps({"output": res.stdout[-2000:], "exit_code": res.exit_code,
                                       "timed_out": res.timed_out, "error": res.stderr[-2000:] if not res.ok else "",
                                       "tries": tries, "exemplars": [pool[i][0] for i in shown[e.id]]}),
            })
        writer.write_shard(index, rows)
        if console is not None:
            solved = sum(r["correct"] for r in rows)
            console.print(f"traces: shard {index + 1}/{n_shards}: {solved}/{len(rows)} questions with a correct program")
    from .curate import trace_stats

    table = read_traces(run.out, allow_incomplete=True)
    stats = trace_stats(table)
    tries = [json.loads(p)["tries"] for p in table.column("program").to_pylist()]
    stats["program_tries"] = {"mean": sum(tries) / max(1, len(tries)), "max": max(tries, default=0)}
    writer.finish(stats)
    if console is not None:
        console.print(f"traces: {stats['rows']} programs ({stats['prompts']} questions), correct "
                      f"{stats['accuracy']:.3f}, {stats['program_tries']['mean']:.2f} tries per question; in {run.out}")
    return Path(run.out)


__all__ = ["PAL_HEAD", "Exemplars", "exemplar_pool", "pal_prompt", "run_program_traces"]
