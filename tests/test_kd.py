import json
from pathlib import Path

import pytest
import torch
from conftest import peaked_teacher, tiny_overrides

from retort.config import load_config
from retort.errors import ConfigError
from retort.lm.config import ModelConfig, TrainRun
from retort.lm.methods.hidden import last_hidden
from retort.lm.models import load_model
from retort.lm.teachers import LocalTeacher
from retort.train import train


def test_last_hidden_is_what_the_lm_head_reads():
    model, tok = load_model(ModelConfig(name="preset:nano"), seed=0)
    batch = {"input_ids": torch.randint(3, 90, (2, 7)), "attention_mask": torch.ones(2, 7, dtype=torch.long)}
    h = last_hidden(model, batch)
    full = model(**batch).logits
    assert torch.allclose(model.get_output_embeddings()(h), full, atol=1e-5)



def _kd_rows(tmp_path, steps, **args):
    run = load_config(TrainRun, None, tiny_overrides(tmp_path / "r", steps=steps, **{
        "method": "kd", "teacher.name": peaked_teacher(tmp_path / "t"), "seed": 1, "train.lr": 0.02,
        "train.batch_size": 8, "data.n_train": 128, **args}))
    train(run)
    return [json.loads(l) for l in (Path(run.out) / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]


@pytest.mark.parametrize("divergence", ["forward_kl", "jsd", "reverse_kl"])
def test_kd_loss_falls(tmp_path, divergence):
    rows = _kd_rows(tmp_path, 30, **{"method_args.divergence": divergence})
    assert rows[-1]["kd"] < 0.6 * rows[0]["kd"]


def test_kd_logs_both_terms_with_documented_scale(tmp_path):
    rows = _kd_rows(tmp_path, 3, **{"method_args.ce_weight": 0.5, "method_args.temperature": 2.0})
    assert all("kd" in r and "ce" in r for r in rows)
    # the loss is the weighted sum of the two per-token terms, T^2 = 4 on kd
    assert rows[0]["loss"] == pytest.approx(4.0 * rows[0]["kd"] + 0.5 * rows[0]["ce"], rel=1e-4)


def test_kd_rejects_a_teacher_with_another_vocabulary_and_zero_weights(tmp_path):
    run = load_config(TrainRun, None, tiny_overrides(tmp_path / "r", **{
        "method": "kd", "method_args.kd_weight": 0, "method_args.ce_weight": 0, "teacher.name": "preset:nano"}))
    with pytest.raises(ConfigError, match="both 0"):
        train(run)


def test_collate_aligns_teacher_topk_with_label_positions():
    from retort.lm.data.collate import Encoded, collate

    a = Encoded([1, 5, 6, 7, 2], [-100, -100, 6, 7, 2], topk_ids=[[6, 9], [7, 9], [2, 9]],
                topk_logprobs=[[-0.1, -2.0], [-0.2, -3.0], [-0.3, -4.0]])
    b = Encoded([1, 8, 2], [-100, 8, 2], topk_ids=[[8, 1], [2, 1]], topk_logprobs=[[-0.5, -1.0], [-0.6, -1.5]])
    batch = collate([a, b], pad_id=0)
    assert batch["has_teacher"].tolist() == [[False, False, True, True, True], [False, True, True, False, False]]
    assert batch["topk_ids"][0, 2].tolist() == [6, 9] and batch["topk_ids"][0, 4].tolist() == [2, 9]
    assert batch["topk_ids"][1, 1].tolist() == [8, 1]
    assert batch["topk_logprobs"][1, 2].tolist() == pytest.approx([-0.6, -1.5])


def test_offline_full_vocab_topk_equals_online_kd(tmp_path):
    """With k = V stored (nothing dropped), KD from the traces' top-k is KD from the live teacher
    (up to the float16 storage of the log-probs)."""
    from retort.lm.config import TracesRun
    from retort.lm.methods.base import BatchPlan, MethodContext
    from retort.lm.methods.kd import KD
    from retort.lm.tasks import get_task
    from retort.lm.traces import run_traces

    teacher = peaked_teacher(tmp_path / "t")
    traces = tmp_path / "tr"
    run_traces(load_config(TracesRun, None, [f"out={traces}", f"teacher.name={teacher}", "n_prompts=6",
                                             "shard_prompts=3", "sampling.n=1", "sampling.max_new_tokens=8",
                                             "sampling.topk=100"]))
    student, tok = load_model(ModelConfig(name="preset:nano"), seed=9)
    losses = {}
    for mode in ("online", "offline"):
        run = load_config(TrainRun, None, [f"out={tmp_path / mode}", "data.source=traces", f"data.traces={traces}",
                                           "data.trace_filter=all", f"teacher.name={teacher}",
                                           f"method_args.teacher={mode}", "method=kd"])
        ctx = MethodContext(run=run, task=get_task(run.task), tokenizer=tok,
                            load_teacher=lambda: LocalTeacher("t", *load_model(run.teacher)))
        kd = KD(ctx, KD.Config(teacher=mode))
        batch = next(kd.batches(BatchPlan(0, 1, 1, 6, 0, 0)))
        out = kd.loss(student, batch)
        losses[mode] = (float(out.loss.detach()), out.count)
    assert losses["online"][1] == losses["offline"][1]
    assert losses["offline"][0] == pytest.approx(losses["online"][0], rel=2e-3)


def test_offline_kd_trains_from_topk_traces(tmp_path):
    from retort.lm.config import TracesRun
    from retort.lm.traces import run_traces

    traces = tmp_path / "tr"
    run_traces(load_config(TracesRun, None, [f"out={traces}", f"teacher.name={peaked_teacher(tmp_path / 't')}",
                                             "n_prompts=16", "shard_prompts=8", "sampling.n=2",
                                             "sampling.max_new_tokens=10", "sampling.topk=8"]))
    rows = _kd_rows(tmp_path / "s", 30, **{"data.source": "traces", "data.traces": str(traces),
                                           "data.trace_filter": "all", "method_args.teacher": "offline"})
    assert rows[-1]["kd"] < 0.6 * rows[0]["kd"]
    with pytest.raises(ConfigError, match="data.source=traces"):
        train(load_config(TrainRun, None, tiny_overrides(tmp_path / "x", **{"method": "kd",
                                                                             "method_args.teacher": "offline"})))


def test_offline_kd_reads_the_topk_of_a_curated_set(tmp_path):
    """A curated set (`retort curate --out`) keeps its source's sampling parameters under
    `source_params`: offline kd finds the top-k there (it stopped with KeyError 'sampling')."""
    from retort.lm.config import DataConfig, TracesRun
    from retort.lm.curate import filter_traces
    from retort.lm.methods.examples import trace_examples
    from retort.lm.traces import run_traces

    traces, curated = tmp_path / "tr", tmp_path / "cur"
    run_traces(load_config(TracesRun, None, [f"out={traces}", f"teacher.name={peaked_teacher(tmp_path / 't')}",
                                             "n_prompts=4", "shard_prompts=4", "sampling.max_new_tokens=6",
                                             "sampling.topk=4"]))
    filter_traces(str(traces), str(curated), max_tokens=64)
    _, tok = load_model(ModelConfig(name=str(tmp_path / "t")))
    rows = trace_examples(DataConfig(source="traces", traces=str(curated), trace_filter="all"), tok, with_topk=True)
    assert len({r.prompt for r in rows}) == 4  # every curated row, its top-k read
    from retort.lm.data.traces import read_manifest
    from retort.lm.teachers.store import trace_tokenizer

    assert len(trace_tokenizer(read_manifest(curated), curated, purpose="a test")) == len(tok)  # its source's teacher
