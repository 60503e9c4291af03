"""`lelp`: pseudo-subclass targets from linear projections of the teacher's final embedding.

LELP, "Learning Embedding Linear Projections" (Loo, Iliopoulos, Hu, Vee; arXiv 2409.20449). With few
classes the teacher's logits carry little dark knowledge; LELP splits each class into S
pseudo-subclasses along informative directions of the teacher's embedding and trains a student
with an S*C-way head on them (the paper's eq. 1, alpha = 0 in all its experiments). The procedure
as read here (the exact formulas were not at hand, so step 5 and the standardisation are readings
of the paper's description):

1. embeddings h(x) of the training set, per class by the ground-truth label;
2. (optional, `null_space`) h~ = P h, P = I - W^T (W W^T)^-1 W, W the teacher's final layer: drop
   what the logits already carry;
3. per class c: centre at mu_c, top-S principal directions V_c;
4. a Haar-random rotation Q_c in O(S) (drawn once from the run's seed): U_c = V_c Q_c;
5. p_T(c, s | x) = softmax(z / tau)_c * softmax_s(u_cs^T (h~ - mu_c) / (beta sd_cs)), sd_cs the
   projection's standard deviation over class c (so beta does not depend on the embedding scale);
6. L = alpha CE(y, p_S(c|x)) + (1 - alpha) KL(p_T(c, s|x) || p_S(c, s|x)); p_S(c|x) = sum_s p_S(c, s|x).

Two controls are options of the same method (`subclasses`): `kmeans` (the paper's baseline: per
class, k-means clusters of the projected embeddings; p_T(c, s | x) = p_T(c | x) * [s = the nearest
centroid of class c]) and `oracle` (the true subclasses, where the dataset has them, e.g.
digits-bin's digits: p(c, s) one-hot, no teacher used in the target).

The projection is the method's own module (`LelpProjection`, fitted once on the teacher, the same
on every process and after a resume); the student's head has S*C outputs (`models.Subclassed`), and
predicts with argmax_c logsumexp_s.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...config import param
from ...contract import LossOut
from ...errors import ConfigError, ModelError
from ...losses.classify import soft_target_kl
from .base import ClassifyMethod


class LelpProjection(nn.Module):
    """Fitted from teacher embeddings `h` (N, D), labels `y`, the teacher's final weight `W` (C, D):
    buffers P (D, D), mu (C, D), U (C, D, S), sd (C, S)."""

    def __init__(self, h: torch.Tensor, y: torch.Tensor, W: torch.Tensor, S: int, null_space: bool, seed: int):
        super().__init__()
        h, W = h.double(), W.double()
        C, D = W.shape
        if S > D:
            raise ConfigError(f"method_args.S={S}: more subclasses than the teacher's embedding has dimensions ({D})")
        P = torch.eye(D, dtype=torch.float64)
        if null_space:
            P = P - W.T @ torch.linalg.pinv(W @ W.T) @ W
        ht = h @ P.T
        g = torch.Generator().manual_seed(seed)
        mus, us, sds = [], [], []
        for c in range(C):
            hc = ht[y == c]
            if len(hc) <= S:
                raise ConfigError(f"method_args.S={S}: class {c} has only {len(hc)} training examples")
            mu = hc.mean(0)
            _, _, vh = torch.linalg.svd(hc - mu, full_matrices=False)
            q, r = torch.linalg.qr(torch.randn(S, S, generator=g, dtype=torch.float64))
            q = q * torch.sign(torch.diagonal(r))  # Haar: fix the signs QR leaves arbitrary
            u = vh[:S].T @ q  # (D, S)
            sd = ((hc - mu) @ u).std(0).clamp_min(1e-12)
            mus.append(mu), us.append(u), sds.append(sd)
        self.register_buffer("P", P.float())
        self.register_buffer("mu", torch.stack(mus).float())
        self.register_buffer("U", torch.stack(us).float())
        self.register_buffer("sd", torch.stack(sds).float())

    def fit_kmeans(self, h: torch.Tensor, y: torch.Tensor, seed: int) -> None:
        """Per class, S k-means centroids of the projected embeddings (scikit-learn, 10 restarts)."""
        from sklearn.cluster import KMeans

        ht = (h.float() @ self.P.T.cpu()).numpy()
        cents = []
        for c in range(self.mu.shape[0]):
            km = KMeans(n_clusters=self.U.shape[-1], n_init=10, random_state=seed).fit(ht[(y == c).numpy()])
            cents.append(torch.from_numpy(km.cluster_centers_).float())
        self.register_buffer("centroids", torch.stack(cents).to(self.P.device))  # (C, S, D)

    def nearest_centroid(self, h: torch.Tensor) -> torch.Tensor:
        """(N, C, S) one-hot: for every class, the centroid of that class nearest to each embedding."""
        ht = h.float() @ self.P.T
        d = ((ht[:, None, None, :] - self.centroids[None]) ** 2).sum(-1)
        return torch.nn.functional.one_hot(d.argmin(-1), self.centroids.shape[1]).float()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(N, C, S): the standardised projection of each embedding on each class's directions."""
        ht = h.float() @ self.P.T
        return torch.einsum("ncd,cds->ncs", ht[:, None, :] - self.mu[None], self.U) / self.sd[None]


def subclass_targets(proj: torch.Tensor, teacher_logits: torch.Tensor, tau: float, beta: float) -> torch.Tensor:
    """p_T(c, s | x), (N, C*S) with index c*S + s: the class marginal is softmax(z / tau) exactly."""
    pc = torch.softmax(teacher_logits.float() / tau, -1)
    ps = torch.softmax(proj / beta, -1)
    return (pc[:, :, None] * ps).flatten(1)


def oracle_targets(data, S: int) -> torch.Tensor:
    """(N, C*S) one-hot of each training row's true (class, subclass): a class's distinct subclass
    labels numbered in order (digits-bin's class 'odd' = digits 1, 3, 5, 7, 9 -> s = 0..4)."""
    sub = data.sub.get("train")
    if sub is None:
        raise ConfigError(f"method_args.subclasses=oracle: {data.name} has no true subclasses (digits-bin and "
                          "digits-3 do)")
    y = data.y["train"]
    C = data.n_classes
    s_index = torch.zeros_like(y)
    for c in range(C):
        values = sorted(set(sub[y == c].tolist()))
        if len(values) > S:
            raise ConfigError(f"method_args.S={S}: class {c} has {len(values)} true subclasses")
        lookup = {v: i for i, v in enumerate(values)}
        s_index[y == c] = torch.tensor([lookup[v] for v in sub[y == c].tolist()])
    return torch.nn.functional.one_hot(y * S + s_index, C * S).float()


class LELP(ClassifyMethod):
    name = "lelp"
    paper = "LELP: Learning Embedding Linear Projections (Loo, Iliopoulos, Hu, Vee; arXiv 2409.20449)"
    equation = ("p_T(c,s|x) = softmax(z/tau)_c softmax_s(u_cs^T (P h - mu_c) / (beta sd_cs));  L = alpha CE(y, "
                "sum_s p_S(c,s)) + (1 - alpha) KL(p_T(c,s) || p_S(c,s))   (S*C-way student head)")

    @dataclass
    class Config:
        S: int = param(5, "pseudo-subclasses per class (the spec's digits-bin run: 5, the true subclasses)", lo=1)
        beta: float = param(1.0, "subclass temperature, in units of each projection's standard deviation",
                            lo=0.0, lo_open=True)
        tau: float = param(1.0, "temperature of the teacher's class distribution (as vanilla KD's)", lo=0.0,
                           lo_open=True)
        alpha: float = param(0.0, "weight of the label cross-entropy (the paper's experiments: 0)", lo=0.0, hi=1.0)
        null_space: bool = param(True, "project the embeddings onto the null space of the teacher's final layer "
                                 "first (the paper: 'often helps')")
        subclasses: str = param("pca", "where the subclasses come from: pca (LELP), kmeans (clusters of the same "
                                "embeddings, the paper's baseline), oracle (the dataset's true subclasses, e.g. "
                                "digits-bin: the digit; a control)", choices=["pca", "kmeans", "oracle"])

    @classmethod
    def student_settings(cls, cfg, task, settings: dict) -> dict:
        return {**settings, "subclasses": cfg.S}  # the student's head scores S*C pseudo-subclasses

    def __init__(self, ctx, cfg):
        super().__init__(ctx, cfg)
        self.projection = None
        self._targets = None

    def _fit(self):
        if self.cfg.subclasses == "oracle":
            self._targets = oracle_targets(self.ctx.data, self.cfg.S).to(self.ctx.device)
            return
        teacher = self.teacher()
        if not (hasattr(teacher, "embed") and hasattr(teacher, "head")):
            raise ModelError("method=lelp needs a teacher with an embedding and a final linear layer (a retort "
                             "mlp/cnn/resnet or ccexam:mnist)")
        from ..eval import predict

        h = _embed(teacher, self.x, self.ctx.run.eval.batch_size, self.ctx.device)
        self.projection = LelpProjection(h.cpu(), self.y, teacher.head.weight.detach().cpu(), self.cfg.S,
                                         self.cfg.null_space, self.ctx.run.seed).to(self.ctx.device)
        if self.cfg.subclasses == "kmeans":
            self.projection.fit_kmeans(h.cpu(), self.y, self.ctx.run.seed)
        if self.ctx.run.data.augment == "none":
            logits = self._cached  # the training set's teacher logits, when the batches have cached them
            if logits is None:
                logits = predict(teacher, self.x, self.ctx.run.eval.batch_size, self.ctx.device)
            self._targets = self._subclass_targets(h.to(self.ctx.device), logits.to(self.ctx.device))

    @torch.no_grad()
    def _batch_targets(self, batch) -> torch.Tensor:
        if self.projection is None:
            self._fit()
        if self._targets is not None:
            return self._targets[batch["idx"].to(self._targets.device)]
        if self.cfg.subclasses == "oracle":
            raise ConfigError("lelp subclasses=oracle reads the stored subclass of each training row; "
                              "data.augment=none")
        teacher = self.teacher()
        h = teacher.embed(batch["x"])
        return self._subclass_targets(h, teacher.head(h))

    def _subclass_targets(self, h: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if self.cfg.subclasses == "kmeans":
            pc = torch.softmax(logits.float() / self.cfg.tau, -1)
            return (pc[:, :, None] * self.projection.nearest_centroid(h)).flatten(1)
        return subclass_targets(self.projection(h), logits, self.cfg.tau, self.cfg.beta)

    def private_records(self) -> int:
        raise ConfigError("privacy.*: method lelp cannot train under DP-SGD: its subclass targets come from "
                          "projections fitted to the whole training set's embeddings, so every record's target "
                          "depends on the others")

    def loss(self, model, batch) -> LossOut:
        target = self._batch_targets(batch)
        z = model.subclass_logits(batch["x"]).float()
        n = len(batch["y"])
        kl = soft_target_kl(z, target).sum()
        C = z.shape[-1] // self.cfg.S
        ce = F.cross_entropy(torch.logsumexp(z.view(n, C, self.cfg.S), -1), batch["y"], reduction="sum")
        a = self.cfg.alpha
        return LossOut(a * ce + (1 - a) * kl, n, {"kl_subclass": float(kl.detach()) / n, "ce": float(ce.detach()) / n})


@torch.no_grad()
def _embed(model, x: torch.Tensor, batch_size: int, device) -> torch.Tensor:
    model.eval()
    return torch.cat([model.embed(x[i:i + batch_size].to(device)).float() for i in range(0, len(x), batch_size)])
