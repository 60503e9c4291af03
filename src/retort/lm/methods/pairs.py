"""Shared machinery of the methods that learn from positive/negative trace pairs (`redi`, `dpo`,
`simpo`): the pairs of `retort.lm.data.pairs` (the i-th correct sample of a prompt with its i-th
incorrect one, `pairs_per_prompt` at most) from a trace set (`data.source=traces`), batched as
the chosen completions followed by the rejected ones, and each sequence's summed completion
log-probability log pi(y|x) with its token count |y| (EOS included when the completion stopped,
as REDI's code counts it). The loss is summed over pairs and normalised by the global number of
pairs (the loop's contract), i.e. averaged over pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

from ...config import param
from ..data.collate import IGNORE, Encoded, collate
from ..data.traces import read_manifest, read_traces
from ...errors import ConfigError, DataError
from .base import BatchPlan, OffPolicy, sequence_logps
from ..data.collate import TraceEncoder
from ..tasks import Prompt


@dataclass
class Pair(Encoded):
    """The chosen (correct) completion as the Encoded itself; the rejected one beside it."""

    rejected: Optional[Encoded] = None


@dataclass
class PairConfig:
    pairs_per_prompt: int = param(1, "pairs per prompt (0: as many as it has correct/incorrect samples to "
                                  "pair off)", lo=0)


def pair_examples(data, tok, per_prompt: int) -> list[Pair]:
    from ..data.pairs import pair_rows

    if data.source != "traces" or not data.traces:
        raise ConfigError("pair methods learn from a trace set with correct and incorrect samples: "
                          "set data.source=traces data.traces=DIR")
    manifest = read_manifest(data.traces)
    cols = read_traces(data.traces, columns=["prompt_id", "sample_idx", "prompt", "completion", "completion_ids",
                                              "correct", "finish_reason", "reference"]).to_pydict()
    matched = pair_rows(cols["prompt_id"], cols["sample_idx"], cols["correct"], per_prompt)
    if not matched:
        raise DataError(f"{data.traces}: no prompt has both a correct and an incorrect trace, so there are no "
                        "pairs (sample more per prompt: sampling.n >= 2)")
    encode = TraceEncoder(manifest, cols, tok)
    out = []
    for good, bad in matched[:data.n_train]:
        (p, cw), (_, cl) = encode(good), encode(bad)
        if len(p) + max(len(cw), len(cl)) > data.max_len:
            continue
        out.append(Pair(p + cw, [IGNORE] * len(p) + cw, prompt=Prompt(cols["prompt"][good], encode.system), answer=cols["reference"][good],
                        rejected=Encoded(p + cl, [IGNORE] * len(p) + cl)))
    if not out:
        raise DataError(f"{data.traces}: every pair is longer than data.max_len={data.max_len}")
    return out


def per_token(logp, n):
    """log pi(y) / |y|: a sequence's mean completion-token log-prob (0 tokens counts as 1)."""
    return logp / n.clamp_min(1)


def pair_metrics(chosen, rejected, margin=None) -> dict:
    """What every pair method logs: per-token log-probs of both sides (and the reward margin and
    pair accuracy, for the methods that have a margin)."""
    out = {"logp_chosen": float(chosen.detach().mean()), "logp_rejected": float(rejected.detach().mean())}
    if margin is not None:
        out.update(margin=float(margin.detach().mean()), pair_accuracy=float((margin > 0).float().mean()))
    return out


class PairMethod(OffPolicy):
    def examples(self):
        return pair_examples(self.ctx.run.data, self.ctx.tokenizer, self.cfg.pairs_per_prompt)

    def batches(self, plan: BatchPlan) -> Iterator[dict]:
        pad = self.ctx.tokenizer.pad_token_id
        for _, items in self.example_batches(plan):
            batch = collate(list(items) + [x.rejected for x in items], pad)
            batch["n_pairs"] = len(items)
            yield batch

    def count(self, batch) -> int:
        return int(batch["n_pairs"])

    def private_records(self) -> int:
        raise ConfigError(f"privacy.*: method {self.name} cannot train under DP-SGD: its loss compares a chosen and "
                          "a rejected answer, so a term reads two rows (pair losses are not supported)")

    def logps(self, model, batch):
        """((logp_w, |y_w|), (logp_l, |y_l|)) for the pairs of the batch."""
        lp, n = sequence_logps(model, batch)
        k = batch["n_pairs"]
        return (lp[:k], n[:k]), (lp[k:], n[k:])
