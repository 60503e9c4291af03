import math

import numpy as np
import pytest
import torch

from retort.lm.data.topk import CODE_STEP, decode, encode


def _teacher_topk(p_rows: int, vocab: int, k: int, seed: int = 0, scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    lp = torch.log_softmax(torch.randn(p_rows, vocab, generator=g, dtype=torch.float64) * scale, -1)
    vals, ids = lp.topk(k, -1)
    tail = lp.scatter(-1, ids, -math.inf).logsumexp(-1)
    return lp, ids.numpy(), vals.numpy(), tail.numpy()


@pytest.mark.parametrize("vocab,k", [(50, 7), (49152, 64), (200000, 16)])
def test_roundtrip_keeps_ids_exactly_and_logprobs_to_the_quantisation_step(vocab, k):
    lp, ids, vals, tail = _teacher_topk(13, vocab, k)
    got_ids, got_lp = decode(encode(ids, vals, tail))
    order = np.argsort(ids, 1)
    assert (got_ids == np.take_along_axis(ids, order, 1)).all()
    want = np.take_along_axis(vals, order, 1)
    # log-probs relative to the top one (stored exactly, as code 0) are within half a step; the
    # normalisation shifts whole rows
    top = want.argmax(1)[:, None]
    diff = got_lp - want
    err = diff - np.take_along_axis(diff, top, 1)
    assert np.abs(err).max() <= 0.5 / CODE_STEP + 1e-6
    # the top-k mass comes back at 1 - tail
    top_mass = np.exp(got_lp.astype(np.float64)).sum(1)
    # (the tail is stored to 1/4096 of its log)
    assert np.abs(top_mass - (1 - np.exp(tail))).max() <= np.exp(tail).max() * 0.5 / 2048 + 1e-6


def test_decoded_distribution_is_close_in_kl_and_costs_few_bytes():
    # a peaked teacher over a SmolLM2-sized vocabulary: exact top-64 + uniform tail is the floor,
    # and the stored one adds little to it
    vocab, k = 49152, 64
    lp, ids, vals, tail = _teacher_topk(40, vocab, k, scale=4.0)
    blob = encode(ids, vals, tail)
    assert len(blob) / 40 < 64 * 3 + 2 + 4  # at most 3 bytes per id gap, 1 per code, 2 per tail

    def kl_to_rebuilt(ids_, lps_):
        q = torch.full_like(lp, 0.0)
        for r in range(lp.shape[0]):
            top = torch.as_tensor(np.asarray(lps_[r], dtype=np.float64)).exp()
            q[r] = (1 - top.sum()) / (vocab - k)
            q[r, torch.as_tensor(ids_[r])] = top
        return float((lp.exp() * (lp - q.log())).sum(-1).mean())

    floor = kl_to_rebuilt(ids, vals)
    got = kl_to_rebuilt(*decode(blob))
    assert floor <= got <= floor + 2e-4


def test_edges_no_positions_no_tail_and_tail_near_one():
    ids, lps = decode(encode(np.zeros((0, 4), np.int64), np.zeros((0, 4)), np.zeros(0)))
    assert ids.shape == (0, 4) and lps.shape == (0, 4)
    # k = V: no tail, the stored log-probs are the full distribution
    lp = torch.log_softmax(torch.tensor([[0.0, 1.0, 2.0]], dtype=torch.float64), -1)
    ids, lps = decode(encode([[2, 0, 1]], lp[:, [2, 0, 1]].numpy(), [-math.inf]))
    assert ids.tolist() == [[0, 1, 2]]
    assert np.exp(lps.astype(np.float64)).sum() == pytest.approx(1.0, abs=1e-6)
    assert lps[0] == pytest.approx(lp[0].numpy(), abs=0.5 / CODE_STEP)
    # almost all mass outside the top-k: finite log-probs, tiny top-k mass
    ids, lps = decode(encode([[5]], [[-12.0]], [math.log1p(-math.exp(-12.0))]))
    assert np.isfinite(lps).all() and lps[0, 0] < -10


def test_refuses_bad_input():
    with pytest.raises(ValueError, match="repeat"):
        encode([[3, 3]], [[-1.0, -2.0]], [-3.0])
    with pytest.raises(ValueError, match="expected"):
        encode([[1, 2]], [[-1.0]], [-3.0])
    with pytest.raises(ValueError, match="version"):
        decode(b"\x07abc")
