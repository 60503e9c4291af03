"""Slow, obvious float64 reference implementations (loops over positions, explicit sums)."""

import math

import torch


def _dist(logits_row, temperature):
    z = [float(v) / temperature for v in logits_row]
    m = max(z)
    e = [math.exp(v - m) for v in z]
    s = sum(e)
    return [v / s for v in e]


def _kl(p, q):
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q) if pi > 0)


def divergence(name, student_logits, teacher_logits, temperature=1.0, beta=0.5, alpha=0.1):
    """Per-position divergence, float64, by explicit loops. (..., V) -> (...)."""
    shape = student_logits.shape[:-1]
    s2 = student_logits.reshape(-1, student_logits.shape[-1]).tolist()
    t2 = teacher_logits.reshape(-1, teacher_logits.shape[-1]).tolist()
    out = []
    for srow, trow in zip(s2, t2):
        ps, pt = _dist(srow, temperature), _dist(trow, temperature)
        if name == "forward_kl":
            v = _kl(pt, ps)
        elif name == "reverse_kl":
            v = _kl(ps, pt)
        elif name == "jsd":
            if beta == 0:
                v = _kl(pt, ps)
            elif beta == 1:
                v = _kl(ps, pt)
            else:
                m = [beta * a + (1 - beta) * b for a, b in zip(pt, ps)]
                v = beta * _kl(pt, m) + (1 - beta) * _kl(ps, m)
        elif name == "skew_forward_kl":
            v = _kl(pt, [alpha * a + (1 - alpha) * b for a, b in zip(pt, ps)])
        elif name == "skew_reverse_kl":
            v = _kl(ps, [alpha * a + (1 - alpha) * b for a, b in zip(ps, pt)])
        elif name == "tvd":
            v = 0.5 * sum(abs(a - b) for a, b in zip(ps, pt))
        else:
            raise ValueError(name)
        out.append(v)
    return torch.tensor(out, dtype=torch.float64).reshape(shape)


def sequence_logp(model, ids, n_prompt):
    """Summed log-prob of ids[n_prompt:] given the rest, one unpadded sequence, and its length."""
    lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    return sum(lp[t - 1, ids[t]] for t in range(n_prompt, len(ids))), len(ids) - n_prompt


def pair_loss(name, model, pairs, ref_model=None, alpha=0.8, beta=0.1, gamma=1.0):
    """Mean over (prompt, chosen, rejected) id-list triples of the REDI / DPO / SimPO loss, each
    sequence scored on its own (no padding), by the papers' formulas."""
    total = 0.0
    for p, w, l_ in pairs:
        lw, nw = sequence_logp(model, p + w, len(p))
        ll, nl = sequence_logp(model, p + l_, len(p))
        if name == "redi":
            total = total - lw / nw + alpha * ll / nl
        elif name == "simpo":
            total = total - torch.nn.functional.logsigmoid(beta * (lw / nw - ll / nl) - gamma)
        elif name == "dpo":
            with torch.no_grad():
                rw, _ = sequence_logp(ref_model, p + w, len(p))
                rl, _ = sequence_logp(ref_model, p + l_, len(p))
            total = total - torch.nn.functional.logsigmoid(beta * ((lw - rw) - (ll - rl)))
        else:
            raise ValueError(name)
    return total / len(pairs)
