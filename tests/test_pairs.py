"""Positive/negative pairs (curate) and the pair methods redi, dpo, simpo: hand-computed losses on a
tiny model, properties (DPO = log 2 at the start; REDI alpha=0 = length-normalised SFT), and runs."""

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import tiny_overrides
from retort.config import load_config
from retort.lm.config import ModelConfig, TracesRun, TrainRun
from retort.lm.curate import filter_traces
from retort.lm.data.pairs import pair_rows
from retort.lm.data.collate import IGNORE, Encoded
from retort.lm.data.traces import read_traces
from retort.errors import DataError
from retort.lm.methods import METHODS
from retort.lm.methods.base import MethodContext
from retort.lm.methods.pairs import Pair
from retort.lm.models import load_model
from retort.lm.tasks import get_task
from retort.lm.traces import run_traces
from retort.train import train


def test_pair_rule_pairs_off_in_sample_order_and_caps_per_prompt():
    pids = ["a", "a", "a", "a", "b", "b", "c"]
    idx = [3, 0, 1, 2, 0, 1, 0]
    ok = [True, True, False, False, True, True, False]
    # prompt a: correct rows 1 (idx 0), 0 (idx 3); incorrect rows 2 (idx 1), 3 (idx 2)
    assert pair_rows(pids, idx, ok, 1) == [(1, 2)]
    assert pair_rows(pids, idx, ok, 0) == [(1, 2), (0, 3)]
    assert pair_rows(["b", "b"], [0, 1], [True, True], 0) == []  # no negative: no pair


def _manual_pair(tok):
    p = [1, 40, 41]
    w, l_ = [50, 51, 52, 2], [60, 2]
    return Pair(p + w, [IGNORE] * 3 + w, rejected=Encoded(p + l_, [IGNORE] * 3 + l_))


def _method(name, tmp_path, **cfg):
    run = load_config(TrainRun, None, tiny_overrides(tmp_path / "r", **{"method": name}))
    model, tok = load_model(ModelConfig(name="preset:nano"), seed=2)
    ctx = MethodContext(run=run, task=get_task(run.task), tokenizer=tok,
                        load_initial_student=lambda: load_model(ModelConfig(name="preset:nano"), seed=2))
    cls = METHODS[name]
    return cls(ctx, cls.Config(**cfg)), model, tok


def _seq_logp(model, ids, n_prompt):
    logits = model(torch.tensor([ids])).logits[0].double()
    lp = torch.log_softmax(logits, -1)
    return sum(float(lp[t - 1, ids[t]]) for t in range(n_prompt, len(ids))), len(ids) - n_prompt


@pytest.mark.parametrize("name,cfg", [("redi", {"alpha": 0.8}), ("redi", {"alpha": 0.0}), ("simpo", {}),
                                      ("dpo", {"beta": 0.5})])
def test_losses_equal_hand_computed_values(tmp_path, name, cfg):
    from retort.lm.data.collate import collate

    method, model, tok = _method(name, tmp_path, **cfg)
    pair = _manual_pair(tok)
    batch = collate([pair, pair.rejected], tok.pad_token_id)
    batch["n_pairs"] = 1
    out = method.loss(model, batch)
    lw, nw = _seq_logp(model, pair.input_ids, 3)
    ll, nl = _seq_logp(model, pair.rejected.input_ids, 3)
    assert (nw, nl) == (4, 2)  # EOS counted
    if name == "redi":
        want = -lw / nw + cfg["alpha"] * ll / nl
    elif name == "simpo":
        want = -math.log(1 / (1 + math.exp(-(2.0 * (lw / nw - ll / nl) - 1.0))))
    else:  # the reference is the same initial model: the margin is 0 and the loss log 2
        want = math.log(2)
    assert out.loss.item() == pytest.approx(want, rel=1e-5)
    assert out.count == 1


@pytest.mark.parametrize("name,cfg", [("redi", {"alpha": 0.8}), ("simpo", {"beta": 2.0, "gamma": 1.0}),
                                      ("dpo", {"beta": 0.5})])
def test_loss_and_gradient_match_the_float64_reference_on_padded_odd_length_batches(tmp_path, name, cfg):
    """Several pairs of different prompt and completion lengths, batched with padding, against the
    per-sequence float64 reference of tests/reference.py; DPO's reference model is moved off the
    policy first, so its term matters."""
    from reference import pair_loss

    from retort.lm.data.collate import collate

    method, model, tok = _method(name, tmp_path, **cfg)
    model = model.double()
    g = torch.Generator().manual_seed(0)
    triples = []
    for n_p, n_w, n_l in [(3, 5, 2), (6, 1, 7), (2, 4, 4)]:
        ids = lambda n: torch.randint(4, 100, (n,), generator=g).tolist()  # noqa: E731
        triples.append(([1, *ids(n_p - 1)], ids(n_w - 1) + [2], ids(n_l - 1) + [2]))
    if name == "dpo":
        ref = method.reference().double()
        with torch.no_grad():
            for prm in ref.parameters():
                prm.add_(0.05 * torch.randn(prm.shape, generator=g, dtype=prm.dtype))
    pairs = [Pair(p + w, [IGNORE] * len(p) + w, rejected=Encoded(p + l_, [IGNORE] * len(p) + l_))
             for p, w, l_ in triples]
    batch = collate(pairs + [x.rejected for x in pairs], tok.pad_token_id)
    batch["n_pairs"] = len(pairs)
    out = method.loss(model, batch)
    got = out.loss / out.count
    got.backward()
    got_grads = [prm.grad.clone() for prm in model.parameters()]
    model.zero_grad()
    kw = {"alpha": cfg.get("alpha", 0.8), "beta": cfg.get("beta", 0.1), "gamma": cfg.get("gamma", 1.0)}
    want = pair_loss(name, model, triples, ref_model=method.reference() if name == "dpo" else None, **kw)
    want.backward()
    assert got.item() == pytest.approx(want.item(), rel=1e-9, abs=1e-12)
    if name == "dpo":
        assert abs(float(want) - math.log(2)) > 1e-3  # the reference term is not trivially zero
    for a, prm in zip(got_grads, model.parameters()):
        torch.testing.assert_close(a, prm.grad, rtol=1e-7, atol=1e-10)


def test_dpo_moves_with_the_policy_and_rewards_the_chosen(tmp_path):
    from retort.lm.data.collate import collate

    method, model, tok = _method("dpo", tmp_path, beta=0.5)
    pair = _manual_pair(tok)
    batch = collate([pair, pair.rejected], tok.pad_token_id)
    batch["n_pairs"] = 1
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    first = method.loss(model, batch)
    for _ in range(5):
        out = method.loss(model, batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    last = method.loss(model, batch)
    assert first.loss.item() == pytest.approx(math.log(2), rel=1e-5)
    assert last.loss.item() < first.loss.item() and last.metrics["margin"] > 0


@pytest.fixture(scope="module")
def mixed_traces(tmp_path_factory):
    """Traces of a random nano teacher with 4 samples per prompt, and a verifier that accepts half of
    them (a controlled input: a random model is never right on its own)."""
    root = tmp_path_factory.mktemp("pairs")
    out = root / "traces"
    run_traces(load_config(TracesRun, None, [f"out={out}", "teacher.name=preset:nano", "n_prompts=16",
                                             "shard_prompts=8", "sampling.n=4", "sampling.max_new_tokens=8"]))
    import pyarrow as pa
    import pyarrow.parquet as pq

    for part in sorted(out.glob("part-*.parquet")):
        t = pq.read_table(part)
        flags = [i % 2 == 0 for i in t["sample_idx"].to_pylist()]
        t = t.set_column(t.schema.get_field_index("correct"), "correct", pa.array(flags))
        pq.write_table(t, part)
    manifest = json.loads((out / "manifest.json").read_text())
    from retort.lm.data.traces import sha256_file

    for info in manifest["shards"].values():
        info["sha256"] = sha256_file(out / info["file"])
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def test_curate_pairs_keeps_only_paired_traces(mixed_traces, tmp_path):
    stats = filter_traces(str(mixed_traces), str(tmp_path / "p"), pairs=1)
    t = read_traces(tmp_path / "p")
    assert t.num_rows == 32 and stats["rows"] == 32  # 16 prompts x (1 correct + 1 incorrect)
    assert sorted(t["sample_idx"].to_pylist()) == [0] * 16 + [1] * 16
    with pytest.raises(DataError, match="drop --correct"):
        filter_traces(str(mixed_traces), str(tmp_path / "q"), pairs=1, correct_only=True)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a retort trace set"):
        filter_traces(str(mixed_traces), str(tmp_path / "mine"), pairs=1)
    assert (tmp_path / "mine" / "notes.txt").is_file()


@pytest.mark.parametrize("name", ["redi", "dpo", "simpo"])
def test_pair_methods_train_from_the_cli_config(mixed_traces, tmp_path, name):
    # 4 pairs, batch 4: the same pairs every step, so the loss must fall
    run = load_config(TrainRun, None, tiny_overrides(tmp_path / name, steps=8, **{
        "method": name, "data.source": "traces", "data.traces": str(mixed_traces), "train.lr": 0.01,
        "method_args.pairs_per_prompt": 2, "data.n_train": 4, "train.warmup_steps": 0}))
    train(run)
    rows = [json.loads(line) for line in (Path(run.out) / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert len(rows) == 8 and all(math.isfinite(r["loss"]) for r in rows)
    assert all("logp_chosen" in r and "logp_rejected" in r for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"]
    # the chosen side gains on the rejected one
    assert rows[-1]["logp_chosen"] - rows[-1]["logp_rejected"] > rows[0]["logp_chosen"] - rows[0]["logp_rejected"]
