"""Options in named groups, and their conflict rules as data: a `click.Command` whose `--help` lists
one section per group, and which refuses a conflicting combination of options (a `RetortError`,
exit status 2) before its body runs. `retort curate` declares its options and rules with these."""

from __future__ import annotations

from dataclasses import dataclass

import click

from ...errors import RetortError


class GroupedOption(click.Option):
    """A click option that belongs to one help group (`group=`)."""

    def __init__(self, *args, group: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.group = group


def option(group: str, *decls, **kwargs):
    """`click.option` for an option of `group`."""
    return click.option(*decls, cls=GroupedOption, group=group, **kwargs)


def _names(spec) -> tuple:
    return (spec,) if isinstance(spec, str) else tuple(spec)


@dataclass(frozen=True)
class Rule:
    """One conflict rule. `when`: the options it is about (empty: it always applies); the first of
    them given is `{opt}` in the message. kind "needs": one of `of` must be given too; "excludes":
    none of `of` may be given; "one_at_most": at most one of `when` (`{opts}`: those given, joined
    by " and "). An option in `when`/`of` is "--flag", or "--flag=VALUE" for that value only."""

    kind: str
    when: tuple
    of: tuple
    message: str


def needs(when, of, message: str) -> Rule:
    return Rule("needs", _names(when), _names(of), message)


def one_of(of, message: str) -> Rule:
    return Rule("needs", (), _names(of), message)


def excludes(when, of, message: str) -> Rule:
    return Rule("excludes", _names(when), _names(of), message)


def one_at_most(when, message: str) -> Rule:
    return Rule("one_at_most", _names(when), (), message)


def _given(value) -> bool:
    """Whether an option was given a value that counts (0 does; None, False and "" do not)."""
    return not (value is None or value is False or value == "")


class GroupedCommand(click.Command):
    """A command whose options are `GroupedOption`s of `groups` (help sections, in this order) and
    whose `rules` are checked, in order, before the command runs: the first broken one is the error."""

    def __init__(self, *args, groups: tuple, rules: tuple = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.groups, self.rules = tuple(groups), tuple(rules)
        self.by_flag = {o: p for p in self.params for o in p.opts if o.startswith("--")}
        for p in self.params:
            if isinstance(p, click.Option) and getattr(p, "group", None) not in self.groups:
                raise TypeError(f"{self.name}: option {p.opts[0]} belongs to no group of {self.groups}")
        for rule in self.rules:
            for spec in rule.when + rule.of:
                if spec.split("=", 1)[0] not in self.by_flag:
                    raise TypeError(f"{self.name}: a rule names {spec}, not an option of the command")

    def format_options(self, ctx, formatter) -> None:
        rows = {g: [] for g in self.groups}
        for p in self.get_params(ctx):
            record = p.get_help_record(ctx)
            if record is not None and isinstance(p, click.Option):  # click's own --help joins the last group
                rows[getattr(p, "group", self.groups[-1])].append(record)
        for group, records in rows.items():
            if records:
                with formatter.section(group):
                    formatter.write_dl(records)

    def is_given(self, params: dict, spec: str) -> bool:
        flag, _, want = spec.partition("=")
        value = params[self.by_flag[flag].name]
        return _given(value) and (not want or str(value) == want)

    def check_rules(self, params: dict) -> None:
        """Raise the first broken rule's message (`RetortError`)."""
        for rule in self.rules:
            when = [s for s in rule.when if self.is_given(params, s)]
            if rule.kind == "one_at_most":
                broken = len(when) > 1
            elif rule.when and not when:
                continue
            elif rule.kind == "needs":
                broken = not any(self.is_given(params, s) for s in rule.of)
            else:
                broken = any(self.is_given(params, s) for s in rule.of)
            if broken:
                raise RetortError(rule.message.format(opt=when[0] if when else "", opts=" and ".join(when)))

    def invoke(self, ctx):
        self.check_rules(ctx.params)
        return super().invoke(ctx)
