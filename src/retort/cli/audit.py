"""`retort audit`: what trained models leak (canary exposure, membership inference), and
`retort audit canaries`: a private corpus with canaries to measure it on."""

from __future__ import annotations

import json

import click

from ..options import CONTEXT, config_option, console, overrides_arg

DEFAULT = "models"


class _AuditGroup(click.Group):
    """`retort audit [OPTIONS]` runs `audit models`; `retort audit canaries ...` the corpus writer."""

    def parse_args(self, ctx, args):
        if not args or (args[0] not in self.commands and args[0] not in ("-h", "--help")):
            args = [DEFAULT, *args]
        return super().parse_args(ctx, args)


@click.group(cls=_AuditGroup, context_settings=CONTEXT)
def audit():
    """Measure what a trained student leaks about its training records: canary exposure (Carlini et
    al.'s Secret Sharer: the rank of each inserted secret among every candidate, exact up to
    --max-exact candidates) and membership inference (loss-threshold attack, and one calibrated by
    a --reference model: ROC AUC, TPR at 1% and 0.1% FPR). `retort audit -m ...` is `retort audit
    models -m ...`; `retort audit canaries` writes a corpus with canaries to train on.

    \b
    retort audit canaries --format "my account number is {secret}" --length 6 --into notes.jsonl --out private.jsonl
    retort audit -m runs/dp --canaries private.jsonl.canaries.json --reference teacher
    retort audit -m s=runs/sft/model --members train.jsonl --nonmembers held.jsonl --out audit.json
    retort audit track=classify -m runs/kd -m runs/dp_kd --reference builtin:teacher
    """


@audit.command(name="models", context_settings=CONTEXT)
@config_option
@click.option("--model", "-m", "models", multiple=True,
              help="A run directory (its model/, and its training rows as members) or a model as `retort eval -m` "
                   "takes it; repeatable; LABEL=PATH labels it.")
@click.option("--canaries", type=click.Path(dir_okay=False),
              help="Canary manifest (`retort audit canaries` writes it): each secret's exposure (language models).")
@click.option("--members", help="Language models: rows the model trained on (.txt, or .jsonl with text or prompt + "
              "completion/solution/answer); default: a run directory's own training rows. Classifiers: a split "
              "(default train).")
@click.option("--nonmembers", help="Held-out rows of the same distribution (as --members); default: the run's task's "
              "test split.")
@click.option("--reference", help="A model trained on other data (or `teacher`: the run's teacher) that calibrates "
              "the attack: score = its loss - the model's.")
@click.option("--n", "n", type=click.IntRange(min=1), default=1000, show_default=True,
              help="At most this many members and this many non-members (drawn with --seed).")
@click.option("--max-exact", type=click.IntRange(min=1), default=10 ** 6, show_default=True,
              help="Rank exactly over canary spaces up to this size; larger ones get Carlini et al.'s skew-normal "
                   "estimate.")
@click.option("--samples", type=click.IntRange(min=100), default=10 ** 5, show_default=True,
              help="Candidates drawn for the skew-normal estimate.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False),
              help="Write the results JSON here (default: audit.json in each run directory audited).")
@overrides_arg
def models_cmd(config_file, models, canaries, members, nonmembers, reference, n, max_exact, samples, seed, out,
               overrides):
    """Audit models: canary exposure and membership inference, printed and written as JSON."""
    from .. import api
    from ..audit import results_table

    con = console()
    results = api.audit(models, canaries=canaries, members=members, nonmembers=nonmembers, reference=reference, n=n,
                        max_exact=max_exact, samples=samples, seed=seed, out=out, console=con,
                        config_file=config_file, overrides=list(overrides))
    con.print(results_table(results))


def _repeats(ctx, param, value):
    try:
        return [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected whole numbers separated by commas, e.g. 1,5,20") from None


def _row(ctx, param, value):
    if value is None:
        return None
    try:
        row = json.loads(value)
    except ValueError as e:
        raise click.BadParameter(f"not JSON ({e})") from None
    if not isinstance(row, dict):
        raise click.BadParameter("expected a JSON object, e.g. '{\"prompt\": \"Write the note.\"}'")
    return row


@audit.command(name="canaries", context_settings=CONTEXT)
@click.option("--format", "format_", required=True, help="The canary text with one {secret} slot.")
@click.option("--length", type=int, required=True, help="Symbols in a secret (the space holds alphabet^length).")
@click.option("--alphabet", default="0123456789", show_default=True, help="The symbols a secret is drawn from.")
@click.option("--repeats", default="1,5,20", show_default=True, callback=_repeats,
              help="How many times each group of canaries is inserted.")
@click.option("--per-repeat", type=int, default=1, show_default=True, help="Canaries per repeat count.")
@click.option("--controls", type=int, default=1, show_default=True,
              help="Secrets drawn but never inserted (the exposure of an unseen secret, for comparison).")
@click.option("--into", "source", type=click.Path(dir_okay=False), help="The corpus to insert them into (.txt: a "
              "record a line; .jsonl: an object a line); without it the output holds the canary records only.")
@click.option("--field", default="text", show_default=True, help=".jsonl: the field a canary row's text goes in.")
@click.option("--row", callback=_row, help=".jsonl: the other fields of a canary row, as a JSON object.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The new corpus (.txt or .jsonl).")
@click.option("--manifest", type=click.Path(dir_okay=False), help="Where the manifest goes (default OUT.canaries.json).")
def canaries_cmd(format_, length, alphabet, repeats, per_repeat, controls, source, field, row, seed, out, manifest):
    """Write a corpus with canaries inserted (each secret drawn uniformly from the space, each
    canary `--repeats` times at random positions) and a manifest recording every secret and how
    often it was inserted; `retort audit --canaries MANIFEST` measures their exposure."""
    from .. import api

    man = api.canaries(out, format_, length, alphabet=alphabet, repeats=repeats, per_repeat=per_repeat,
                       controls=controls, source=source, field=field, row=row, seed=seed, manifest=manifest)
    inserted = sum(c["repeats"] for c in man["canaries"])
    console().print(f"canaries: {len(man['canaries'])} secrets of {man['space_size']:,} possible, {inserted} records "
                    f"inserted among {man['source_records']}; corpus {man['corpus']}, manifest {man['manifest']}")


def command(name="audit"):
    return audit
