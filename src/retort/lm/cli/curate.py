"""`retort curate`: statistics of a trace set; filters, selections, rewrites and revisions into a new one.

This module owns the command line of curation: the options in their five help groups, the rules that
refuse a conflicting combination of them (`RULES`, checked before any trace is read), and the dispatch
to `retort.lm.curate` (statistics, `filter_traces`, `ded.select_teacher`, `mixed.mixed_policy`, and
`shorten.rewrite` / `retro_search` / `truncate_like`, `knowledge.knowledge`) with the lines it prints. The curation itself
lives in `retort.lm.curate`; the grouped help and the rule checker in `grouped.py`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ...errors import RetortError
from ...options import CONTEXT
from ...options import console as _console
from .grouped import GroupedCommand, excludes, needs, one_at_most, one_of, option

STATS, FILTERS, SELECTION, NEW, OUTPUT = GROUPS = ("Statistics", "Filters", "Selection", "New traces", "Output")

# Each makes a new trace set (in this order in messages); "filters" in the rules: what drops or selects rows.
MAKERS = ("--mixed-policy", "--rewrite", "--retro-search", "--truncate-like", "--multi-turn", "--knowledge")
FILTER_OPTIONS = ("--correct", "--max-tokens", "--first-k-correct", "--pairs", "--das", "--drop-templates",
                  "--diverse", "--max-ppl", "--teacher", "--agent-filter")

# Conflicts, refused in this order before any work: the first broken rule is the error (exit status 2).
RULES = (
    one_of(("--stats", "--select-teacher", "--out"),
           "curate: pass --stats, --select-teacher STUDENT, or --out DIR with filters"),
    needs("--ref-model", ("--stats", "--max-ppl"), "curate: --ref-model goes with --stats or --max-ppl"),
    needs("--max-ppl", "--ref-model",
          "curate --max-ppl: name the reference model the perplexity is measured under (--ref-model)"),
    needs("--max-ppl", "--out", "curate --max-ppl is a filter: it needs --out DIR"),
    one_at_most(MAKERS, "curate: {opts} each make a new trace set; one per curate step"),
    needs(MAKERS, "--out", "curate: {opt} needs --out DIR"),
    excludes(MAKERS[1:], FILTER_OPTIONS,
             "curate: {opt} makes new traces (from the correct ones); run the filters in a separate curate step"),
    needs("--budget", "--rewrite=uniform", "curate: --budget goes with --rewrite uniform"),
    needs("--answer-cue", "--multi-turn", "curate: --answer-cue goes with --multi-turn"),
    needs(("--knowledge-rule", "--knowledge-template"), "--knowledge",
          "curate: {opt} goes with --knowledge"),
    excludes(("--knowledge-template", "--reviser", "--teacher-url"), "--knowledge-rule",
             "curate: {opt} is for a teacher that writes the knowledge; --knowledge-rule writes it by the task's "
             "rule: pass one or the other"),
    excludes("--mixed-policy", FILTER_OPTIONS,
             "curate: --mixed-policy makes new traces; run the filters in a separate curate step"),
)


@click.command(cls=GroupedCommand, groups=GROUPS, rules=RULES, context_settings=CONTEXT)
@click.argument("traces_dir", type=click.Path())
@option(STATS, "--stats", "show_stats", is_flag=True, help="Print statistics of the trace set (per teacher when "
        "several sampled it).")
@option(STATS, "--ref-model", metavar="MODEL", help="With --stats: also the perplexity of each teacher's traces "
        "under this reference model (AM's source comparison); with --max-ppl: the model it is measured under.")
@option(FILTERS, "--correct", is_flag=True, help="Keep only verified-correct traces (rejection sampling).")
@option(FILTERS, "--agent-filter", is_flag=True, help="Agent traces (traces agent=code): keep the episodes agent "
        "distillation trains on: correct, with no parse or execution error, under agent.max_steps.")
@option(FILTERS, "--max-tokens", type=click.IntRange(min=1), help="Drop completions longer than this.")
@option(FILTERS, "--first-k-correct", type=click.IntRange(min=1), help="Keep the first K correct samples per prompt.")
@option(FILTERS, "--teacher", "only_teacher", metavar="NAME", help="Keep only the rows this teacher sampled (a set "
        "several teachers sampled: `retort traces teachers=[...]`).")
@option(FILTERS, "--max-ppl", metavar="PPL|TEACHER=PPL,...", help="AM's perplexity filter: drop traces whose "
        "perplexity under --ref-model exceeds their teacher's limit (one number for all, or per teacher; "
        "'*=N' for the rest).")
@option(FILTERS, "--drop-templates", is_flag=True, help="AM's template removal: drop traces holding a word n-gram "
        "that more than --template-max traces hold (boilerplate).")
@option(FILTERS, "--template-ngram", type=click.IntRange(min=2), default=20, show_default=True,
        help="With --drop-templates: n-gram length in words.")
@option(FILTERS, "--template-max", type=click.IntRange(min=1), default=20, show_default=True,
        help="With --drop-templates: an n-gram in more traces than this is a template.")
@option(FILTERS, "--diverse", type=click.IntRange(min=1), help="DED's diverse trajectories: per prompt, the K correct "
        "traces that differ most (greedy max-min of 1 - ROUGE-L over words).")
@option(FILTERS, "--pairs", type=click.IntRange(min=0), help="Keep only traces in positive/negative pairs, at most "
        "K per prompt (0: all): the i-th correct sample of a prompt with its i-th incorrect one.")
@option(SELECTION, "--das", "das_student", metavar="MODEL", help="DASD divergence-aware selection: keep the traces "
        "whose sentences the teacher finds far likelier than this student does (a model name or directory).")
@option(SELECTION, "--das-keep", type=click.IntRange(min=1), default=1, show_default=True,
        help="With --das: traces kept per prompt (the best-scoring ones).")
@option(SELECTION, "--das-delta", type=click.FloatRange(min=0), default=1.0, show_default=True,
        help="With --das: nats of mean log-prob difference that make a Teacher / Student Sentence.")
@option(SELECTION, "--das-rule", type=click.Choice(["das", "likeliest", "random"]), default="das", show_default=True,
        help="With --das: keep per prompt the traces with the best DAS score (teacher-guided), the highest "
        "mean log-prob under the student, or at random (--seed): the three selections DASD compares.")
@option(SELECTION, "--select-teacher", "select_student", metavar="STUDENT", help="DED's smoke test on a set several "
        "teachers sampled: this student trained briefly on each teacher's correct traces; gains, cheap proxies, "
        "cost and the ranking (JSON on stdout).")
@option(SELECTION, "--smoke-steps", type=click.IntRange(min=1), default=100, show_default=True,
        help="With --select-teacher: sft steps per teacher.")
@option(SELECTION, "--probe-n", type=click.IntRange(min=1), default=100, show_default=True,
        help="With --select-teacher: test prompts the gain is measured on.")
@option(NEW, "--mixed-policy", "mixed_student", metavar="MODEL", help="DASD mixed-policy data: this student's "
        "answers, cut at a random point, continued by the traces' teacher (verified), for unmasked sft.")
@option(NEW, "--mixed-from", type=click.Choice(["truncated", "failed", "all"]), default="failed",
        show_default=True, help="With --mixed-policy: which student answers are cut and continued.")
@option(NEW, "--cut-lo", type=click.FloatRange(0, 1, max_open=True), default=0.5, show_default=True,
        help="With --mixed-policy: the cut is drawn from (cut-lo x length, length).")
@option(NEW, "--length-factor", type=click.FloatRange(min=0, min_open=True), default=1.5, show_default=True,
        help="With --mixed-policy: student answers are capped at this x the teacher trace's length.")
@option(NEW, "--with-source", is_flag=True, help="With --mixed-policy: also keep the source's correct traces.")
@option(NEW, "--rewrite", type=click.Choice(["dap", "uniform"]), help="LiteCoT's DAP: the teacher judges each "
        "correct trace's difficulty and rewrites it within that level's budget (--budgets); `uniform`: one "
        "budget for all (--budget). Rewrites that change the answer or fail the check are dropped.")
@option(NEW, "--budgets", default="easy=300,medium=700,hard=1500", show_default=True,
        help="With --rewrite dap: tokens per difficulty level.")
@option(NEW, "--budget", type=click.IntRange(min=1), help="With --rewrite uniform: tokens for every problem.")
@option(NEW, "--rewrite-template", type=click.Path(dir_okay=False), help="With --rewrite: a text file holding "
        "the prompt, with {question} {trace} and {easy} {medium} {hard} (dap) or {budget} (uniform) "
        "(default: the spec's, or the one a built-in teacher was trained on).")
@option(NEW, "--retro-search", is_flag=True, help="Retro-Search: at each thought switch of a correct trace the "
        "reviser continues without switching; the continuation replaces the rest when it reaches the right "
        "answer in fewer steps.")
@option(NEW, "--gamma", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.9, show_default=True,
        help="With --retro-search: value gamma^steps of a way to the right answer.")
@option(NEW, "--transitions", metavar="WORDS", help="With --retro-search, --multi-turn: comma-separated words that open a "
        "new thought (default: the task's, else Wait, But wait, Alternatively, Hmm, ...).")
@option(NEW, "--retro-partial", is_flag=True, help="With --retro-search: stop at a trace's first revision "
        "(Retro-Search-Partial).")
@option(NEW, "--retro-tries", type=click.IntRange(min=1), default=2, show_default=True,
        help="With --retro-search: continuations drawn per switch (the first that finishes without a "
        "keyword in its first step is taken).")
@option(NEW, "--truncate-like", metavar="DIR", type=click.Path(), help="The correct traces cut (at a step "
        "boundary, the answer kept) to the length of the matching rows of DIR: the baseline of equal length.")
@option(NEW, "--multi-turn", is_flag=True, help="MinD's turn format: each correct trace cut into thinking units "
        "(at thought switches and every --unit-steps steps), each followed by the answer its prefix reached, "
        "written <think>u1</think> a1 <think>u2</think> a2 ... (for sft, then grpo method_args.reward=mind_turns).")
@option(NEW, "--intermediate", type=click.Choice(["teacher", "last-result"]), default="teacher", show_default=True,
        help="With --multi-turn: who writes each prefix's answer: the teacher (it continues the prefix after the "
        "answer cue), or the rule 'the last number after =' (for the built-in tiny tasks).")
@option(NEW, "--unit-steps", type=click.IntRange(min=0), default=4, show_default=True,
        help="With --multi-turn: a unit of more steps is cut at step boundaries into pieces of this many (0: "
        "cut at thought switches only).")
@option(NEW, "--answer-cue", metavar="TEXT", help="With --multi-turn --intermediate teacher: the text after the "
        "prefix that asks for its answer (default: the task's answer opener, e.g. 'A:' or '\\boxed{').")
@option(NEW, "--answer-tokens", type=click.IntRange(min=1), default=16, show_default=True,
        help="With --multi-turn --intermediate teacher: longest intermediate answer the teacher writes.")
@option(NEW, "--knowledge", is_flag=True, help="LoRID's rows: the teacher writes the knowledge each correct "
        "trace uses; --out DIR gets DIR/ir (question -> trace), DIR/kg (question -> knowledge) and DIR/dr "
        "(question + knowledge -> trace), one sft LoRA run each, then `retort eval --lorid`.")
@option(NEW, "--knowledge-rule", is_flag=True, help="With --knowledge: write it by the task's rule instead of a "
        "teacher (built-in tasks modchain, detours, vars; their tiny teachers cannot write it).")
@option(NEW, "--knowledge-template", type=click.Path(dir_okay=False), help="With --knowledge: a text file holding "
        "the prompt to the teacher, with {question} and {rationale} (default: LoRID's, asking for a JSON list).")
@option(NEW, "--reviser", metavar="MODEL", help="With --rewrite / --retro-search / --multi-turn / --knowledge: the "
        "model that rewrites, continues or writes knowledge (default: the traces' teacher; another local model "
        "needs the same tokenizer).")
@option(NEW, "--teacher-url", metavar="URL", help="With --mixed-policy, --rewrite, --retro-search, --multi-turn, --knowledge on traces of an "
        "API teacher (openai:MODEL): the server's /v1 URL, when it is no longer where the traces were made.")
@option(NEW, "--temperature", type=click.FloatRange(min=0), default=None,
        help="With --mixed-policy: sampling temperature of student and teacher (default: the traces'); "
        "with --rewrite (default 0, greedy), --retro-search (default 0.6) and --knowledge (default 0.2): the reviser's.")
@option(NEW, "--max-prompts", type=click.IntRange(min=0), default=0, show_default=True,
        help="With --mixed-policy, --rewrite, --retro-search, --multi-turn, --knowledge: use at most this many "
        "prompts (0: all).")
@option(OUTPUT, "--out", type=click.Path(), help="Write the filtered trace set here.")
@option(OUTPUT, "--overwrite", is_flag=True, help="Replace the trace set already in --out (only ever a directory "
        "holding a retort trace set and nothing else; never the input).")
@option(OUTPUT, "--seed", type=int, default=0, show_default=True, help="With --mixed-policy, --rewrite, "
        "--retro-search: sampling seed; with --das-rule random: the draw.")
@option(OUTPUT, "--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
        help="Sequences per forward pass when a model scores or samples (--das, --mixed-policy, --rewrite, "
        "--retro-search).")
def curate(traces_dir, show_stats, ref_model, correct, agent_filter, max_tokens, first_k_correct, only_teacher, max_ppl,
           drop_templates, template_ngram, template_max, diverse, pairs, das_student, das_keep, das_delta, das_rule,
           select_student, smoke_steps, probe_n, mixed_student, mixed_from, cut_lo, length_factor, with_source,
           rewrite, budgets, budget, rewrite_template, retro_search, gamma, transitions, retro_partial, retro_tries,
           truncate_like, multi_turn, intermediate, unit_steps, answer_cue, answer_tokens, knowledge, knowledge_rule,
           knowledge_template, reviser, teacher_url, temperature, max_prompts, out, overwrite, seed, batch_size):
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
    retort curate runs/traces --out runs/mind --multi-turn --intermediate teacher
    retort curate runs/traces --out runs/know --knowledge --knowledge-rule   # LoRID's ir/kg/dr rows
    retort curate runs/agent --out runs/agent_ok --agent-filter    # traces agent=code

    Conflicting options are refused before any trace is read.
    """
    from ..curate import filter_traces, trace_stats
    from ..curate.select import parse_max_ppl
    from ..data.traces import read_traces

    if select_student:
        from ..curate.ded import select_teacher

        result = select_teacher(traces_dir, select_student, steps=smoke_steps, probe_n=probe_n, seed=seed,
                                console=_console())
        click.echo(json.dumps(result, indent=2))
        if not (show_stats or out):
            return
    if show_stats:
        from ..data.traces import read_manifest, unfinished_note

        table = read_traces(traces_dir, allow_incomplete=True)
        stats = trace_stats(table)
        unfinished = unfinished_note(traces_dir, read_manifest(traces_dir), table)
        if unfinished:  # on stderr: stdout stays the JSON
            _console().print(f"curate --stats: {unfinished}")
            stats["unfinished"] = {"prompts_planned": read_manifest(traces_dir)["params"].get("n_prompts"),
                                   "prompts": stats.get("prompts", 0)}
        if ref_model:
            from ..curate.stats import reference_perplexity

            stats["reference_ppl"] = {"model": ref_model, **reference_perplexity(table, ref_model,
                                                                                 batch_size=batch_size)}
        click.echo(json.dumps(stats, indent=2))
    if out and multi_turn:
        from ..curate.mind import multi_turn as mind

        words = [w.strip() for w in transitions.split(",") if w.strip()] if transitions else None
        stats = mind(traces_dir, out, intermediate=intermediate, unit_steps=unit_steps, keywords=words,
                     cue=answer_cue, answer_tokens=answer_tokens, reviser=reviser, max_prompts=max_prompts,
                     seed=seed, batch_size=batch_size, overwrite=overwrite, teacher_url=teacher_url,
                     console=_console())
        c = stats["multi_turn_counts"]
        _console().print(f"curate: {c['written']} of {c['traces']} traces in turns ({c['turns']} turns; "
                         f"{c['joined']} units joined for want of an answer, {c['rejected']} rejected, "
                         f"{c['skipped']} without a final answer step or a step before it); tokens "
                         f"{c['tokens_before']} -> {c['tokens_after']}; written to {out}")
        return
    if out and knowledge:
        from ..curate.knowledge import knowledge as write_knowledge

        template = None
        if knowledge_template:
            try:
                template = Path(knowledge_template).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise RetortError(f"curate --knowledge-template {knowledge_template}: cannot read it ({e})") from None
        stats = write_knowledge(traces_dir, out, rule=knowledge_rule, template=template, reviser=reviser,
                                temperature=0.2 if temperature is None else temperature, max_prompts=max_prompts,
                                seed=seed, batch_size=batch_size, overwrite=overwrite, teacher_url=teacher_url,
                                console=_console())
        c = stats["knowledge_counts"]
        rejected = ", ".join(f"{k} {v}" for k, v in sorted(c["rejected"].items())) or "none"
        how = "by the task's rule" if knowledge_rule else f"by the teacher ({c['not_json']} not a JSON list)"
        _console().print(f"curate: knowledge for {c['kept']} of {c['traces']} traces, written {how} (rejected: "
                         f"{rejected}); {out}/ir, {out}/kg, {out}/dr: train one LoRA sft run on each, then "
                         "retort eval --lorid IR_RUN,KG_RUN,DR_RUN")
        return
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

        stats = mixed_policy(traces_dir, out, mixed_student, source=mixed_from, length_factor=length_factor,
                             cut_lo=cut_lo, temperature=temperature, max_prompts=max_prompts,
                             with_source=with_source, batch_size=batch_size, seed=seed, overwrite=overwrite,
                             teacher_url=teacher_url, console=_console())
        m = stats["mixed_policy"]
        _console().print(f"curate: {m['kept']} mixed-policy rows ({m['eligible']} of {m['student_rollouts']} student "
                         f"answers cut, {m['kept']} continuations verified); {stats['rows']} rows written to {out}")
    elif out:
        stats = filter_traces(traces_dir, out, correct_only=correct, agent_filter=agent_filter, max_tokens=max_tokens,
                              first_k_correct=first_k_correct, pairs=pairs, das_student=das_student,
                              das_keep=das_keep, das_delta=das_delta, das_rule=das_rule, seed=seed,
                              batch_size=batch_size, overwrite=overwrite,
                              templates=(template_ngram, template_max) if drop_templates else None, diverse=diverse,
                              max_ppl=parse_max_ppl(max_ppl) if max_ppl else None, ppl_model=ref_model,
                              teacher=only_teacher,
                              console=_console())
        _console().print(f"curate: {stats['rows']} rows from {stats['prompts']} prompts written to {out}")


