"""RL after distillation, measured (issue 32; methods/llm.md §16, §18, §19): what GRPO, KEPO,
AceReason's ordering and MinD add to a student that was first distilled by sft on teacher traces,
>= 3 seeds. Four parts, each its own results JSON:

- `grpo` (built-in `modchain`, its built-in teacher): per seed a student distilled by sft on the
  teacher's correct traces (preset:student, stopped at --sft-stop train accuracy, as `retort demo`'s
  warm start, so that RL starts mid-way), then from it, at equal RL steps: `grpo`
  (configs/grpo_student.yaml), `kepo` (configs/kepo_student.yaml: gated reverse KL + teacher
  hints) and GRPO + uniform on-policy KD. retort has no separate option for the last: it is `kepo`
  with its gate always open and no hints (`method_args.gate_min=0 method_args.hints=none`: the
  reverse KL to the teacher on every sample, correct or not, beside the GRPO loss: §16's "uniform
  on-policy distillation"). Held-out accuracy (`retort eval`, --eval-n test problems, the same for
  every row), and the share of all-zero groups the runs logged (`solved_none`, after KEPO's hints;
  KEPO's own `zero_groups_before` beside it).
- `order` (AceReason's ordering, §19): the shipped chain configs/acereason/1_math.yaml (modchain)
  then 2_vars.yaml (vars), against the two swapped, the same steps per stage, from one distilled
  student per seed that knows both families (the `grpo` part's sft student, then sft on the vars
  teacher's traces); accuracy on both families, and the math stage alone on the second family.
- `mind` (MinD, §18; built-in `detours`, whose traces take detours like a reasoning model's): the
  original distilled student (sft on the detours teacher's traces), SFT-MinD (that student sft'd
  on `retort curate --multi-turn` rows) and SFT+GRPO-MinD (grpo with `method_args.reward=mind_turns`
  from SFT-MinD); accuracy, tokens per answer, turns, tokens to the first answer.
- `rg`: the `grpo` part on a reasoning-gym task with a real student: SmolLM2-135M-Instruct with
  LoRA, distilled on the correct traces of the packaged Qwen2.5-Coder-0.5B-Instruct. The two
  models' vocabularies differ and kepo's distillation term refuses a cross-tokenizer teacher, so
  here KEPO is its exploration alone (`lambda_kd=0`, hints = the Qwen trace of the prompt,
  `hints=traces`) and there is no GRPO + KD row.

    python benchmarks/after_distill.py --part grpo|order|mind|rg [--seeds 0,1,2] [--work /tmp/retort-after]
                                       [--out benchmarks/results/after_distill_PART.json]

Sizes (options; per-part defaults in SIZES) are estimates, not measurements of a full run. Seen on
this 2-core machine under heavy contention (nice 19, load ~5, every rate several times below a quiet
machine's: the cached built-in teacher's own sft logged ~6 steps/s quiet): preset:student sft ~0.6
steps/s (with its accuracy checks), grpo ~0.45, grpo + KD and kepo ~0.17 (the teacher's pass), traces
~5 prompts/s, an eval of 4 models x 300 problems ~1 min. Scaled by a quiet factor of 3-5: `grpo`
~1-1.5 h (traces of 4000 prompts; per seed an sft of at most 2000 steps that stops at 50% train
accuracy, three RL runs of 150 steps, one eval), `order` ~1-1.5 h (two teachers and trace sets; per
seed two sfts and four RL stages of 100 steps, two evals), `mind` ~1.5 h (the detours teacher also
learns its rewrite skills: 3000 steps; 256-token answers). `rg` ~3-4 h is the least certain: the
packaged teacher and student are real (Qwen2.5-Coder-0.5B's GGUF, SmolLM2-135M), one LoRA grpo step
of 16 rollouts took ~100 s under that contention; defaults 400 traces, per seed 150 sft steps and two
RL runs of 40 steps, 32-token answers (`task.answer=final_number`: asked for reasoning-gym's tags the
0.5B teacher closed none of 8 answers within 64 tokens).

Every step is the CLI a user runs (printed as it goes); a rerun with the same --work skips what is
done (a teacher already cached under $RETORT_CACHE, else WORK/cache, is reused). `--traces
TASK=DIR` uses a trace set already made; `--teacher NAME` a teacher model already made (no
`retort teacher`). Prints a markdown table; the orderings BENCHMARKS.md would state are judged by
benchmarks/_verdict.py and written under `verdicts`; `--verdicts-only` recomputes them from a
finished results file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data_runs import save, sh, workdir
from _verdict import Ordering, restate, state

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
RL_KEYS = ("reward", "solved_none", "solved_all", "zero_groups_before", "zero_groups_after", "completion_tokens",
           "entropy", "hinted", "gated")
EVAL_KEYS = ("accuracy", "mean_tokens", "turns", "turn_format", "first_answer_tokens")
MIND_TOLERANCE = 0.02  # §18.4: SFT+GRPO-MinD's accuracy within about 2 points of the original


def _seeded(row: str, key: str) -> tuple:
    return ("runs", "{seed}", row, key)


ORDERINGS = {
    "grpo": [
        Ordering("sft -> grpo > sft alone (held-out accuracy; issue 32)", _seeded("grpo", "accuracy"), ">",
                 _seeded("sft", "accuracy")),
        Ordering("KEPO > GRPO + uniform on-policy KD (accuracy; §16.4)", _seeded("kepo", "accuracy"), ">",
                 _seeded("grpo_kd", "accuracy")),
        Ordering("GRPO + uniform on-policy KD > GRPO (accuracy; §16.4)", _seeded("grpo_kd", "accuracy"), ">",
                 _seeded("grpo", "accuracy")),
        Ordering("KEPO has fewer all-zero groups than GRPO (share of groups; §16.4)",
                 _seeded("kepo", "solved_none"), "<", _seeded("grpo", "solved_none")),
    ],
    "order": [
        Ordering("math then vars > vars then math (mean accuracy of the two families; §19.1)",
                 _seeded("math_first", "mean"), ">", _seeded("vars_first", "mean")),
        Ordering("math RL alone raises the second family (vars accuracy; §19.1)", _seeded("math_only", "vars"), ">",
                 _seeded("start", "vars")),
    ],
    "mind": [
        Ordering("SFT-MinD uses more tokens than the original (tokens per answer; §18.3)",
                 _seeded("sft_mind", "mean_tokens"), ">", _seeded("original", "mean_tokens")),
        Ordering("SFT+GRPO-MinD uses fewer tokens than the original (tokens per answer; §18.4)",
                 _seeded("grpo_mind", "mean_tokens"), "<", _seeded("original", "mean_tokens")),
        Ordering(f"SFT+GRPO-MinD's accuracy within {MIND_TOLERANCE * 100:.0f} points of the original's "
                 "(original minus it < the tolerance; §18.4)", ("runs", "{seed}", "accuracy_gap"), "<",
                 ("tolerance",)),
        Ordering("SFT+GRPO-MinD answers in fewer turns than SFT-MinD (the turn-count reward; §18.2)",
                 _seeded("grpo_mind", "turns"), "<", _seeded("sft_mind", "turns")),
    ],
    "rg": [
        Ordering("sft -> grpo > sft alone (held-out accuracy; issue 32)", _seeded("grpo", "accuracy"), ">",
                 _seeded("sft", "accuracy")),
        Ordering("KEPO's hints > GRPO (accuracy; §16.4)", _seeded("kepo", "accuracy"), ">",
                 _seeded("grpo", "accuracy")),
        Ordering("KEPO has fewer all-zero groups than GRPO (share of groups; §16.4)",
                 _seeded("kepo", "solved_none"), "<", _seeded("grpo", "solved_none")),
    ],
}
ROWS = {
    "grpo": {"sft": "distilled (sft on teacher traces)", "grpo": "+ grpo",
             "grpo_kd": "+ grpo + uniform on-policy KD", "kepo": "+ kepo"},
    "order": {"start": "distilled (both families)", "math_only": "+ math RL (stage 1 alone)",
              "math_first": "+ math RL, then vars RL", "vars_first": "+ vars RL, then math RL"},
    "mind": {"original": "original (sft on traces)", "sft_mind": "SFT-MinD", "grpo_mind": "SFT+GRPO-MinD"},
    "rg": {"sft": "distilled (sft on Qwen traces, LoRA)", "grpo": "+ grpo", "kepo": "+ kepo (hints only)"},
}


# ---------------------------------------------------------------- the pieces every part shares
class Bench:
    """The work directory, the log, and the options: the CLI steps each part is made of."""

    def __init__(self, args):
        self.args = args
        self.work, self.log = workdir(args.work)
        self.traces_given = dict(t.split("=", 1) for t in args.traces)

    def teacher(self, task: str) -> str:
        """The teacher of `task`: --teacher, else its built-in teacher (trained once, then cached)."""
        if self.args.teacher:
            return self.args.teacher
        sh(["teacher", f"task.name={task}", *self.args.teacher_arg], self.log)
        return "builtin:teacher" if task == "modchain" else f"builtin:teacher-{task}"

    def traces(self, task: str, task_args: list[str], teacher: str, max_new_tokens: int, extra=()) -> Path:
        """One teacher sample per prompt of --n-prompts train problems (or --traces TASK=DIR)."""
        if task in self.traces_given:
            return Path(self.traces_given[task])
        out = self.work / f"traces-{task.replace(':', '_')}"
        if not (out / "manifest.json").is_file():
            sh(["traces", *task_args, f"teacher.name={teacher}", f"out={out}", f"n_prompts={self.args.n_prompts}",
                "sampling.n=1", f"sampling.max_new_tokens={max_new_tokens}", *extra], self.log)
        return out

    def train(self, out: Path, overrides: list[str], config: Path | None = None) -> Path:
        """`retort train [-c CONFIG] OVERRIDES out=OUT`, unless OUT finished before; OUT/model."""
        if not (out / "summary.json").is_file():
            sh(["train", *(["-c", str(config)] if config else []), *overrides, f"out={out}"], self.log)
        return out / "model"

    def distil(self, name: str, task_args: list[str], traces: Path, student: str, seed: int, steps: int,
               extra=()) -> Path:
        """sft on the correct traces, stopped at --sft-stop accuracy on train problems (checked every
        50 steps; 0: all the steps): the distilled student RL starts from."""
        a = self.args
        stop = [f"train.stop_at_accuracy={a.sft_stop}", "train.eval_every=50", "eval.split=train", "eval.n=200"] \
            if a.sft_stop > 0 else ["eval.n=8"]
        return self.train(self.work / f"{name}-{seed}", [
            "method=sft", *task_args, "data.source=traces", f"data.traces={traces}",
            f"data.trace_filter={a.trace_filter}", f"student.name={student}", f"train.steps={steps}",
            f"train.batch_size={a.batch_size}", f"train.lr={a.lr}", "train.warmup_steps=20", "train.save_every=0",
            "train.log_every=25", *stop, f"eval.max_new_tokens={a.max_new_tokens}", f"seed={seed}", *extra])

    def rl(self, name: str, config: Path, student: str, seed: int, extra=()) -> Path:
        """--rl-steps of a shipped RL config from `student`, logging every step (for the means)."""
        a = self.args
        return self.train(self.work / f"{name}-{seed}", [
            f"student.name={student}", f"train.steps={a.rl_steps}", f"train.batch_size={a.rl_batch_size}",
            "train.log_every=1", "train.save_every=0", "eval.n=8", f"seed={seed}", *extra], config)

    def evaluate(self, name: str, models: dict[str, Path], task_args: list[str], max_new_tokens: int) -> dict:
        """`retort eval` of every row on the same --eval-n held-out problems: {label: EVAL_KEYS}."""
        out = self.work / f"{name}.json"
        if not out.is_file():
            sh(["eval", *task_args, *[x for label, path in models.items() for x in ("-m", f"{label}={path}")],
                f"eval.n={self.args.eval_n}", "eval.seed=7", f"eval.max_new_tokens={max_new_tokens}",
                f"eval.batch_size={min(250, self.args.eval_n)}", "--json", str(out)], self.log)
        ev = json.loads(out.read_text())
        return {label: {k: ev[label][k] for k in EVAL_KEYS if ev[label].get(k) is not None} for label in models}


def run_means(run_dir: Path) -> dict:
    """The mean over a run's logged steps of each RL metric it logged (RL_KEYS)."""
    rows = [json.loads(x) for x in (run_dir.parent / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    return {k: statistics.mean(r[k] for r in rows if k in r) for k in RL_KEYS if any(k in r for r in rows)}


# ---------------------------------------------------------------- the parts
def part_grpo(b: Bench, seeds: list[int], rg: bool = False) -> dict:
    a = b.args
    task = a.rg_task if rg else a.task
    task_args = [f"task.name={task}", *a.task_arg]
    teacher = a.teacher or ("qwen2.5-coder-0.5b-instruct" if rg else b.teacher(task))
    traces = b.traces(task, task_args, teacher, a.max_new_tokens, a.traces_arg)
    student = a.student or ("smollm2-135m-instruct" if rg else "preset:student")
    lora = [f"student.lora.r={a.lora_r}", f"student.lora.alpha={2 * a.lora_r}"] if a.lora_r else []
    common = [*task_args, *lora, f"method_args.max_new_tokens={a.max_new_tokens}", f"train.lr={a.rl_lr}"]
    runs = {}
    for seed in seeds:
        sft = b.distil("sft", task_args, traces, student, seed, a.sft_steps, lora)
        models = {"sft": sft}
        # LoRA: RL trains new adapters on the merged sft model (the same rank)
        models["grpo"] = b.rl("grpo", CONFIGS / "grpo_student.yaml", str(sft), seed, common)
        if rg:
            models["kepo"] = b.rl("kepo", CONFIGS / "kepo_student.yaml", str(sft), seed, [
                *common, "method_args.lambda_kd=0", "method_args.hints=traces", f"method_args.hint_traces={traces}"])
        else:
            kepo = [*common, f"teacher.name={teacher}"]
            models["grpo_kd"] = b.rl("grpo_kd", CONFIGS / "kepo_student.yaml", str(sft), seed,
                                     [*kepo, "method_args.gate_min=0", "method_args.hints=none"])
            models["kepo"] = b.rl("kepo", CONFIGS / "kepo_student.yaml", str(sft), seed, kepo)
        ev = b.evaluate(f"eval-{'rg' if rg else 'grpo'}-{seed}", models, task_args, a.eval_max_new_tokens)
        runs[str(seed)] = {row: {**ev[row], **(run_means(path) if row != "sft" else {})}
                           for row, path in models.items()}
    return {"task": task, "teacher": teacher, "student": student, "runs": runs}


def part_order(b: Bench, seeds: list[int]) -> dict:
    a = b.args
    first, second = "modchain", "vars"  # the families of configs/acereason/1_math.yaml and 2_vars.yaml
    math_cfg, vars_cfg = CONFIGS / "acereason" / "1_math.yaml", CONFIGS / "acereason" / "2_vars.yaml"
    traces = {t: b.traces(t, [f"task.name={t}"], b.teacher(t), a.max_new_tokens) for t in (first, second)}
    student = a.student or "preset:student"
    runs = {}
    for seed in seeds:
        sft = b.distil("sft", [f"task.name={first}"], traces[first], student, seed, a.sft_steps)
        start = b.distil("sft_both", [f"task.name={second}"], traces[second], str(sft), seed, a.sft_steps)
        rl = [f"train.lr={a.rl_lr}"]
        models = {"start": start, "math_only": b.rl("math", math_cfg, str(start), seed, rl)}
        models["math_first"] = b.rl("math_vars", vars_cfg, str(models["math_only"]), seed, rl)
        vars_only = b.rl("vars", vars_cfg, str(start), seed, rl)
        models["vars_first"] = b.rl("vars_math", math_cfg, str(vars_only), seed, rl)
        acc = {t: b.evaluate(f"eval-order-{t}-{seed}", models, [f"task.name={t}"], a.eval_max_new_tokens)
               for t in (first, second)}
        runs[str(seed)] = {row: {"modchain": acc[first][row]["accuracy"], "vars": acc[second][row]["accuracy"],
                                 "mean": (acc[first][row]["accuracy"] + acc[second][row]["accuracy"]) / 2,
                                 **({"rl": run_means(path)} if row != "start" else {})}
                           for row, path in models.items()}
    return {"families": [first, second], "runs": runs}


def part_mind(b: Bench, seeds: list[int]) -> dict:
    a = b.args
    task = "detours"
    task_args = [f"task.name={task}"]
    teacher = b.teacher(task)
    traces = b.traces(task, task_args, teacher, a.max_new_tokens)
    rows = b.work / "mind-rows"
    if not (rows / "manifest.json").is_file():
        sh(["curate", str(traces), "--out", str(rows), "--multi-turn", "--intermediate", a.intermediate], b.log)
    student = a.student or "preset:student"
    runs = {}
    for seed in seeds:
        original = b.distil("original", task_args, traces, student, seed, a.sft_steps)
        # MinD sft's the original model itself on the turn format (§18.2 step 5)
        sft_mind = b.train(b.work / f"sft_mind-{seed}", [
            "method=sft", *task_args, "data.source=traces", f"data.traces={rows}", f"student.name={original}",
            f"train.steps={a.mind_sft_steps}", f"train.batch_size={a.batch_size}", f"train.lr={a.lr}",
            "train.warmup_steps=20", "train.save_every=0", "train.log_every=25", "data.max_len=512", "eval.n=8",
            f"seed={seed}"])
        grpo_mind = b.rl("grpo_mind", CONFIGS / "grpo_student.yaml", str(sft_mind), seed, [
            *task_args, "method_args.reward=mind_turns", f"method_args.max_new_tokens={a.eval_max_new_tokens}",
            f"train.lr={a.rl_lr}"])
        models = {"original": original, "sft_mind": sft_mind, "grpo_mind": grpo_mind}
        ev = b.evaluate(f"eval-mind-{seed}", models, task_args, a.eval_max_new_tokens)
        for row in ev.values():
            # eval reports turns only when some answer has one; none: retort's own values for no
            # well-formed answer (turns 0, turn_format 0, the whole answer before a first answer)
            row.setdefault("turns", 0.0)
            row.setdefault("turn_format", 0.0)
            row.setdefault("first_answer_tokens", row["mean_tokens"])
        run = {row: {**ev[row], **(run_means(path) if row == "grpo_mind" else {})} for row, path in models.items()}
        run["accuracy_gap"] = ev["original"]["accuracy"] - ev["grpo_mind"]["accuracy"]
        runs[str(seed)] = run
    return {"task": task, "teacher": teacher, "tolerance": [MIND_TOLERANCE] * len(seeds), "runs": runs}


# ---------------------------------------------------------------- the table
def table(part: str, runs: dict) -> dict:
    """{ROW: {KEY: (mean, std) over seeds}} of every numeric value a row holds in every seed."""
    out = {}
    for row in ROWS[part]:
        per = [r[row] for r in runs.values() if row in r]
        keys = [k for k, v in per[0].items() if isinstance(v, (int, float)) and all(k in p for p in per)]
        out[row] = {k: (statistics.mean(p[k] for p in per), statistics.stdev(p[k] for p in per) if len(per) > 1
                        else 0.0) for k in keys}
    return out


COLUMNS = {"grpo": ("accuracy", "mean_tokens", "solved_none", "zero_groups_before", "reward"),
           "order": ("modchain", "vars", "mean"),
           "mind": ("accuracy", "mean_tokens", "turns", "turn_format", "first_answer_tokens", "reward"),
           "rg": ("accuracy", "mean_tokens", "solved_none", "zero_groups_before", "reward")}


def markdown(part: str, tab: dict) -> str:
    cols = COLUMNS[part]
    lines = ["| row | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for row, label in ROWS[part].items():
        cells = [f"{tab[row][c][0]:.3f} ± {tab[row][c][1]:.3f}" if c in tab[row] else "-" for c in cols]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


PARTS = {"grpo": part_grpo, "order": part_order, "mind": part_mind, "rg": lambda b, seeds: part_grpo(b, seeds, True)}
# per part, the defaults of: --n-prompts, --sft-steps, --batch-size, --lr, --rl-steps, --rl-batch-size, --rl-lr,
# --max-new-tokens, --eval-max-new-tokens (rg: LoRA rates, as configs/sft_smollm2_student.yaml)
SIZE_KEYS = ("n_prompts", "sft_steps", "batch_size", "lr", "rl_steps", "rl_batch_size", "rl_lr", "max_new_tokens",
             "eval_max_new_tokens")
SIZES = {"grpo": (4000, 2000, 32, 2e-3, 150, 32, 5e-4, 96, 96), "order": (4000, 2000, 32, 2e-3, 100, 32, 5e-4, 96, 128),
         "mind": (4000, 2000, 32, 2e-3, 100, 32, 5e-4, 192, 256), "rg": (400, 150, 8, 2e-4, 40, 16, 1e-4, 32, 32)}


def main(argv=None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=list(PARTS), required=True)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--task", default="modchain", help="part grpo: the built-in task")
    ap.add_argument("--task-arg", action="append", default=[], help="part grpo/rg: a task override (repeatable)")
    ap.add_argument("--rg-task", default="rg:chain_sum", help="part rg: the reasoning-gym task (with --task-arg "
                    "for its difficulty and format; default task.difficulty.max_terms=3 task.difficulty.max_digits=1 "
                    "task.answer=final_number)")
    ap.add_argument("--student", default=None, help="the student distilled first (default preset:student; rg: "
                                                    "smollm2-135m-instruct)")
    ap.add_argument("--teacher", default=None, help="a teacher model to use as it is (default: the task's built-in "
                                                    "teacher; rg: qwen2.5-coder-0.5b-instruct)")
    ap.add_argument("--teacher-arg", action="append", default=[], help="an override of `retort teacher` (repeatable)")
    ap.add_argument("--traces", action="append", default=[], metavar="TASK=DIR", help="a trace set already made")
    ap.add_argument("--traces-arg", action="append", default=[], help="an override of `retort traces` (repeatable)")
    ap.add_argument("--trace-filter", default="correct", choices=["correct", "all"], help="the traces sft learns")
    ap.add_argument("--n-prompts", type=int, default=None)
    ap.add_argument("--sft-steps", type=int, default=None, help="most steps of the distilling sft")
    ap.add_argument("--sft-stop", type=float, default=None, help="stop the distilling sft at this train accuracy "
                                                                 "(0: never; default 0.5, rg: 0)")
    ap.add_argument("--batch-size", type=int, default=None, help="sft batch size")
    ap.add_argument("--lr", type=float, default=None, help="sft learning rate")
    ap.add_argument("--lora-r", type=int, default=None, help="LoRA rank (default: 16 for rg, else 0: full)")
    ap.add_argument("--rl-steps", type=int, default=None, help="optimizer steps of every RL run (and stage)")
    ap.add_argument("--rl-batch-size", type=int, default=None, help="completions per RL step (a multiple of 8)")
    ap.add_argument("--rl-lr", type=float, default=None)
    ap.add_argument("--mind-sft-steps", type=int, default=300)
    ap.add_argument("--intermediate", default="teacher", choices=["teacher", "last-result"],
                    help="part mind: who writes each prefix's answer (curate --multi-turn --intermediate)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="traces' and rollouts' longest completion")
    ap.add_argument("--eval-n", type=int, default=300)
    ap.add_argument("--eval-max-new-tokens", type=int, default=None)
    ap.add_argument("--work", default="/tmp/retort-after")
    ap.add_argument("--out", default=None, help="default benchmarks/results/after_distill_PART.json")
    ap.add_argument("--verdicts-only", action="store_true", help="recompute the verdicts of --out; run nothing")
    args = ap.parse_args(argv)
    args.out = args.out or str(ROOT / "benchmarks" / "results" / f"after_distill_{args.part}.json")
    if args.verdicts_only:
        restate(args.out, ORDERINGS[args.part])
        return None
    for k, v in zip(SIZE_KEYS, SIZES[args.part]):
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.sft_stop is None:  # a pretrained student learns the format in its few steps: no early stop
        args.sft_stop = 0.0 if args.part == "rg" else 0.5
    if args.lora_r is None:
        args.lora_r = 16 if args.part == "rg" else 0
    if args.part == "rg" and not args.task_arg:
        # the number alone: in reasoning-gym's tag format the 0.5B teacher rarely closes its answer
        # within 64 tokens (0 of 8), and 256-token rollouts of the student would not fit the hours
        args.task_arg = ["task.difficulty.max_terms=3", "task.difficulty.max_digits=1", "task.answer=final_number"]
    seeds = [int(s) for s in args.seeds.split(",")]
    found = PARTS[args.part](Bench(args), seeds)
    settings = {k: getattr(args, k) for k in ("n_prompts", "sft_steps", "sft_stop", "batch_size", "lr", "lora_r",
                                              "rl_steps", "rl_batch_size", "rl_lr", "max_new_tokens", "eval_n",
                                              "eval_max_new_tokens", "trace_filter", "task_arg", "traces",
                                              "teacher", "student")}
    if args.part == "mind":
        settings.update(mind_sft_steps=args.mind_sft_steps, intermediate=args.intermediate)
    result = {"part": args.part, "seeds": seeds, "settings": settings, **found}
    result["table"] = table(args.part, found["runs"])
    result["verdicts"] = state(result, ORDERINGS[args.part])
    save(args.out, result)
    print(markdown(args.part, result["table"]))
    for v in result["verdicts"]:
        print(f"- {v['claim']}: {v['verdict']} (mean diff {v['diff']:.3f})")
    return result


if __name__ == "__main__":
    main()
