"""tsd_kd: the full loss and its gradient against the per-sequence, per-position float64 reference of
tests/reference.py, on a padded batch of odd-length prompts and completions (one row with no
completion at all), for every option of the Config that changes the math."""

import pytest
import torch

from conftest import tiny_overrides
from reference import tsd_kd_loss
from retort.lm.teachers import LocalTeacher
from retort.config import load_config
from retort.lm.config import ModelConfig, TrainRun
from retort.lm.data.collate import IGNORE, Encoded, collate
from retort.lm.methods import METHODS
from retort.lm.methods.base import MethodContext
from retort.lm.models import load_model
from retort.lm.tasks import get_task

# (prompt length, completion length); the third row is prompt only (a rollout the gate dropped)
SHAPES = [(3, 6), (7, 3), (2, 0), (4, 9), (5, 1)]


def _models():
    student, tok = load_model(ModelConfig(name="preset:nano"), seed=5)
    teacher, t_tok = load_model(ModelConfig(name="preset:nano"), seed=123)
    with torch.no_grad():
        for p in teacher.parameters():
            p.mul_(5.5)
        for p in student.parameters():
            p.mul_(5)  # peaked, unequal entropies: H_S > H_T at about 60% of the tokens
    return student.double(), teacher.double().eval().requires_grad_(False), tok, t_tok


def _method(tmp_path, student, teacher, tok, t_tok, **cfg):
    run = load_config(TrainRun, None, tiny_overrides(tmp_path / "r", **{"method": "tsd_kd",
                                                                         "teacher.name": "preset:nano"}))
    ctx = MethodContext(run=run, task=get_task(run.task), tokenizer=tok, load_teacher=lambda: LocalTeacher("t", teacher, t_tok),
                        student=lambda: student)
    cls = METHODS["tsd_kd"]
    return cls(ctx, cls.Config(**cfg))


def _seqs(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = lambda n: torch.randint(4, 100, (n,), generator=g).tolist()  # noqa: E731
    return [([1, *ids(n_p - 1)], ids(n_c)) for n_p, n_c in SHAPES]


CONFIGS = {
    "defaults": {},
    "hard": {"weighting": "hard"},
    "none": {"weighting": "none"},
    "no_entropy": {"entropy_weight": 0.0},
    "as_released": {"listmle_direction": "as_released"},
    "sequence_prefix": {"prefix": "sequence"},
    "sequence_prefix_as_released": {"prefix": "sequence", "listmle_direction": "as_released", "top_k": 7},
    "wide": {"threshold": 0.45, "alpha": 0.7, "entropy_weight": 0.3, "beta": 0.5, "top_k": 5},
    "forward_kl_tempered": {"beta": 0.0, "temperature": 0.7, "weighting": "hard", "prefix": "sequence"},
    "reverse_kl": {"beta": 1.0, "threshold": 0.3},
}


@pytest.mark.parametrize("cfg", list(CONFIGS.values()), ids=list(CONFIGS))
def test_loss_and_gradient_match_the_float64_reference(tmp_path, cfg):
    student, teacher, tok, t_tok = _models()
    method = _method(tmp_path, student, teacher, tok, t_tok, **cfg)
    seqs = _seqs()
    batch = collate([Encoded(p + c, [IGNORE] * len(p) + c) for p, c in seqs], tok.pad_token_id)
    assert batch["input_ids"].shape == (5, 13) and (batch["attention_mask"] == 0).any()

    out = method.loss(student, batch)
    assert out.count == method.count(batch) == sum(len(c) for _, c in seqs) == 19
    out.loss.backward()
    got = [p.grad.clone() for p in student.parameters()]
    student.zero_grad()

    c = method.cfg
    want = tsd_kd_loss(student, teacher, seqs, beta=c.beta, alpha=c.alpha, entropy_weight=c.entropy_weight,
                       threshold=c.threshold, top_k=c.top_k, weighting=c.weighting,
                       listmle_direction=c.listmle_direction, prefix=c.prefix, temperature=c.temperature)
    want.backward()
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-10, abs=1e-12)
    for a, p in zip(got, student.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-8, atol=1e-10)
