"""The `retort` command line. One dict maps command names to functions; `retort --help` lists them.

Every command takes an optional YAML `--config` plus dotted `key=value` overrides. Errors the user
can fix print one line and exit with status 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .errors import RetortError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _overrides(args) -> list[str]:
    return list(args)


config_option = click.option("--config", "-c", "config_file", type=click.Path(dir_okay=False),
                             help="YAML config file; KEY=VALUE arguments override it.")
overrides_arg = click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")


@click.command(context_settings=CONTEXT)
@config_option
@click.option("--resume", is_flag=True, help="Continue the run in `out` from its newest intact checkpoint (a "
              "damaged one is moved aside); a finished run is left as it is; with no run there yet, one is started.")
@overrides_arg
def train(config_file, resume, overrides):
    """Train a student with a method (see `retort methods`); `track=classify` trains a classifier,
    `track=diffuse` a few-step generator.

    \b
    retort train method=sft student.name=preset:student data.source=answers train.steps=200
    retort train -c configs/student_solutions.yaml out=runs/sft --resume
    retort train track=classify task.name=digits method=kd student.name=mlp:32 out=runs/kd
    retort train track=diffuse task.name=ring method=dmd2 student.steps=1 out=runs/dmd2
    """
    from .config import load_config, peek_track
    from .track import get_track
    from .train import train as run_train

    track = get_track(peek_track(config_file, _overrides(overrides)))
    run = load_config(track.run_config, config_file, _overrides(overrides))
    console = _console()
    summary = run_train(run, resume=resume, evaluate=track.train_evaluator(run), console=console,
                        announce_new=resume)
    _print_summary(console, run.out, summary)


def _print_summary(console, out, summary):
    if not summary.get("main_process", True):
        return
    ev = summary.get("eval") or {}
    acc = f", accuracy {ev['accuracy']:.3f} on {ev.get('n', '?')} {ev.get('split', 'test')} {ev.get('unit', 'prompts')}" if "accuracy" in ev else ""
    console.print(f"done: {summary['steps']} steps in {summary['train_time_s']:.0f}s{acc}; model in {out}/model")


@click.command(name="eval", context_settings=CONTEXT)
@config_option
@click.option("--model", "-m", "models", multiple=True,
              help="Model to evaluate (repeatable; overrides model.name). NAME=PATH labels it.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write all results to this JSON file.")
@click.option("--fidelity-to", "fidelity_to", metavar="LABEL",
              help="Also measure every other model's agreement with this one (a -m label or model name, e.g. "
                   "the teacher): same final answer, same top-1 token and KL per token on its greedy answers.")
@click.option("--provenance", metavar="TEACHER,BASE", help="Also trace where each model's answer sentences come "
              "from: teacher-originated / student-originated / shared / boosted, against this teacher and this "
              "student before distillation (model names; the same vocabulary).")
@click.option("--provenance-delta", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="With --provenance: nats of mean log-prob difference that make a category.")
@click.option("--hybrid", type=click.IntRange(min=1), default=None, metavar="K",
              help="track=diffuse: also sample each multi-step student with the teacher's first K steps "
                   "(diversity distillation's hybrid inference), and show every model's first-step "
                   "predictions for 16 noises (its DT-visualisation: spread and distance to the data).")
@overrides_arg
def eval_cmd(config_file, models, json_out, fidelity_to, provenance, provenance_delta, hybrid, overrides):
    """Evaluate one or more models on a task: pass@1, pass@k, maj@k, tokens, by difficulty.

    \b
    retort eval -m builtin:teacher -m runs/sft/model eval.k=8 eval.temperature=0.8
    retort eval -m teacher=builtin:teacher -m sft=runs/sft/model --fidelity-to teacher
    retort eval -m sft=runs/sft/model --provenance builtin:teacher,preset:student
    retort eval track=classify task.name=mnist -m teacher=ccexam:mnist -m kd=runs/kd/model --fidelity-to teacher
    retort eval track=diffuse task.name=digits -m dmd2=runs/dmd2/model steps=[1,2,4] --hybrid 1
    """
    from dataclasses import replace

    from .config import EvalRun, peek_track

    track_name = peek_track(config_file, _overrides(overrides))
    if track_name == "classify":
        _eval_classifiers(config_file, models, json_out, fidelity_to, provenance, overrides)
        return
    if track_name == "diffuse":
        _eval_generators(config_file, models, json_out, fidelity_to or provenance, hybrid, overrides)
        return
    if hybrid:
        raise click.UsageError("--hybrid samples diffusion students: pass track=diffuse")
    from .lm.eval import evaluate, results_table
    from .lm.models import load_model
    from .lm.tasks import get_task, require_examples

    run, out = _eval_run(EvalRun, config_file, json_out, overrides)
    task = get_task(run.task)
    n = require_examples(task, run.eval.split, run.eval.n, "eval")
    targets = _targets(models) or [(run.model.name, run.model.name)]
    console = _console()
    if task.size(run.eval.split) is not None:
        more = f" (eval.n={run.eval.n} asks for more than there are)" if n < run.eval.n else ""
        console.print(f"eval: {n} prompts from {task.describe_split(run.eval.split)}{more}")
    rows = []
    cfg = replace(run.eval, n=n)
    reference = None
    if fidelity_to:
        from .lm.eval import load_reference

        match = [name for label, name in targets if label == fidelity_to] or [fidelity_to]
        with console.status(f"greedy answers of {fidelity_to}"):
            reference = load_reference(replace(run.model, name=match[0]), task, cfg, fidelity_to)
    sources = None
    if provenance:
        from .errors import ConfigError
        from .lm.models import check_vocab

        names = [x.strip() for x in provenance.split(",")]
        if len(names) != 2 or not all(names):
            raise ConfigError(f"--provenance {provenance!r}: expected TEACHER,BASE_STUDENT (two model names)")
        sources = [load_model(replace(run.model, name=x)) for x in names]
        check_vocab(sources[0][1], sources[1][1])
    for label, name in targets:
        model, tok = load_model(replace(run.model, name=name))
        ref = reference if reference is not None and label != fidelity_to else None
        with console.status(f"evaluating {label}"):
            rows.append((label, evaluate(model, tok, task, cfg, reference=ref)))
        if sources is not None:
            from .lm.curate.provenance import provenance as trace

            check_vocab(tok, sources[0][1])
            with console.status(f"provenance of {label}'s sentences"):
                rows[-1][1]["provenance"] = trace(model.eval(), tok, sources[0][0].eval(), sources[1][0].eval(), task,
                                                  cfg, delta=provenance_delta)
    console.print(results_table(rows))
    if sources is not None:
        console.print(_provenance_table(rows))
    if out:
        _write_json(out, {label: r for label, r in rows})
        console.print(f"results: {out}")


def _eval_run(run_cls, config_file, json_out, overrides):
    """A track's eval config with threads pinned, and where its results go (checked before any work)."""
    from . import threads
    from .config import load_config
    from .paths import output_file

    run = load_config(run_cls, config_file, _overrides(overrides))
    threads.pin(run.threads)
    out = json_out or run.out
    if out:
        output_file(out, "--json" if json_out else "out=")
    return run, out


def _targets(models) -> list:
    """-m LABEL=PATH (or PATH, its own label) -> [(label, path)]."""
    return [(m.split("=", 1) if "=" in m and not Path(m).exists() else (m, m)) for m in models]


def _eval_classifiers(config_file, models, json_out, fidelity_to, provenance, overrides):
    from .classify.config import ClassifyEvalRun
    from .classify.evaluate import evaluate_models, results_table
    from .errors import ConfigError

    if provenance:
        raise ConfigError("--provenance traces answer sentences of language models; not for track=classify")
    run, out = _eval_run(ClassifyEvalRun, config_file, json_out, overrides)
    targets = _targets(models) or [(run.model.name, run.model.name)]
    rows = evaluate_models(run, targets, fidelity_to)
    console = _console()
    console.print(results_table(dict(rows), f"{run.task.name}, {run.eval.split} split"))
    if out:
        _write_json(out, {label: r for label, r in rows})
        console.print(f"results: {out}")


def _eval_generators(config_file, models, json_out, lm_only, hybrid, overrides):
    from .diffuse.compare import evaluate_models, results_table
    from .diffuse.config import DiffuseEvalRun
    from .errors import ConfigError

    if lm_only:
        raise ConfigError("--fidelity-to and --provenance are for language models; not for track=diffuse")
    run, out = _eval_run(DiffuseEvalRun, config_file, json_out, overrides)
    targets = _targets(models)
    console = _console()
    rows = evaluate_models(run, targets, say=console.print, hybrid_with_teacher=hybrid)
    console.print(results_table(rows))
    if out:
        from .paths import atomic_write_text

        atomic_write_text(out, json.dumps(rows))  # compact: each row carries its samples
        console.print(f"results: {out}")


def _provenance_table(rows):
    from rich.table import Table

    from .lm.curate.provenance import CATEGORIES

    table = Table(title="sentence provenance (shares of sentences)")
    for col in ("model", "answers", *[f"{c}" for c in CATEGORIES], *[f"{c} | correct" for c in CATEGORIES[:1]],
                *[f"{c} | incorrect" for c in CATEGORIES[:1]]):
        table.add_column(col)
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    for label, r in rows:
        p = r.get("provenance")
        if p:
            table.add_row(label, str(p["answers"]), *[pct(p["overall"][c]) for c in CATEGORIES],
                          pct(p["correct"]["teacher"]), pct(p["incorrect"]["teacher"]))
    return table


def _write_json(path, data):
    from .paths import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2))


@click.command(context_settings=CONTEXT)
@config_option
@click.option("--force", is_flag=True, help="Retrain even if a cached teacher exists.")
@overrides_arg
def teacher(config_file, force, overrides):
    """Train the built-in tiny teacher on a built-in task (cached; later runs reuse it).

    \b
    retort teacher                      # modchain, cached in $RETORT_CACHE or ~/.cache/retort
    retort teacher task.name=vars
    retort teacher track=classify task.name=digits   # a classifier teacher for a built-in dataset
    retort teacher track=diffuse task.name=digits    # a diffusion teacher (a U-Net) for digits
    """
    from .config import peek_track

    track_name = peek_track(config_file, list(overrides))
    if track_name == "classify":
        from .classify.teacher import ensure_teacher as ensure_classifier

        ensure_classifier(config_file, list(overrides), force=force, console=_console())
        return
    if track_name == "diffuse":
        from .diffuse.teacher import ensure_teacher as ensure_denoiser

        ensure_denoiser(config_file, list(overrides), force=force, console=_console())
        return
    from .lm.teacher import ensure_teacher

    ensure_teacher(config_file, list(overrides), force=force, console=_console())


@click.command(context_settings=CONTEXT)
@config_option
@click.argument("n", type=int)
@click.option("--alpha-hat", is_flag=True, help="method=borup: per generation, train at alpha=0 and alpha=1, "
              "estimate the best alpha on the validation split, train at it.")
@overrides_arg
def generations(config_file, n, alpha_hat, overrides):
    """A chain of N self-distillation generations (track=classify): generation 1 learns from
    teacher.name, each next one from the previous; OUT/gen-K run dirs and OUT/generations.json
    (accuracy, calibration, agreement and KL with the base teacher per generation). Resumable.

    \b
    retort generations 5 track=classify task.name=digits method=borup method_args.alpha=0.35 \\
        student.name=mlp:512-512 teacher.name=builtin:teacher out=runs/borup
    retort generations 10 track=classify method=recursive method_args.a=0.3 out=runs/rec
    """
    from .config import load_config, peek_track
    from .track import get_track

    if peek_track(config_file, list(overrides)) != "classify":
        raise click.UsageError("generations runs classifier chains: pass track=classify")
    from .classify.generations import run_generations

    run = load_config(get_track("classify").run_config, config_file, list(overrides))
    result = run_generations(run, n, alpha_hat_search=alpha_hat, console=_console())
    click.echo(json.dumps(result["generations"], indent=1))


@click.command(context_settings=CONTEXT)
@click.option("--track", "track_name", type=click.Choice(["lm", "classify", "diffuse"]), default="lm",
              show_default=True, help="lm: reasoning language models on the built-in task; classify: classifiers on "
              "digits; diffuse: few-step generators on the 8-mode ring and digits.")
@click.option("--out", default=None, help="Demo run directory [default: runs/demo, runs/demo-classify, "
              "runs/demo-diffuse].")
@click.option("--methods", default=None,
              help="Comma-separated students to train and compare. lm (default answers,sft): answers, sft, kd "
                   "(from scratch); 300 steps on from a shared sft warm start: sft_more, gkd, rkl_pg, tsd_kd, opsd "
                   "(on-policy), redi, dpo, simpo (trace pairs), curio_sft, chunk_sft, and DASD's recipes dasd_low "
                   "(T=0.6 traces), dasd_high (T=1, 1 of 4 at random), dasd_sched (low then high), dasd_das (1 of 4 "
                   "by divergence-aware selection), dasd_mixed (+ mixed-policy rows). classify (default all): ce, "
                   "kd, dkd, pld, lelp. diffuse (default all): dmd2, dmd, cd (ring), dmd2-digits.")
@click.option("--seed", default=0, show_default=True, help="Seed of every student run (init, data order, rollouts).")
def demo(track_name, out, methods, seed):
    """The embedded default end to end: built-in teacher, (teacher traces,) students, evaluation
    side by side, and an HTML report (OUT/report.html)."""
    names = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
    if track_name == "classify":
        from .classify.demo import run_demo as run_classify_demo

        run_classify_demo(out or "runs/demo-classify", console=_console(), methods=names, seed=seed)
        return
    if track_name == "diffuse":
        from .diffuse.demo import run_demo as run_diffuse_demo

        run_diffuse_demo(out or "runs/demo-diffuse", console=_console(), methods=names, seed=seed)
        return
    from .lm.demo import run_demo

    run_demo(out or "runs/demo", console=_console(), methods=names or ["answers", "sft"], seed=seed)


@click.command(context_settings=CONTEXT)
@click.option("--n", default=2, show_default=True, help="Examples shown per task.")
def tasks(n):
    """List built-in tasks, their difficulty knobs, and example problems."""
    from .lm.tasks import TASKS

    for name, cls in TASKS.items():
        t = cls()
        knobs = ", ".join(f"{k}={getattr(t, k)} [{lo}..{hi}]" for k, (lo, hi) in cls.knobs.items())
        click.echo(f"{name}: {cls.description}\n  knobs: {knobs}")
        for ex in t.examples("train", n, 0):
            click.echo("  " + (ex.prompt + ex.solution).replace("\n", "\n    | ").rstrip())
    click.echo("file tasks: task.name=PATH.jsonl|.parquet (prompt, answer, optional solution, id); "
               "task.verifier=exact|numeric|math")
    from .lm.tasks.rg import SOLVERS, generators

    names = generators()
    click.echo(f"reasoning-gym: task.name=rg:GENERATOR, task.difficulty = the generator's options, its own "
               f"answer checker; worked solutions for {', '.join(SOLVERS)}; "
               + (f"{len(names)} generators: {', '.join(names)}" if names else "not installed (pip install 'retort[rg]')"))


@click.command(context_settings=CONTEXT)
@click.option("--track", "track_name", default=None, help="Only this track's methods (lm, classify, diffuse).")
def methods(track_name):
    """List training methods of every track, their papers and options."""
    import dataclasses

    from .track import TRACKS, get_track

    for name in [track_name] if track_name else list(TRACKS):
        track = get_track(name)
        click.echo(f"# track={name}")
        for mname, cls in track.methods.items():
            click.echo(f"{mname}: {cls.paper}\n  {cls.equation}")
            for f in dataclasses.fields(cls.Config):
                click.echo(f"  method_args.{f.name} = {f.default!r}  {f.metadata.get('doc', '')}")


@click.command(context_settings=CONTEXT)
@click.argument("command", type=click.Choice(["train", "eval", "teacher", "traces"]))
@click.option("--track", "track_name", default="lm", show_default=True, help="The track (train, teacher): lm, classify, diffuse.")
def config(command, track_name):
    """Show every config key of a command with its default, meaning and allowed values."""
    from .config import EvalRun, TracesRun, describe
    from .track import get_track

    track = get_track(track_name)
    if command == "teacher":
        if track_name == "classify":
            from .classify.teacher import teacher_config as classify_teacher

            cfg = classify_teacher(None, [])
        elif track_name == "diffuse":
            from .diffuse.teacher import teacher_config as diffuse_teacher

            cfg = diffuse_teacher(None, ["task.name=digits"])
        else:
            from .lm.teacher import teacher_config

            cfg = teacher_config(None, [])
    else:
        evals = {"classify": "retort.classify.config:ClassifyEvalRun", "diffuse": "retort.diffuse.config:DiffuseEvalRun"}
        eval_cfg = EvalRun
        if track_name in evals:
            import importlib

            mod, _, cls = evals[track_name].partition(":")
            eval_cfg = getattr(importlib.import_module(mod), cls)
        cfg = {"train": track.run_config, "eval": eval_cfg, "traces": TracesRun}[command]
    for key, default, doc in describe(cfg):
        click.echo(f"{key} = {default}\n    {doc}")


@click.command(context_settings=CONTEXT)
@config_option
@click.option("--batch-out", type=click.Path(), help="API teacher: write the requests not yet answered as an "
              "OpenAI batch file (JSONL) instead of sending them.")
@click.option("--batch-in", type=click.Path(), help="API teacher: read a batch's results (JSONL: custom_id, "
              "response) into the trace set instead of sending requests.")
@overrides_arg
def traces(config_file, batch_out, batch_in, overrides):
    """Sample teacher completions, verify and score each, store them as resumable Parquet shards.

    \b
    retort traces out=runs/traces n_prompts=2000 sampling.n=4 sampling.temperature=0.8
    retort traces -c configs/traces_smollm2.yaml sampling.topk=16
    retort traces teacher.name=openai:MODEL teacher.api.base_url=http://HOST:8000/v1 out=runs/api
    Rerun the same command after a crash: it continues where it stopped (an API teacher's
    answers already received are never requested again).
    """
    from .config import TracesRun, load_config
    from .lm.traces import run_traces

    if batch_out and batch_in:
        raise click.UsageError("--batch-out and --batch-in: one at a time (write the requests, run them, read back)")
    run_traces(load_config(TracesRun, config_file, _overrides(overrides)), console=_console(),
               batch_out=batch_out, batch_in=batch_in)


@click.command(context_settings=CONTEXT)
@click.argument("traces_dir", type=click.Path())
@click.option("--stats", "show_stats", is_flag=True, help="Print statistics of the trace set (per teacher when "
              "several sampled it).")
@click.option("--ref-model", metavar="MODEL", help="With --stats: also the perplexity of each teacher's traces "
              "under this reference model (AM's source comparison); with --max-ppl: the model it is measured under.")
@click.option("--max-ppl", metavar="PPL|TEACHER=PPL,...", help="AM's perplexity filter: drop traces whose "
              "perplexity under --ref-model exceeds their teacher's limit (one number for all, or per teacher; "
              "'*=N' for the rest).")
@click.option("--out", type=click.Path(), help="Write the filtered trace set here.")
@click.option("--teacher", "only_teacher", metavar="NAME", help="Keep only the rows this teacher sampled (a set "
              "several teachers sampled: `retort traces teachers=[...]`).")
@click.option("--correct", is_flag=True, help="Keep only verified-correct traces (rejection sampling).")
@click.option("--max-tokens", type=click.IntRange(min=1), help="Drop completions longer than this.")
@click.option("--first-k-correct", type=click.IntRange(min=1), help="Keep the first K correct samples per prompt.")
@click.option("--pairs", type=click.IntRange(min=0), help="Keep only traces in positive/negative pairs, at most "
              "K per prompt (0: all): the i-th correct sample of a prompt with its i-th incorrect one.")
@click.option("--das", "das_student", metavar="MODEL", help="DASD divergence-aware selection: keep the traces "
              "whose sentences the teacher finds far likelier than this student does (a model name or directory).")
@click.option("--das-keep", type=click.IntRange(min=1), default=1, show_default=True,
              help="With --das: traces kept per prompt (the best-scoring ones).")
@click.option("--das-delta", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="With --das: nats of mean log-prob difference that make a Teacher / Student Sentence.")
@click.option("--das-rule", type=click.Choice(["das", "likeliest", "random"]), default="das", show_default=True,
              help="With --das: keep per prompt the traces with the best DAS score (teacher-guided), the highest "
              "mean log-prob under the student, or at random (--seed): the three selections of §14.4.")
@click.option("--mixed-policy", "mixed_student", metavar="MODEL", help="DASD mixed-policy data: this student's "
              "answers, cut at a random point, continued by the traces' teacher (verified), for unmasked sft.")
@click.option("--mixed-from", type=click.Choice(["truncated", "failed", "all"]), default="failed",
              show_default=True, help="With --mixed-policy: which student answers are cut and continued.")
@click.option("--cut-lo", type=click.FloatRange(0, 1, max_open=True), default=0.5, show_default=True,
              help="With --mixed-policy: the cut is drawn from (cut-lo x length, length).")
@click.option("--length-factor", type=click.FloatRange(min=0, min_open=True), default=1.5, show_default=True,
              help="With --mixed-policy: student answers are capped at this x the teacher trace's length.")
@click.option("--temperature", type=click.FloatRange(min=0), default=None,
              help="With --mixed-policy: sampling temperature of student and teacher (default: the traces'); "
              "with --rewrite (default 0, greedy) and --retro-search (default 0.6): the reviser's.")
@click.option("--max-prompts", type=click.IntRange(min=0), default=0, show_default=True,
              help="With --mixed-policy, --rewrite, --retro-search: use at most this many prompts (0: all).")
@click.option("--with-source", is_flag=True, help="With --mixed-policy: also keep the source's correct traces.")
@click.option("--teacher-url", metavar="URL", help="With --mixed-policy, --rewrite, --retro-search on traces of an "
              "API teacher (openai:MODEL): the server's /v1 URL, when it is no longer where the traces were made.")
@click.option("--seed", type=int, default=0, show_default=True, help="With --mixed-policy, --rewrite, "
              "--retro-search: sampling seed; with --das-rule random: the draw.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Sequences per forward pass when a model scores or samples (--das, --mixed-policy, --rewrite, "
              "--retro-search).")
@click.option("--select-teacher", "select_student", metavar="STUDENT", help="DED's smoke test on a set several "
              "teachers sampled: this student trained briefly on each teacher's correct traces; gains, cheap proxies, "
              "cost and the ranking (JSON on stdout).")
@click.option("--smoke-steps", type=click.IntRange(min=1), default=100, show_default=True,
              help="With --select-teacher: sft steps per teacher.")
@click.option("--probe-n", type=click.IntRange(min=1), default=100, show_default=True,
              help="With --select-teacher: test prompts the gain is measured on.")
@click.option("--drop-templates", is_flag=True, help="AM's template removal: drop traces holding a word n-gram "
              "that more than --template-max traces hold (boilerplate).")
@click.option("--template-ngram", type=click.IntRange(min=2), default=20, show_default=True,
              help="With --drop-templates: n-gram length in words.")
@click.option("--template-max", type=click.IntRange(min=1), default=20, show_default=True,
              help="With --drop-templates: an n-gram in more traces than this is a template.")
@click.option("--diverse", type=click.IntRange(min=1), help="DED's diverse trajectories: per prompt, the K correct "
              "traces that differ most (greedy max-min of 1 - ROUGE-L over words).")
@click.option("--rewrite", type=click.Choice(["dap", "uniform"]), help="LiteCoT's DAP: the teacher judges each "
              "correct trace's difficulty and rewrites it within that level's budget (--budgets); `uniform`: one "
              "budget for all (--budget). Rewrites that change the answer or fail the check are dropped.")
@click.option("--budgets", default="easy=300,medium=700,hard=1500", show_default=True,
              help="With --rewrite dap: tokens per difficulty level.")
@click.option("--budget", type=click.IntRange(min=1), help="With --rewrite uniform: tokens for every problem.")
@click.option("--rewrite-template", type=click.Path(dir_okay=False), help="With --rewrite: a text file holding "
              "the prompt, with {question} {trace} and {easy} {medium} {hard} (dap) or {budget} (uniform) "
              "(default: the spec's, or the one a built-in teacher was trained on).")
@click.option("--retro-search", is_flag=True, help="Retro-Search: at each thought switch of a correct trace the "
              "reviser continues without switching; the continuation replaces the rest when it reaches the right "
              "answer in fewer steps.")
@click.option("--gamma", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.9, show_default=True,
              help="With --retro-search: value gamma^steps of a way to the right answer.")
@click.option("--transitions", metavar="WORDS", help="With --retro-search: comma-separated words that open a "
              "new thought (default: the task's, else Wait, But wait, Alternatively, Hmm, ...).")
@click.option("--retro-partial", is_flag=True, help="With --retro-search: stop at a trace's first revision "
              "(Retro-Search-Partial).")
@click.option("--retro-tries", type=click.IntRange(min=1), default=2, show_default=True,
              help="With --retro-search: continuations drawn per switch (the first that finishes without a "
              "keyword in its first step is taken).")
@click.option("--reviser", metavar="MODEL", help="With --rewrite / --retro-search: the model that rewrites or "
              "continues (default: the traces' teacher; another local model needs the same tokenizer).")
@click.option("--truncate-like", metavar="DIR", type=click.Path(), help="The correct traces cut (at a step "
              "boundary, the answer kept) to the length of the matching rows of DIR: the baseline of equal length.")
@click.option("--overwrite", is_flag=True, help="Replace the trace set already in --out (only ever a directory "
              "holding a retort trace set and nothing else; never the input).")
def curate(traces_dir, show_stats, ref_model, max_ppl, out, only_teacher, correct, max_tokens, first_k_correct, pairs,
           das_student, das_keep, das_delta, das_rule, mixed_student, mixed_from, cut_lo, length_factor, temperature,
           max_prompts, with_source,
           teacher_url, select_student, smoke_steps, probe_n, drop_templates, template_ngram, template_max, diverse,
           seed, batch_size, rewrite, budgets, budget, rewrite_template, retro_search, gamma, transitions,
           retro_partial, retro_tries, reviser, truncate_like, overwrite):
    """Statistics of a trace set; filters, selections, rewrites and revisions into a new one.

    \b
    retort curate runs/traces --stats
    retort curate runs/traces --out runs/traces_ok --correct --max-tokens 256 --first-k-correct 1
    retort curate runs/traces --out runs/pairs --pairs 1     # for redi / dpo / simpo
    retort curate runs/traces --out runs/das --correct --das runs/warm/model --das-keep 1
    retort curate runs/traces --out runs/mixed --mixed-policy runs/warm/model --with-source
    retort curate runs/traces --out runs/diverse --correct --drop-templates --diverse 2
    retort curate runs/traces --out runs/am --correct --max-ppl teacherA=8,teacherB=12 --ref-model REF
    retort curate runs/traces --out runs/dap --rewrite dap --budgets easy=300,medium=700,hard=1500
    retort curate runs/traces --out runs/retro --retro-search --gamma 0.9
    retort curate runs/traces --out runs/cut --truncate-like runs/retro
    """
    from .lm.curate import filter_traces, trace_stats
    from .lm.curate.select import parse_max_ppl
    from .lm.data.traces import read_traces
    from .errors import RetortError

    if not show_stats and not out and not select_student:
        raise RetortError("curate: pass --stats, --select-teacher STUDENT, or --out DIR with filters")
    if ref_model and not (show_stats or max_ppl):
        raise RetortError("curate: --ref-model goes with --stats or --max-ppl")
    if max_ppl and not ref_model:
        raise RetortError("curate --max-ppl: name the reference model the perplexity is measured under (--ref-model)")
    if max_ppl and not out:
        raise RetortError("curate --max-ppl is a filter: it needs --out DIR")
    makers = [name for name, on in (("--mixed-policy", mixed_student), ("--rewrite", rewrite),
                                    ("--retro-search", retro_search), ("--truncate-like", truncate_like)) if on]
    if len(makers) > 1:
        raise RetortError(f"curate: {' and '.join(makers)} each make a new trace set; one per curate step")
    if makers and not out:
        raise RetortError(f"curate: {makers[0]} needs --out DIR")
    filters = (correct or max_tokens or first_k_correct or pairs is not None or das_student or drop_templates or diverse
               or max_ppl or only_teacher)
    if makers and makers[0] != "--mixed-policy" and filters:
        raise RetortError(f"curate: {makers[0]} makes new traces (from the correct ones); run the filters in a "
                          "separate curate step")
    if budget and rewrite != "uniform":
        raise RetortError("curate: --budget goes with --rewrite uniform")
    if select_student:
        from .lm.curate.ded import select_teacher

        result = select_teacher(traces_dir, select_student, steps=smoke_steps, probe_n=probe_n, seed=seed,
                                console=_console())
        click.echo(json.dumps(result, indent=2))
        if not (show_stats or out):
            return
    if show_stats:
        table = read_traces(traces_dir)
        stats = trace_stats(table)
        if ref_model:
            from .lm.curate.stats import reference_perplexity

            stats["reference_ppl"] = {"model": ref_model, **reference_perplexity(table, ref_model,
                                                                                 batch_size=batch_size)}
        click.echo(json.dumps(stats, indent=2))
    if out and (rewrite or retro_search or truncate_like):
        from .lm.curate import shorten

        kw = dict(max_prompts=max_prompts, seed=seed, batch_size=batch_size, overwrite=overwrite,
                  teacher_url=teacher_url, console=_console())
        if rewrite:
            template = None
            if rewrite_template:
                try:
                    template = Path(rewrite_template).read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError) as e:
                    raise RetortError(f"curate --rewrite-template {rewrite_template}: cannot read it ({e})") from None
            stats = shorten.rewrite(traces_dir, out, mode=rewrite, budgets=shorten.parse_budgets(budgets),
                                    budget=budget, template=template, reviser=reviser,
                                    temperature=0.0 if temperature is None else temperature, **kw)
            c = stats["rewrite_counts"]
            rejected = ", ".join(f"{k} {v}" for k, v in sorted(c["rejected"].items())) or "none"
            _console().print(f"curate: {c['kept']} of {c['traces']} traces rewritten ({rewrite}; rejected: {rejected}; "
                             f"{c['over_budget']} over budget); tokens {c['tokens_before']} -> {c['tokens_after']}; "
                             f"written to {out}")
        elif retro_search:
            words = [w.strip() for w in transitions.split(",") if w.strip()] if transitions else None
            stats = shorten.retro_search(traces_dir, out, gamma=gamma, keywords=words, partial=retro_partial,
                                         tries=retro_tries, reviser=reviser,
                                         temperature=0.6 if temperature is None else temperature, **kw)
            c = stats["retro_counts"]
            _console().print(f"curate: {c['revised_traces']} of {c['traces']} traces revised ({c['revisions']} "
                             f"revisions at {c['switches']} switches); tokens {c['tokens_before']} -> "
                             f"{c['tokens_after']}; written to {out}")
        else:
            stats = shorten.truncate_like(traces_dir, out, truncate_like, overwrite=overwrite, console=_console())
            c = stats["truncate_counts"]
            _console().print(f"curate: {c['cut']} of {c['traces']} traces cut; tokens {c['tokens_before']} -> "
                             f"{c['tokens_after']}; written to {out}")
        return
    if out and mixed_student:
        from .lm.curate.mixed import mixed_policy

        if filters:
            raise RetortError("curate: --mixed-policy makes new traces; run the filters in a separate curate step")
        stats = mixed_policy(traces_dir, out, mixed_student, source=mixed_from, length_factor=length_factor,
                             cut_lo=cut_lo, temperature=temperature, max_prompts=max_prompts,
                             with_source=with_source, batch_size=batch_size, seed=seed, overwrite=overwrite,
                             teacher_url=teacher_url, console=_console())
        m = stats["mixed_policy"]
        _console().print(f"curate: {m['kept']} mixed-policy rows ({m['eligible']} of {m['student_rollouts']} student "
                         f"answers cut, {m['kept']} continuations verified); {stats['rows']} rows written to {out}")
    elif out:
        stats = filter_traces(traces_dir, out, correct_only=correct, max_tokens=max_tokens,
                              first_k_correct=first_k_correct, pairs=pairs, das_student=das_student,
                              das_keep=das_keep, das_delta=das_delta, das_rule=das_rule, seed=seed,
                              batch_size=batch_size, overwrite=overwrite,
                              templates=(template_ngram, template_max) if drop_templates else None, diverse=diverse,
                              max_ppl=parse_max_ppl(max_ppl) if max_ppl else None, ppl_model=ref_model,
                              teacher=only_teacher,
                              console=_console())
        _console().print(f"curate: {stats['rows']} rows from {stats['prompts']} prompts written to {out}")


@click.command(context_settings=CONTEXT)
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path())
@click.option("--out", "-o", default=None, help="HTML file (default: report.html in the first run dir, or beside "
              "the first input when that is a `retort eval --json` file).")
@click.option("--title", default="retort report", show_default=True)
def report(run_dirs, out, title):
    """One self-contained HTML page comparing runs (training run dirs, demo dirs, `retort eval --json`
    files): table, loss curves, accuracy vs tokens, samples."""
    from .report import write_report

    first = Path(run_dirs[0])
    default = first.with_name("report.html") if first.is_file() else first / "report.html"
    path = write_report(list(run_dirs), out or str(default), title=title)
    _console().print(f"report: {path}")


COMMANDS = {"teacher": teacher, "traces": traces, "curate": curate, "train": train, "generations": generations,
            "eval": eval_cmd,
            "report": report, "demo": demo, "tasks": tasks, "methods": methods, "config": config}


@click.group(context_settings=CONTEXT, commands=COMMANDS)
@click.version_option(package_name="retort")
def cli():
    """retort: distil the reasoning of a teacher language model into a smaller student (track=classify:
    a classifier into a smaller one; track=diffuse: a diffusion teacher into a few-step generator)."""


def _quiet_libraries() -> None:
    """retort draws its own progress; silence transformers' per-file bars and advisory warnings."""
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")  # e.g. transformers' GGUF de-quantisation bar
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


def main(argv=None) -> int:
    _quiet_libraries()
    try:
        cli.main(args=argv, prog_name="retort", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except RetortError as e:
        click.echo(f"error: {e}", err=True)
        return 2
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
