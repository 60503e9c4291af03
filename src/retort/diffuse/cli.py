"""The options the diffusion track adds to `retort eval`, and its line in `retort demo --help`.
Imports click only."""

from __future__ import annotations

import click

COMMANDS: dict = {}
EVAL_OPTIONS = [
    click.Option(["--hybrid"], type=click.IntRange(min=1), default=None, metavar="K",
                 help="Generators: also sample each multi-step student with the teacher's first K steps (diversity "
                      "distillation's hybrid inference), and show every model's first-step predictions for 16 "
                      "noises (its DT-visualisation: spread and distance to the data)."),
]
DEMO_METHODS = ("diffuse (default dmd2,dmd,cd,dmd2-digits): dmd2, dmd, cd (ring), dmd2-digits; also denoise, gdd, "
                "uni_instruct, phased_dmd (ring), msd (classes), onpolicy_dmd (ring-seq).")
