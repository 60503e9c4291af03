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


def _completion_logits(model, prompt, completion):
    """(len(completion), V) float64 next-token logits at the completion positions of one unpadded
    sequence: row t predicts completion[t]."""
    logits = model(torch.tensor([prompt + completion])).logits[0].double()
    return [logits[len(prompt) + t - 1] for t in range(len(completion))]


def _entropy_of(z):
    """H(softmax(z)) = -sum_v p_v log p_v, explicitly."""
    log_z = torch.log(torch.exp(z - z.max()).sum()) + z.max()
    logp = z - log_z
    return -(torch.exp(logp) * logp).sum()


def _gjsd(zs, zt, beta, temperature):
    """Generalized JSD of TRL/GKD: beta KL(P_T || M) + (1 - beta) KL(P_S || M), M = beta P_T + (1 - beta) P_S;
    beta = 0 is KL(P_T || P_S) and beta = 1 is KL(P_S || P_T). Both logits divided by `temperature`."""
    ps = torch.softmax(zs / temperature, 0)
    pt = torch.softmax(zt / temperature, 0)
    lps, lpt = torch.log(ps), torch.log(pt)
    if beta == 0:
        return (pt * (lpt - lps)).sum()
    if beta == 1:
        return (ps * (lps - lpt)).sum()
    mix = beta * pt + (1 - beta) * ps
    return beta * (pt * (lpt - torch.log(mix))).sum() + (1 - beta) * (ps * (lps - torch.log(mix))).sum()


def _quantile(values, q):
    """Linear-interpolation quantile of a list of floats (numpy's/torch's default)."""
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (pos - lo) * (v[hi] - v[lo])


def _share_prefix(h, threshold):
    """1 + the first index at which the cumulative share of sum(h) reaches `threshold` (len(h) if never)."""
    total, run = sum(h), 0.0
    for i, x in enumerate(h):
        run += x
        if run / total >= threshold:
            return i + 1
    return len(h)


def tsd_kd_loss(student, teacher, seqs, *, beta=0.9, alpha=0.1, entropy_weight=1.0, threshold=0.1, top_k=10,
                weighting="soft", listmle_direction="standard", prefix="batch", temperature=1.0):
    """Summed TSD-KD loss ("Explain in Your Own Words: Improving Reasoning via Token-Selective Dual Knowledge Distillation") over (prompt ids, completion ids) pairs, each sequence
    scored alone (no padding), per position, in float64, with N the number of completion tokens:

        L = sum_t w_t GJSD_beta(P_T,t || P_S,t) + N * (entropy_weight * L_ent + alpha * L_ind)

    w_t = sigmoid(H_S - H_T) (soft), 1[H_S > H_T] (hard) or 1 (none), no gradient;
    L_ent = mean of H_S,t over the completion tokens with H_S,t >= the `threshold` quantile of them;
    L_ind = mean over the early tokens (completion index < d, d from the cumulative entropy share of
    the whole batch in order, or of each sequence) of the ListMLE loss of the student's top-K logits
    ordered by the teacher's logits, centred. Entropies at tau = 1."""
    toks = []  # (sequence, completion index, student logits, teacher logits)
    for b, (p, c) in enumerate(seqs):
        zs = _completion_logits(student, p, c)
        with torch.no_grad():
            zt = _completion_logits(teacher, p, c)
        for t in range(len(c)):
            toks.append((b, t, zs[t], zt[t]))
    n = len(toks)
    h_s = [_entropy_of(zs) for _, _, zs, _ in toks]
    h_t = [float(_entropy_of(zt)) for _, _, _, zt in toks]

    direct = 0.0
    for i, (_, _, zs, zt) in enumerate(toks):
        diff = h_s[i].item() - h_t[i]
        if weighting == "soft":
            w = 1.0 / (1.0 + math.exp(-diff))
        elif weighting == "hard":
            w = 1.0 if diff > 0 else 0.0
        else:
            w = 1.0
        direct = direct + w * _gjsd(zs, zt, beta, temperature)

    q = _quantile([h.item() for h in h_s], threshold)
    kept = [h for h in h_s if h.item() >= q]
    ent = sum(kept) / len(kept)

    if prefix == "batch":
        d_all = _share_prefix([h.item() for h in h_s], threshold)
        d = {b: d_all for b in range(len(seqs))}
    else:
        d = {b: _share_prefix([h.item() for (bb, _, _, _), h in zip(toks, h_s) if bb == b], threshold)
             for b in range(len(seqs)) if any(bb == b for bb, _, _, _ in toks)}
    ranks = []
    for b, t, zs, zt in toks:
        if t >= d[b]:
            continue
        k = min(top_k, zs.shape[0])
        cand = sorted(range(zs.shape[0]), key=lambda v: -zs[v].item())[:k]  # the student's top-K ids
        cand = sorted(cand, key=lambda v: -zt[v].item())                    # in the teacher's order
        s = [zs[v] for v in cand]
        mean = sum(s) / k
        s = [x - mean for x in s]
        l_t = 0.0
        for j in range(k):
            rest = s[j:] if listmle_direction == "standard" else s[:j + 1]
            l_t = l_t - (s[j] - torch.log(sum(torch.exp(x) for x in rest)))
        ranks.append(l_t)
    ind = sum(ranks) / len(ranks) if ranks else 0.0
    return direct + n * (entropy_weight * ent + alpha * ind)


# --------------------------------------------------------------------------- classifier losses


def hinton_kd(student_row, teacher_row, temperature):
    """T^2 KL(p_T || p_S) for one example, float64 by loops."""
    return temperature**2 * _kl(_dist(teacher_row, temperature), _dist(student_row, temperature))


def dkd(student_row, teacher_row, y, alpha, beta, temperature):
    """Decoupled KD for one example, from the paper's definitions (eq. 1-7), float64 by loops."""
    ps, pt = _dist(student_row, temperature), _dist(teacher_row, temperature)
    bs, bt = [ps[y], 1 - ps[y]], [pt[y], 1 - pt[y]]
    hs = [p / (1 - ps[y]) for i, p in enumerate(ps) if i != y]
    ht = [p / (1 - pt[y]) for i, p in enumerate(pt) if i != y]
    return temperature**2 * (alpha * _kl(bt, bs) + beta * _kl(ht, hs))


def plackett_luce(student_row, teacher_row, y, temperature, weights="teacher"):
    """PLD for one example as the paper's Appendix C listing writes it: ascending teacher order
    with the true label appended last, a forward running log-sum-exp (float64, by loops)."""
    C = len(student_row)
    rest = sorted((i for i in range(C) if i != y), key=lambda i: (teacher_row[i], -i))  # ascending, ties stable
    order = rest + [y]  # the mirror image of (y, descending)
    q = _dist(teacher_row, temperature)
    total, run = 0.0, None
    for pos, c in enumerate(order):
        s = float(student_row[c])
        run = s if run is None else max(run, s) + math.log(math.exp(run - max(run, s)) + math.exp(s - max(run, s)))
        k = C - 1 - pos  # this class's place in the descending order, 0 = first
        w = q[c] if weights == "teacher" else (1.0 / C if weights == "uniform" else float(k == 0))
        total += w * (run - s)
    return total


def ground_truth_mse(student_row, teacher_row, y, alpha):
    p, q = _dist(student_row, 1.0), _dist(teacher_row, 1.0)
    C = len(p)
    return sum(alpha * (pi - (1.0 if i == y else 0.0)) ** 2 + (1 - alpha) * (pi - qi) ** 2
               for i, (pi, qi) in enumerate(zip(p, q))) / C


def soft_target_kl(student_row, target_row, temperature):
    return temperature**2 * _kl(list(target_row), _dist(student_row, temperature))


def distribution_matching(x, x_real, x_fake):
    """DMD2's generator loss written out per sample and element (float64): grad = (fake - real) /
    mean|x - real|; L = 1/2 mean (x - sg(x - grad))^2, i.e. 1/2 mean grad^2 in value, grad / dims
    in gradient."""
    import torch

    out = []
    for i in range(len(x)):
        xi, ri, fi = x[i].reshape(-1), x_real[i].reshape(-1).double(), x_fake[i].reshape(-1).double()
        w = sum(abs(float(a) - float(b)) for a, b in zip(xi.detach(), ri)) / len(xi)
        grad = (fi - ri) / w
        target = (xi.detach() - grad).detach()
        out.append(0.5 * ((xi - target) ** 2).mean())
    return torch.stack(out)


def edm_denoising(pred, x0, sigma, sigma_data):
    import torch

    return torch.stack([(s**2 + sigma_data**2) / (s * sigma_data) ** 2 * ((p - t) ** 2).mean()
                        for p, t, s in zip(pred.double(), x0.double(), sigma.double())])


def hidden_rows(name, student, teacher):
    """Per-row hidden-state loss, float64 by explicit loops: mean squared difference, or 1 - cosine. (N, D) -> (N,)."""
    out = []
    for s, t in zip(student.double().tolist(), teacher.double().tolist()):
        if name == "mse":
            out.append(sum((a - b) ** 2 for a, b in zip(s, t)) / len(s))
        else:
            dot = sum(a * b for a, b in zip(s, t))
            out.append(1.0 - dot / (math.sqrt(sum(a * a for a in s)) * math.sqrt(sum(b * b for b in t))))
    return torch.tensor(out, dtype=torch.float64)


def uld(student_logits_row, teacher_logits_row, temperature=1.0):
    """ULD (Boizard et al. 2024): L1 between the two probability lists sorted descending, the shorter
    padded with zeros. One position, float64, written out."""
    ps = sorted((float(x) for x in _dist(student_logits_row, temperature)), reverse=True)
    pt = sorted((float(x) for x in _dist(teacher_logits_row, temperature)), reverse=True)
    n = max(len(ps), len(pt))
    ps += [0.0] * (n - len(ps))
    pt += [0.0] * (n - len(pt))
    return sum(abs(a - b) for a, b in zip(ps, pt))


def hybrid_uld(student_logits_row, teacher_logits_row, pairs, unmatched_weight=1.0, temperature=1.0):
    """GOLD's hybrid: forward-KL terms over the (student id, teacher id) `pairs`, plus
    `unmatched_weight` * ULD over the ids in no pair. One position, float64."""
    ps = [float(x) for x in _dist(student_logits_row, temperature)]
    pt = [float(x) for x in _dist(teacher_logits_row, temperature)]
    matched = sum(pt[t] * (math.log(pt[t]) - math.log(ps[s])) for s, t in pairs)
    s_in, t_in = {s for s, _ in pairs}, {t for _, t in pairs}
    rs = sorted((p for i, p in enumerate(ps) if i not in s_in), reverse=True)
    rt = sorted((p for i, p in enumerate(pt) if i not in t_in), reverse=True)
    n = max(len(rs), len(rt))
    rs += [0.0] * (n - len(rs))
    rt += [0.0] * (n - len(rt))
    return matched + unmatched_weight * sum(abs(a - b) for a, b in zip(rs, rt))
