"""The language-model track's commands (`retort traces`, `retort curate`, `retort tasks`, `retort
models`) and the options it adds to `retort eval`. Imports click only: the commands import the
track when run."""

from __future__ import annotations

import click

from .curate import curate
from .models import models
from .tasks import tasks
from .traces import traces

COMMANDS = {"traces": traces, "curate": curate, "tasks": tasks, "models": models}

EVAL_OPTIONS = [
    click.Option(["--provenance"], metavar="TEACHER,BASE", help="Language models: also trace where each model's "
                 "answer sentences come from: teacher-originated / student-originated / shared / boosted, against "
                 "this teacher and this student before distillation (model names; the same vocabulary)."),
    click.Option(["--provenance-delta"], type=click.FloatRange(min=0), default=1.0, show_default=True,
                 help="With --provenance: nats of mean log-prob difference that make a category."),
    click.Option(["--lambda-depth"], type=click.FloatRange(0, 1), default=None,
                 help="System-1.5 students (method=system15): a layer takes its adapter shortcut where its router "
                      "says w > 1 - this (0: every layer, 1: adapters only). Default: the model's own."),
    click.Option(["--lambda-step"], type=click.FloatRange(0, 1), default=None,
                 help="System-1.5 students: a latent step is skipped where its router says s > 1 - this (0: every "
                      "step). Default: the model's own."),
    click.Option(["--lorid"], metavar="IR,KG,DR", help="Language models: LoRID's consistency iteration with three "
                 "LoRA runs on one base (intuitive reasoner, knowledge generator, deep reasoner; each an sft run on "
                 "`curate --knowledge` rows): sample IR, KG then DR until IR's and DR's answers agree; accuracy, "
                 "mean iterations, and IR alone / DR alone (greedy)."),
    click.Option(["--lorid-rounds"], type=click.IntRange(min=1), default=20, show_default=True,
                 help="With --lorid: rounds at most per question."),
    click.Option(["--lorid-temperature"], type=click.FloatRange(min=0, min_open=True), default=1.5,
                 show_default=True, help="With --lorid: sampling temperature of the three (the paper's)."),
    click.Option(["--lorid-top-p"], type=click.FloatRange(min=0, max=1, min_open=True), default=0.9,
                 show_default=True, help="With --lorid: nucleus sampling of the three (the paper's)."),
    click.Option(["--lorid-fallback"], type=click.Choice(["majority", "none"]), default="majority",
                 show_default=True, help="With --lorid: the answer when IR and DR never agree: the most frequent "
                 "of all their answers, or none (scored wrong, as the released code does)."),
]

DEMO_METHODS = ("lm (default answers,sft): answers, sft, kd (from scratch); 300 steps on from a shared sft warm "
                "start: sft_more, gkd, rkl_pg, tsd_kd, opsd (on-policy), redi, dpo, simpo (trace pairs), curio_sft, "
                "chunk_sft, and DASD's recipes dasd_low (T=0.6 traces), dasd_high (T=1, 1 of 4 at random), "
                "dasd_sched (low then high), dasd_das (1 of 4 by divergence-aware selection), dasd_mixed "
                "(+ mixed-policy rows).")
