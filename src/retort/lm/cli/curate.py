"""`retort curate`: statistics of a trace set; filters, selections, rewrites and revisions into a new one."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ...errors import RetortError
from ...options import CONTEXT, console as _console

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
    from ..curate import filter_traces, trace_stats
    from ..curate.select import parse_max_ppl
    from ..data.traces import read_traces

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
        from ..curate.ded import select_teacher

        result = select_teacher(traces_dir, select_student, steps=smoke_steps, probe_n=probe_n, seed=seed,
                                console=_console())
        click.echo(json.dumps(result, indent=2))
        if not (show_stats or out):
            return
    if show_stats:
        table = read_traces(traces_dir)
        stats = trace_stats(table)
        if ref_model:
            from ..curate.stats import reference_perplexity

            stats["reference_ppl"] = {"model": ref_model, **reference_perplexity(table, ref_model,
                                                                                 batch_size=batch_size)}
        click.echo(json.dumps(stats, indent=2))
    if out and (rewrite or retro_search or truncate_like):
        from ..curate import shorten

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
        from ..curate.mixed import mixed_policy

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


