"""DED's teacher selection (arXiv 2508.09883, step 1): choose the
teacher by what its data does for the student, not by the teacher's own score.

On a trace set several teachers sampled (`retort traces teachers=[...]`), for each teacher: the
student is evaluated on a probe set (the task's test split), trained briefly (sft, `steps`) on that
teacher's correct traces, evaluated again; its **gain** ranks the teachers. Beside it, the cheap
proxies, which need no training: the student's mean token log-prob on the teacher's
correct traces (how learnable they are), and the mean per-token gap between the teacher's stored
log-probs and the student's (DAS-style divergence; same vocabulary only). And the cost of each
smoke run (seconds, tokens trained on)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from ...errors import DataError


def _proxies(table: pa.Table, student: str, batch_size: int, same_vocab: bool) -> dict:
    from ..config import ModelConfig
    from ..data.collate import encode_prompt
    from ..models import load_model
    from ..rollout.score import score

    model, tok = load_model(ModelConfig(name=student))
    cols = table.select(["prompt", "completion", "completion_ids", "completion_logprobs"]).to_pydict()
    prompts = [encode_prompt(tok, p) for p in cols["prompt"]]
    comps = [list(c) if same_vocab else tok(t, add_special_tokens=False)["input_ids"]
             for c, t in zip(cols["completion_ids"], cols["completion"])]
    scored = score(model.eval(), prompts, comps, batch_size=batch_size, pad_id=tok.pad_token_id or 0)
    s_lps = [lp for sc in scored for lp in sc.logprobs]
    out = {"student_mean_logprob": float(np.mean(s_lps)) if s_lps else None}
    if same_vocab:
        gaps = [t - s for sc, t_lps in zip(scored, cols["completion_logprobs"]) for s, t in zip(sc.logprobs, t_lps)]
        out["teacher_minus_student_logprob"] = float(np.mean(gaps)) if gaps else None
    return out


def select_teacher(src: str, student: str, *, steps: int = 100, probe_n: int = 100, batch_size: int = 16,
                   lr: float = 1e-3, seed: int = 0, console=None) -> dict:
    """The smoke test on every teacher of trace set `src`: gains, proxies, cost, and the ranking."""
    from ...config import load_config
    from ..config import EvalConfig, ModelConfig, TaskConfig, TrainRun
    from ...train import train
    from ..data.hashes import tokenizer_sha256
    from ..data.traces import TraceWriter, read_manifest, read_traces
    from ..eval import evaluate
    from ..models import load_model
    from ..tasks import get_task

    manifest = read_manifest(src)
    table = read_traces(src)
    names = table.column("teacher").to_pylist() if "teacher" in table.column_names else []
    teachers = sorted({t for t in names if t})
    if len(teachers) < 2:
        raise DataError(f"{src}: --select-teacher compares the teachers of a set several sampled (retort traces "
                        f"teachers=[A,B,...]); this one has {len(teachers) or 'no'} named teacher(s)")
    task_cfg = TaskConfig(**manifest["params"]["task"])
    task = get_task(task_cfg)
    probe = EvalConfig(n=probe_n, max_new_tokens=int(manifest["params"]["sampling"].get("max_new_tokens", 128)),
                       batch_size=64)
    s_model, s_tok = load_model(ModelConfig(name=student), seed=seed)
    before = evaluate(s_model, s_tok, task, probe)["accuracy"]
    del s_model
    same_vocab = manifest.get("tokenizer_sha256") == tokenizer_sha256(s_tok)
    results = {}
    with tempfile.TemporaryDirectory(prefix="retort_ded_") as tmp:
        for name in teachers:
            mask = pa.array([t == name for t in names])
            mine = table.filter(mask)
            correct = mine.filter(mine["correct"])
            row = {"traces": mine.num_rows, "correct_traces": correct.num_rows,
                   "teacher_accuracy": mine.num_rows and correct.num_rows / mine.num_rows}
            if correct.num_rows == 0:
                results[name] = {**row, "gain": None, "why": "no correct trace to learn from"}
                continue
            sub = Path(tmp) / f"t{len(results)}"
            w = TraceWriter(sub, {**manifest["params"], "teachers": None, "smoke_test_of": name},
                            {k: manifest.get(k) for k in ("task", "teacher", "tokenizer_sha256", "vocab_size")}, {})
            w.write_shard(0, correct)
            w.finish({})
            run = load_config(TrainRun, None, [
                f"out={Path(tmp) / f'run{len(results)}'}", "method=sft", f"student.name={student}", f"seed={seed}",
                "data.source=traces", f"data.traces={sub}", f"train.steps={steps}", f"train.batch_size={batch_size}",
                f"train.lr={lr}", f"train.warmup_steps={max(1, steps // 10)}", "train.save_every=0",
                f"train.log_every={max(1, steps)}", "eval.fidelity=false"])
            run.task = task_cfg
            t0 = time.time()
            summary = train(run, evaluate=lambda m, t, task_: evaluate(m, t, task_, probe))
            after = summary["eval"]["accuracy"]
            row.update(gain=after - before, accuracy_after=after, seconds=round(time.time() - t0, 1),
                       tokens_trained=summary.get("tokens"), **_proxies(correct, student, batch_size, same_vocab))
            results[name] = row
            if console is not None:
                console.print(f"select-teacher: {name}: student {before:.3f} -> {after:.3f} after {steps} steps "
                              f"({row['seconds']:.0f}s)")
    ranked = sorted((n for n in results if results[n].get("gain") is not None), key=lambda n: -results[n]["gain"])
    by_own = sorted(results, key=lambda n: -(results[n]["teacher_accuracy"] or 0))
    return {"student": student, "probe": {"split": probe.split, "n": probe_n}, "steps": steps,
            "student_accuracy_before": before, "teachers": results, "ranking_by_gain": ranked,
            "ranking_by_teacher_accuracy": by_own,
            "ranking_by_student_logprob": sorted(
                (n for n in results if results[n].get("student_mean_logprob") is not None),
                key=lambda n: -results[n]["student_mean_logprob"]),
            "chosen": ranked[0] if ranked else None}


__all__ = ["select_teacher"]
