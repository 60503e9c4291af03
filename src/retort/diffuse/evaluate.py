"""Measuring generators (distribution metrics): samples at a step count, the metrics of each kind
of data, the collapse detectors, and the evaluator a training run calls.

Points: SWD as a ratio to the noise floor (the same metric between two independent draws of the
exact distribution), unbiased MMD^2, mode recall / precision, the samples' variance against the
reference's; class-conditional mixtures also per-class SWD. Images: the Frechet distance on a
feature network's penultimate layer (digits: a small CNN trained here on the real training images,
cached; MNIST: the pretrained CNN of the PyPI package ccexam, which no one here trained) against
the real test images, with its floor (real training vs test images), the entropy of the predicted
label histogram, the share classified as the label asked for, and the within-class diversity (mean
pairwise feature distance among samples predicted in one class). Sequences (`ring-seq`): SWD of
whole sequences (their joint law, as a ratio to its floor) and of the frames pooled (each frame's
law), the frames' modes, the share of sequences on a true trajectory (every frame within 3 std
of one component's frames) with the trajectories they cover, and the coherence (each frame read as
its nearest position: the share of sequences moving one position per frame the same way); a block-causal student also rolls out
`eval.rollout` times the training length, and the same metrics on its last window measure the
drift (exposure bias). Every row: NFE and seconds per 1000 samples.
"""

from __future__ import annotations

import json
import time

import torch

from ..errors import ConfigError
from ..paths import atomic_write_text, cache_dir
from .metrics import mmd2, mode_stats, sliced_wasserstein
from .sampling import heun, karras, renoise


# ---------------------------------------------------------------------------- sampling
@torch.no_grad()
def sample(model, data, n: int, *, sigmas, sampler: str = "renoise", seed: int = 0, batch_size: int = 1000,
           guidance: float = 1.0, labels: torch.Tensor | None = None, device=None, frames: int | None = None) -> dict:
    """`n` samples (CPU tensors), their labels, NFE per sample and seconds. A block-causal model
    (one with `rollout`) generates `frames` frames (default: the data's), block by block; its NFE
    is per block."""
    device = device or next(iter(model.parameters()), torch.empty(0)).device
    g = torch.Generator().manual_seed(seed)
    causal = hasattr(model, "rollout")
    z = torch.randn(n, 2 * (frames or data.frames), generator=g) if causal else torch.randn(n, *data.shape, generator=g)
    if labels is None:
        labels = data.labels(n, g)
    out = []
    t0 = time.perf_counter()
    for i in range(0, n, batch_size):
        zb = z[i:i + batch_size].to(device)
        lb = labels[i:i + batch_size].to(device) if labels is not None else None
        if causal:
            out.append(model.rollout(zb, sigmas, generator=g).cpu())
        elif sampler == "heun":
            out.append(heun(model, zb, sigmas, lb, guidance).cpu())
        else:
            out.append(renoise(model, zb, sigmas, lb, generator=g, guidance=guidance).cpu())
    secs = time.perf_counter() - t0
    nfe = (2 * len(sigmas) - 1) if sampler == "heun" else len(sigmas)
    if guidance != 1.0 and labels is not None:
        nfe *= 2
    return {"x": torch.cat(out).float(), "labels": labels, "nfe": nfe, "seconds_per_1k": secs * 1000 / n}


# ---------------------------------------------------------------------------- features
def frechet(fa: torch.Tensor, fb: torch.Tensor) -> float:
    """|mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a^1/2 C_b C_a^1/2)^1/2), in float64 by eigendecomposition."""
    fa, fb = fa.double(), fb.double()
    mu_a, mu_b = fa.mean(0), fb.mean(0)
    ca, cb = torch.cov(fa.T), torch.cov(fb.T)

    def sqrtm(c):
        w, v = torch.linalg.eigh(c)
        return (v * w.clamp(min=0).sqrt()) @ v.T

    ra = sqrtm(ca)
    cross = sqrtm(ra @ cb @ ra)
    return float(((mu_a - mu_b) ** 2).sum() + ca.trace() + cb.trace() - 2 * cross.trace())


class Features:
    """The feature network of a dataset: `embed(x)` (penultimate layer) and `predict(x)` (labels), on
    images in [-1, 1]."""

    def __init__(self, data):
        from ..images import CNN, MNIST_MEAN, MNIST_STD, ccexam_cnn

        self.data = data
        if data.name == "mnist":
            self.net = ccexam_cnn()
            self.prep = lambda x: ((x + 1) / 2 - MNIST_MEAN) / MNIST_STD
            self.source = "ccexam MNIST CNN (pretrained, 99.05% on MNIST test)"
        else:
            self.net = CNN((1, 8, 8), 10, 32, 64, 128)
            self.prep = lambda x: x
            self.source = self._digits_net()
        self.net.eval()

    def _digits_net(self) -> str:
        from safetensors.torch import load_file, save_file

        d = cache_dir() / "diffuse-features-digits"
        if (d / "info.json").is_file():
            self.net.load_state_dict(load_file(str(d / "model.safetensors")))
            return json.loads((d / "info.json").read_text())["source"]
        x, y = self.data.x["train"], self.data.y["train"]
        torch.manual_seed(0)
        opt = torch.optim.Adam(self.net.parameters(), 1e-3)
        g = torch.Generator().manual_seed(0)
        for _ in range(1500):
            idx = torch.randint(0, len(x), (64,), generator=g)
            loss = torch.nn.functional.cross_entropy(self.net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            acc = float((self.net(self.data.x["test"]).argmax(1) == self.data.y["test"]).double().mean())
        source = f"a CNN trained on the digits training images ({acc:.3f} test accuracy)"
        d.mkdir(parents=True, exist_ok=True)
        save_file(self.net.state_dict(), str(d / "model.safetensors"))
        atomic_write_text(d / "info.json", json.dumps({"source": source, "accuracy": acc}))
        return source

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats, preds = [], []
        for i in range(0, len(x), 2000):
            xb = self.prep(x[i:i + 2000].clamp(-1, 1))
            f = self.net.embed(xb)
            feats.append(f)
            preds.append(self.net.head(f).argmax(1))
        return torch.cat(feats), torch.cat(preds)


# ---------------------------------------------------------------------------- references and metrics
class Reference:
    """What generated samples are compared with, drawn once per (data, n, seed)."""

    def __init__(self, data, n: int, seed: int):
        self.data, self.n = data, n
        g = torch.Generator().manual_seed(seed + 7)
        if data.kind == "sequence":
            self.x, self.labels = data.real(n, g)
            self.floor_x, _ = data.real(n, g)
            self.frames_x = self.x.reshape(-1, 2)
            self.variance = float(self.x.var(0).sum())
            self.floor = {"swd": sum(sliced_wasserstein(data.real(n, g)[0], self.x) for _ in range(8)) / 8,
                          "frame_swd": sum(sliced_wasserstein(data.real(n, g)[0].reshape(-1, 2), self.frames_x)
                                           for _ in range(4)) / 4}
        elif data.kind == "points":
            self.x, self.labels = data.real(n, g)
            self.floor_x, _ = data.real(n, g)
            self.variance = float(self.x.var(0).sum())
            self.floor = _points(self.floor_x, None, self)
            # the floor is itself one draw of a noisy number: average it over 8 fresh draws, so a ratio's
            # spread is the generator's, not the floor's
            self.floor["swd"] = sum(sliced_wasserstein(data.real(n, g)[0], self.x) for _ in range(8)) / 8
        else:
            self.features = Features(data)
            xt = data.x["test"]
            self.feat, _ = self.features(xt)
            ftr, _ = self.features(data.x["train"][: max(len(xt), 2000)])
            self.variance = float(xt.reshape(len(xt), -1).var(0).sum())
            self.floor = {"fd": frechet(ftr, self.feat)}


def _points(x: torch.Tensor, labels, ref: Reference) -> dict:
    data = ref.data
    out = {"swd": sliced_wasserstein(x, ref.x)}
    if hasattr(ref, "floor"):
        out["swd_ratio"] = out["swd"] / ref.floor["swd"]
    out["mmd2"] = mmd2(x[:2000], ref.x[:2000])
    stats = mode_stats(x, data.mixture)
    out.update(stats)
    out["variance_ratio"] = float(x.var(0).sum()) / ref.variance
    if labels is not None and data.n_classes:
        per = []
        g = torch.Generator().manual_seed(1)
        for c in range(data.n_classes):
            m = labels == c
            if int(m.sum()) >= 20:
                per.append(sliced_wasserstein(x[m], data.mixture.condition(c).sample(int(m.sum()), g).float()))
        out["class_swd"] = sum(per) / len(per) if per else float("nan")
    return out


def on_track(x: torch.Tensor, mixture, radius_stds: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    """For sequences x (N, 2F) of a sequence mixture: whether every frame lies within `radius_stds`
    std of the nearest component's frame, and that component."""
    x = x.double()
    comp = torch.cdist(x, mixture.means).argmin(1)
    err = (x - mixture.means[comp]).reshape(len(x), -1, 2).norm(dim=-1)     # (N, F) per-frame distance
    return (err <= radius_stds * mixture.stds[comp][:, None]).all(1), comp


def coherence(x: torch.Tensor, positions: torch.Tensor) -> tuple[float, float]:
    """Each frame read as its nearest position: (the share of sequences that move exactly one
    position per frame, always the same way; the share of frame-to-frame moves of one position)."""
    f = x.double().reshape(len(x), -1, 2)
    q = torch.cdist(f, positions.double()[None].expand(len(x), -1, -1)).argmin(-1)
    step = (q[:, 1:] - q[:, :-1]) % len(positions)
    fwd, back = step == 1, step == len(positions) - 1
    return float((fwd.all(1) | back.all(1)).double().mean()), float((fwd | back).double().mean())


def _window(x: torch.Tensor, ref: Reference, prefix: str = "") -> dict:
    """The metrics of one window of the training length (N, 2F)."""
    data = ref.data
    out = {f"{prefix}swd": sliced_wasserstein(x, ref.x)}
    out[f"{prefix}swd_ratio"] = out[f"{prefix}swd"] / ref.floor["swd"]
    out[f"{prefix}frame_swd_ratio"] = sliced_wasserstein(x.reshape(-1, 2), ref.frames_x) / ref.floor["frame_swd"]
    ok, comp = on_track(x, data.mixture)
    out[f"{prefix}on_track"] = float(ok.double().mean())
    out[f"{prefix}coherent"], out[f"{prefix}moves"] = coherence(x, data.frame_mixture().means)
    if not prefix:
        counts = torch.bincount(comp[ok], minlength=data.mixture.K).double()
        covered = counts >= 0.2 * data.mixture.weights * len(x)
        out.update(trajectories_covered=int(covered.sum()), trajectories=data.mixture.K)
        stats = mode_stats(x.reshape(-1, 2), data.frame_mixture())
        out.update(modes_covered=stats["modes_covered"], modes=stats["modes"], recall=stats["recall"],
                   precision=stats["precision"])
        out["mmd2"] = mmd2(x[:2000], ref.x[:2000])
        out["variance_ratio"] = float(x.var(0).sum()) / ref.variance
    return out


def _sequences(x: torch.Tensor, ref: Reference) -> dict:
    """The first window of the training length; for a longer rollout also its last window (`late_`)
    and the share on track in each window, in order (the drift)."""
    d = ref.x.shape[1]
    out = _window(x[:, :d], ref)
    if x.shape[1] > d:
        out.update(_window(x[:, -d:], ref, "late_"))
        out["rollout_frames"] = x.shape[1] // 2
        out["coherent_by_window"] = [coherence(x[:, i:i + d], ref.data.frame_mixture().means)[0]
                                     for i in range(0, x.shape[1] - d + 1, d)]
    return out


def _images(x: torch.Tensor, labels, ref: Reference) -> dict:
    feats, preds = ref.features(x)
    out = {"fd": frechet(feats, ref.feat), "fd_floor": ref.floor["fd"]}
    hist = torch.bincount(preds, minlength=10).double() / len(preds)
    out["label_entropy"] = float(-(hist[hist > 0] * hist[hist > 0].log()).sum())
    if labels is not None:
        out["label_match"] = float((preds == labels.to(preds.device)).double().mean())
    within = []
    for c in range(10):
        f = feats[preds == c][:200]
        if len(f) >= 2:
            within.append(float(torch.pdist(f.double()).mean()))
    out["within_class_diversity"] = sum(within) / len(within) if within else 0.0
    out["variance_ratio"] = float(x.reshape(len(x), -1).var(0).sum()) / ref.variance
    return out


def measure(x: torch.Tensor, labels, ref: Reference) -> dict:
    if not torch.isfinite(x).all():
        return {"nonfinite": float((~torch.isfinite(x)).any(dim=tuple(range(1, x.dim()))).double().mean())}
    kind = ref.data.kind
    return _points(x, labels, ref) if kind == "points" else _sequences(x, ref) if kind == "sequence" else \
        _images(x, labels, ref)


@torch.no_grad()
def first_step(model, data, ref: Reference, *, sigma: float, n: int = 16, seed: int = 0,
               guidance: float = 1.0) -> dict:
    """DT-visualisation (Gandikota & Bau, "Distilling Diversity and Control in Diffusion Models"): what a model predicts as the final
    sample after its first step, x0 = D(sigma z, sigma), for `n` noises of one condition (the class
    of the seed's first label). `spread`: the mean pairwise distance between those predictions,
    `to_data`: the mean distance from each to its nearest real sample, both per coordinate (divided
    by sqrt(dim)). A distilled student commits at its first step (far apart, near the data); a
    diffusion model's first prediction is a blurred average (close together, far from every real
    sample). The samples themselves are kept for the report's figure."""
    from .sampling import _call

    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, *data.shape, generator=g)
    labels = data.labels(n, g)
    labels = None if labels is None else labels[:1].expand(n).clone()
    device = next(iter(model.parameters()), torch.empty(0)).device
    x = _call(model, (z * sigma).to(device), sigma, None if labels is None else labels.to(device),
              guidance).float().cpu()
    flat = x.reshape(n, -1)
    dim = flat.shape[1]
    real = (ref.x if data.kind == "points" else data.x["test"]).reshape(-1, dim).float()
    pair = torch.cdist(flat, flat)
    spread = float(pair.sum() / (n * (n - 1))) / dim ** 0.5
    to_data = float(torch.cdist(flat, real).min(1).values.mean()) / dim ** 0.5
    out = {"spread": round(spread, 4), "to_data": round(to_data, 4), "sigma": float(sigma), "n": n}
    if data.kind == "points":
        out["points"] = [[round(float(a), 3), round(float(b), 3)] for a, b in flat.tolist()]
    else:
        out["images"] = x.clamp(-1, 1).squeeze(1).mul(1000).round().div(1000).tolist()
    return out


def collapse(metrics: dict, cfg, best: dict) -> str | None:
    """Why these samples look collapsed, or None: the collapse detectors of the track. A student
    starts mode-averaged (a teacher copy run once at sigma_max puts every sample near the mean), so
    the detectors compare it with its own best so far (`best`, updated here), not with the data:
    modes covered falling below `min_modes` of its best, the samples' total variance below
    `min_variance` of its best (outputs turning solid or identical), the predicted-label entropy of
    images below `min_modes` of its best; and any non-finite sample."""
    if "nonfinite" in metrics:
        return f"{metrics['nonfinite']:.0%} of the samples are not finite"
    why = None
    checks = [("modes_covered", cfg.min_modes, "modes covered"), ("variance_ratio", cfg.min_variance,
              "the samples' variance (vs the reference's)"), ("label_entropy", cfg.min_modes,
              "the predicted-label entropy (nats)")]
    for key, share, what in checks:
        if key not in metrics:
            continue
        v, top = float(metrics[key]), best.get(key)
        if why is None and top is not None and top > (1 if key == "modes_covered" else 0) and v < share * top:
            why = f"{what} fell to {v:.3g} from {top:.3g} earlier in the run (below {share:g} of it)"
        best[key] = max(v, top if top is not None else v)
    return why


def student_sampling(meta: dict, steps: int | None, sigma_max: float):
    """(sigmas, sampler) of a saved model at `steps` (default its own). Phased DMD's experts are
    sampled at each phase's own levels, as they were trained: `steps` a multiple of the phases."""
    from .sampling import student_sigmas

    s = meta.get("sampling") or {}
    if steps is None and s.get("sigmas"):
        return [float(v) for v in s["sigmas"]], s.get("sampler", "renoise")
    bounds = (meta.get("routed") or {}).get("bounds")
    if bounds and steps is not None:
        from .sampling import phase_levels

        k = len(bounds) - 1
        if steps % k:
            raise ConfigError(f"steps: {steps} does not fit a phased_dmd model of {k} phases (each expert "
                              f"samples its own phase); expected a multiple of {k}")
        return [v for phase in phase_levels(bounds, steps) for v in phase], "renoise"
    if s.get("sampler") == "heun" and steps is not None:
        return karras(steps, sigma_max=sigma_max).tolist(), "heun"
    return student_sigmas(1 if steps is None else steps, sigma_max), "renoise"


# ---------------------------------------------------------------------------- during training
def run_evaluator(run):
    """`evaluate(model, meta, data) -> dict` for `retort train track=diffuse`: the student at its own
    steps against the reference, and the collapse detectors (warn, or stop the run)."""
    cache: dict = {}

    def evaluate(model, meta, data):
        if "ref" not in cache:
            cache["ref"] = Reference(data, run.eval.n, run.eval.seed)
        ref = cache["ref"]
        was = model.training
        model.eval()
        # the model's own sampler: a denoiser (method=denoise) integrates with Heun, a student re-noises
        s = sample(model, data, run.eval.n, sigmas=meta["sampling"]["sigmas"], seed=run.eval.seed,
                   sampler=meta["sampling"].get("sampler", "renoise"), batch_size=run.eval.batch_size,
                   frames=data.frames * run.eval.rollout if data.frames else None)
        model.train(was)
        out = {**measure(s["x"], s["labels"], ref), "nfe": s["nfe"]}
        if run.eval.collapse != "off":
            why = collapse(out, run.eval, cache.setdefault("best", {}))
            out["collapsed"] = int(why is not None)
            if why is not None:
                out["collapse_reason"] = why
                if run.eval.collapse == "stop":
                    out["stop"] = f"collapse: {why}"
                else:
                    out["warning"] = f"collapse: {why} (eval.collapse=stop stops the run)"
        return out

    return evaluate
