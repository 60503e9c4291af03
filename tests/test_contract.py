"""The method contract (`retort.contract`): which micro-batches are this process's, and the hooks a
track or the loop calls are declared on `Method` with their defaults."""

from itertools import islice

import pytest

from retort.contract import STUDENT, BatchPlan, Method, micro_batches


def _filtered(plan, n):
    """The classifier and diffusion tracks' former stream: every global micro-batch k from the start
    step's, kept where its place in the step belongs to this rank."""
    per_step = plan.accum * plan.world
    k, out = plan.start_step * per_step, []
    while len(out) < n:
        if (k % per_step) % plan.world == plan.rank:
            out.append((k, k // per_step))
        k += 1
    return out


def _chunks(plan, n):
    """The language-model track's former stream: chunk (step * accum + a) * world + rank."""
    out, step = [], plan.start_step
    while len(out) < n:
        for a in range(plan.accum):
            out.append(((step * plan.accum + a) * plan.world + plan.rank, step))
        step += 1
    return out[:n]


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("accum", [1, 2, 3])
@pytest.mark.parametrize("start_step", [0, 1, 7])
def test_micro_batches_are_the_streams_the_tracks_drew_before(world, accum, start_step):
    for rank in range(world):
        plan = BatchPlan(rank, world, accum, 8, start_step, 0)
        got = list(islice(micro_batches(plan), 40))
        assert got == _filtered(plan, 40) == _chunks(plan, 40)


def test_the_processes_share_out_every_micro_batch_once():
    world, accum = 3, 2
    seen = sorted(k for r in range(world) for k, _ in islice(micro_batches(BatchPlan(r, world, accum, 8, 5, 0)), 12))
    assert seen == list(range(5 * accum * world, 5 * accum * world + 36))


def test_the_hooks_have_defaults():
    class Ctx:
        student = None

    m = Method(Ctx(), Method.Config())
    assert Method.check_task(None, None) is None and Method.default_student(None, None) is None
    model = object()
    assert Method.prepare_student(model, None, None, 0) is model
    assert Method.student_settings(None, None, {"a": 1}) == {"a": 1}
    assert m.teacher_needs() == () and m.needs_teacher_weights() is False and m.owned() == {}
    m.owned_modules["critic"] = object()
    assert set(m.trains(0)) == {STUDENT, "critic"}
    assert m.step == 0 and m.student() is None
    m.on_step(3)
    assert m.step == 3
    m.bind(lambda: model)
    assert m.student() is model and m.ctx.student() is model
