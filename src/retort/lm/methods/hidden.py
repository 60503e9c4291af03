"""A model's last hidden states, and log-probs formed from them: what the fused losses read instead of
full logits (`retort.losses.fused`), for the student and for a local teacher alike."""

from __future__ import annotations

from typing import Optional

import torch


def unwrap(model):
    """The module inside a DDP (or similar) wrapper, or `model` itself."""
    return getattr(model, "module", model)


def last_hidden(model, batch):
    """Final (normed) hidden states through the model's own forward (so DDP hooks run), with
    logits computed for the last position only."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True,
                logits_to_keep=1)
    return out.hidden_states[-1]


def logprobs_from_hidden(hidden, weight, labels, *, temperature: float = 1.0, vocab: Optional[int] = None):
    """log softmax(hidden @ weight.T / T)[label] per row, float32, chunk by chunk; no gradient."""
    weight = weight[:vocab] if vocab else weight
    out = torch.empty(labels.shape[0], dtype=torch.float32, device=hidden.device)
    step = max(16, (1 << 22) // weight.shape[0])
    with torch.no_grad():
        for s in range(0, labels.shape[0], step):
            z = (hidden[s:s + step] @ weight.T.to(hidden.dtype)).float() / temperature
            out[s:s + step] = z.gather(1, labels[s:s + step, None])[:, 0] - torch.logsumexp(z, -1)
    return out


__all__ = ["last_hidden", "logprobs_from_hidden", "unwrap"]
