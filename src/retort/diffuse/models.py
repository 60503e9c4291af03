"""Diffusion models by name, and their files: `build(spec, data)`, `save`, `load`, `resolve`.

| name | model |
|---|---|
| `mlp:128-3` | `MLPDenoiser` of width 128 and 3 FiLM layers (points; a sequence as one flat vector) |
| `causal:128-3` | `CausalDenoiser`: a block-causal generator for sequences (blocks of the dataset's `block` frames, the previous block as context) |
| `unet`, `unet:32-64` | a diffusers `UNet2DModel` with those block widths (digits: 32-64; MNIST: 32-64-64) |
| `builtin:teacher` | the network `retort teacher track=diffuse` trains and caches for a built-in dataset |
| a directory | a model saved by retort |

MSD's students are one `Routed` model: `students/K/` per student (each a model as above) and, in
the top `retort.json`, which student takes each class (`routed.groups`); Phased DMD's experts the
same, routed by noise level (`routed.bounds`).

A saved model is a folder with `retort.json` (what it is: arch, data, sigma_data, the parameterisation,
its sampler and noise levels, classes and the guidance convention) and its weights in safetensors:
a U-Net as diffusers writes one (`unet/`, loadable with `UNet2DModel.from_pretrained`) beside the
`scheduler/` config of diffusers' `EDMEulerScheduler` it samples with; an MLP as
`model.safetensors`. A student's `sampling` names its noise levels; `renoise` means its sampler
re-noises each x0 prediction to the next level (DMD2's multi-step sampler). With diffusers alone, a
one-step student is `EDMEulerScheduler.set_timesteps(sigmas=torch.tensor(sampling["diffusers_ramp"]))`
(that scheduler takes positions on its Karras ramp, 0 = sigma_max) and one Euler step to sigma 0,
which returns D(sigma_max z) exactly; its steps are deterministic, so a multi-step student's
re-noising needs retort's sampler (`retort.diffuse.sampling.renoise`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..errors import ConfigError, ModelError, require
from ..paths import atomic_write_text, resolve_builtin, teacher_dir
from .data import BUILTIN, DiffuseData
from .nets import CausalDenoiser, MLPDenoiser, Phased, Routed, UNetDenoiser, digits_unet

FORMAT = "retort-diffusion"
PARAMETERISATION = ("EDM (x_sigma = x0 + sigma n), F-prediction preconditioned as diffusers' EDMEulerScheduler "
                    "with prediction_type='epsilon'")
GUIDANCE = "D = D(x, null) + g (D(x, y) - D(x, null)); g = 1 is no guidance; label n_classes is the null class"


def build(spec: str, data: DiffuseData):
    spec = str(spec)
    if spec.startswith("mlp"):
        m = re.fullmatch(r"mlp(?::(\d+)-(\d+))?", spec)
        if m is None:
            raise ConfigError(f"{spec!r}: expected mlp:WIDTH-DEPTH (e.g. mlp:128-3)")
        if data.kind == "images":
            raise ConfigError(f"{spec}: an MLP denoiser is for points; {data.name} is images (use unet)")
        width, depth = (int(m[1]), int(m[2])) if m[1] else (128, 3)
        return MLPDenoiser(data.shape[0], width, depth, data.n_classes, data.sigma_data)
    if spec.startswith("causal"):
        m = re.fullmatch(r"causal(?::(\d+)-(\d+))?", spec)
        if m is None:
            raise ConfigError(f"{spec!r}: expected causal:WIDTH-DEPTH (e.g. causal:128-3)")
        if data.kind != "sequence":
            raise ConfigError(f"{spec}: a block-causal generator is for sequences; {data.name} is {data.kind} "
                              "(the sequence datasets: ring-seq)")
        width, depth = (int(m[1]), int(m[2])) if m[1] else (128, 3)
        return CausalDenoiser(2, data.block, data.block, width, depth, data.sigma_data)
    if spec.startswith("unet"):
        m = re.fullmatch(r"unet(?::(\d+(?:-\d+)*))?", spec)
        if m is None:
            raise ConfigError(f"{spec!r}: expected unet or unet:C1-C2[-C3...] (block widths)")
        if data.kind != "images":
            raise ConfigError(f"{spec}: a U-Net is for images; {data.name} is {data.kind} (use mlp:W-D)")
        ch = tuple(int(c) for c in m[1].split("-")) if m[1] else ((32, 64) if data.shape[-1] <= 8 else (32, 64, 64))
        if any(c % 8 for c in ch):
            raise ConfigError(f"{spec}: block widths must be multiples of 8 (GroupNorm with 8 groups)")
        unet = digits_unet(data.n_classes, ch, data.shape[-1], data.shape[0])
        return UNetDenoiser(unet, data.n_classes, data.sigma_data)
    raise ConfigError(f"model {spec!r}: expected mlp:W-D, causal:W-D, unet[:C1-C2...], builtin:teacher or a saved "
                      "model directory")


def arch_of(model) -> str:
    if isinstance(model, UNetDenoiser):
        return "unet:" + "-".join(str(c) for c in model.unet.config.block_out_channels)
    if isinstance(model, CausalDenoiser):
        return f"causal:{model.width}-{model.depth}"
    return f"mlp:{model.width}-{model.depth}"


def save(model, path, meta: dict, state_dict=None) -> None:
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if isinstance(model, Routed):  # MSD: one saved model per student, and which classes each takes
        if state_dict is not None:
            model.load_state_dict(state_dict)
        for k, sub in enumerate(model.models):
            save(sub, path / "students" / str(k), meta)
        info = {"format": FORMAT, **meta, "arch": "routed:" + arch_of(model.models[0]), "n_classes": model.n_classes,
                "sigma_data": model.sigma_data, "parameterisation": PARAMETERISATION,
                "routed": {"students": len(model.models), "groups": model.groups.tolist()}}
        if isinstance(model, Phased):  # which expert takes which noise levels
            info["routed"]["bounds"] = model.bounds.tolist()
        atomic_write_text(path / "retort.json", json.dumps(info, indent=2))
        return
    info = {"format": FORMAT, **meta, "arch": arch_of(model), "n_classes": model.n_classes,
            "sigma_data": model.sigma_data, "parameterisation": PARAMETERISATION}
    if model.n_classes:
        info["guidance"] = GUIDANCE
    if isinstance(model, UNetDenoiser):
        EDMEulerScheduler = require("diffusers", "diffuse", "saving a U-Net").EDMEulerScheduler
        unet = model.unet
        if state_dict is not None:
            unet.load_state_dict({k.removeprefix("unet."): v for k, v in state_dict.items()})
        unet.save_pretrained(str(path / "unet"), safe_serialization=True)
        EDMEulerScheduler(sigma_min=0.002, sigma_max=float(meta.get("sigma_max", 80.0)), sigma_data=model.sigma_data,
                          prediction_type="epsilon").save_config(str(path / "scheduler"))
    else:
        state = state_dict if state_dict is not None else model.state_dict()
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(path / "model.safetensors"))
        if isinstance(model, CausalDenoiser):
            info["causal"] = {k: v for k, v in model.config().items() if k not in ("arch", "sigma_data")}
        else:
            info["mlp"] = {"dim": model.dim, "width": model.width, "depth": model.depth}
    atomic_write_text(path / "retort.json", json.dumps(info, indent=2))


def load(name) -> tuple[torch.nn.Module, dict]:
    """A saved retort diffusion model: (denoiser in eval mode, its retort.json)."""
    path = Path(name)
    cfg = path / "retort.json"
    if not cfg.is_file():
        raise ModelError(f"{name}: not a saved retort diffusion model (no retort.json); expected a run's model/ "
                         "directory or builtin:teacher")
    try:
        meta = json.loads(cfg.read_text())
        if meta.get("format") != FORMAT:
            raise KeyError("format")
        n_classes, sd = int(meta["n_classes"]), float(meta["sigma_data"])
    except (ValueError, KeyError) as e:
        raise ModelError(f"{cfg}: not a retort diffusion model config ({e})") from None
    if meta.get("routed"):
        subs = [load(path / "students" / str(k))[0] for k in range(int(meta["routed"]["students"]))]
        if "bounds" in meta["routed"]:
            return Phased(subs, meta["routed"]["bounds"]).eval(), meta
        return Routed(subs, meta["routed"]["groups"]).eval(), meta
    if meta["arch"].startswith("unet"):
        UNet2DModel = require("diffusers", "diffuse", f"{path} (a U-Net)").UNet2DModel
        if not (path / "unet" / "config.json").is_file():
            raise ModelError(f"{path}: no unet/ (a diffusers UNet2DModel) beside retort.json")
        try:
            unet = UNet2DModel.from_pretrained(str(path / "unet"), use_safetensors=True)
        except (OSError, ValueError, EnvironmentError) as e:
            raise ModelError(f"{path / 'unet'}: not a loadable UNet2DModel ({str(e).splitlines()[0]})") from None
        return UNetDenoiser(unet, n_classes, sd).eval(), meta
    from safetensors.torch import load_file

    weights = path / "model.safetensors"
    if not weights.is_file():
        raise ModelError(f"{path}: no model.safetensors")
    if meta["arch"].startswith("causal"):
        c = meta.get("causal") or {}
        model = CausalDenoiser(c.get("frame_dim", 2), c.get("block", 3), c.get("context", 3), c.get("width", 128),
                               c.get("depth", 3), sd)
    else:
        m = meta.get("mlp") or {}
        model = MLPDenoiser(m.get("dim", 2), m.get("width", 128), m.get("depth", 3), n_classes, sd)
    try:
        model.load_state_dict(load_file(str(weights)))
    except RuntimeError as e:
        raise ModelError(f"{weights}: does not fit {meta['arch']} ({str(e).splitlines()[0]})") from None
    return model.eval(), meta


def builtin_teacher_dir(dataset: str) -> Path:
    return teacher_dir("diffuse", dataset)


def resolve(name: str, dataset: str) -> str:
    """`builtin:teacher` -> the cached teacher of a built-in dataset's directory; else `name`."""
    return resolve_builtin(name, dataset, track="diffuse", builtin=BUILTIN, saved_file="retort.json",
                           otherwise="give a saved diffusion model directory")


def check_fits(meta: dict, data: DiffuseData, role: str) -> None:
    if meta.get("dataset") not in (None, data.name):
        raise ModelError(f"{role} ({meta.get('arch')}) was trained on {meta.get('dataset')}; the task is {data.name} "
                         f"(its teacher: retort teacher track=diffuse task.name={data.name})")
    if int(meta.get("n_classes", 0)) != data.n_classes:
        raise ModelError(f"{role} ({meta.get('arch')}) has {meta.get('n_classes')} classes; {data.name} has "
                         f"{data.n_classes}")
