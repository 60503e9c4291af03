"""Score given sequences with a model: the log-prob of each completion token and, optionally, the
model's top-k log-probs at each completion position (what offline KD needs from a teacher).

One teacher-forced forward pass per batch; log_softmax in float32 over the full vocabulary. The
log-probs are those of the model's own distribution at temperature 1, whatever temperature the
completions were sampled at.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class Scored:
    logprobs: list[float]                      # one per completion token
    topk_ids: Optional[list[list[int]]] = None  # [n_tokens][k]
    topk_logprobs: Optional[list[list[float]]] = None
    topk_tail: Optional[list[float]] = None     # log of the mass outside the top-k, per token
    entropy: Optional[list[float]] = None       # entropy (nats) of the next-token distribution, per token


@torch.no_grad()
def score(model, prompt_ids: list[list[int]], completion_ids: list[list[int]], *, topk: int = 0,
          batch_size: int = 16, pad_id: int = 0, entropy: bool = False) -> list[Scored]:
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[Scored] = []
    for start in range(0, len(prompt_ids), batch_size):
        ps, cs = prompt_ids[start:start + batch_size], completion_ids[start:start + batch_size]
        seqs = [p + c for p, c in zip(ps, cs)]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s)
            mask[i, :len(s)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        for i, (p, c) in enumerate(zip(ps, cs)):
            if not c:
                out.append(Scored([], *([[], [], []] if topk else [None, None, None]), [] if entropy else None))
                continue
            # Position t predicts token t+1: completion tokens are predicted from len(p)-1 on.
            rows = torch.log_softmax(logits[i, len(p) - 1:len(p) - 1 + len(c)].float(), dim=-1)
            target = torch.tensor(c, device=rows.device)
            lp = rows.gather(1, target[:, None])[:, 0]
            scored = Scored(lp.tolist())
            if entropy:
                scored.entropy = (-(rows.exp() * rows).nansum(-1)).tolist()
            if topk:
                vals, idx = rows.topk(min(topk, rows.shape[-1]), dim=-1)
                scored.topk_ids, scored.topk_logprobs = idx.tolist(), vals.tolist()
                # the tail's log-mass from the log-probs outside the top-k (exact, unlike 1 - sum)
                scored.topk_tail = rows.scatter(-1, idx, float("-inf")).logsumexp(-1).tolist()
            out.append(scored)
    model.train(was_training)
    return out
