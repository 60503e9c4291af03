"""`lelp`: pseudo-subclass targets from linear projections of the teacher's final embedding.

"Learning from Linear Projections" / LELP (Loo, Iliopoulos, Hu, Vee; arXiv 2409.20449). With few
classes the teacher's logits carry little dark knowledge; LELP splits each class into S
pseudo-subclasses along informative directions of the teacher's embedding and trains a student
with an S*C-way head on them (the paper's eq. 1, alpha = 0 in all its experiments). The procedure
as the spec reads it (methods/other.md section 2.2; the exact formulas were not published in
reach, so steps 5 and the standardisation are the spec's readings):

1. embeddings h(x) of the training set, per class by the ground-truth label;
2. (optional, `null_space`) h~ = P h, P = I - W^T (W W^T)^-1 W, W the teacher's final layer: drop
   what the logits already carry;
3. per class c: centre at mu_c, top-S principal directions V_c;
4. a Haar-random rotation Q_c in O(S) (drawn once from the run's seed): U_c = V_c Q_c;
5. p_T(c, s | x) = softmax(z / tau)_c * softmax_s(u_cs^T (h~ - mu_c) / (beta sd_cs)), sd_cs the
   projection's standard deviation over class c (so beta does not depend on the embedding scale);
6. L = alpha CE(y, p_S(c|x)) + (1 - alpha) KL(p_T(c, s|x) || p_S(c, s|x)); p_S(c|x) = sum_s p_S(c, s|x).

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

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(N, C, S): the standardised projection of each embedding on each class's directions."""
        ht = h.float() @ self.P.T
        return torch.einsum("ncd,cds->ncs", ht[:, None, :] - self.mu[None], self.U) / self.sd[None]


def subclass_targets(proj: torch.Tensor, teacher_logits: torch.Tensor, tau: float, beta: float) -> torch.Tensor:
    """p_T(c, s | x), (N, C*S) with index c*S + s: the class marginal is softmax(z / tau) exactly."""
    pc = torch.softmax(teacher_logits.float() / tau, -1)
    ps = torch.softmax(proj / beta, -1)
    return (pc[:, :, None] * ps).flatten(1)


class LELP(ClassifyMethod):
    name = "lelp"
    paper = "Learning from Linear Projections / LELP (Loo, Iliopoulos, Hu, Vee; arXiv 2409.20449)"
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

    @staticmethod
    def student_subclasses(cfg) -> int:
        return cfg.S

    def __init__(self, ctx, cfg):
        super().__init__(ctx, cfg)
        self.projection = None
        self._targets = None

    def _fit(self):
        teacher = self.teacher()
        if not (hasattr(teacher, "embed") and hasattr(teacher, "head")):
            raise ModelError("method=lelp needs a teacher with an embedding and a final linear layer (a retort "
                             "mlp/cnn/resnet or ccexam:mnist)")
        from ..eval import predict

        h = _embed(teacher, self.x, self.ctx.run.eval.batch_size, self.ctx.device)
        self.projection = LelpProjection(h.cpu(), self.y, teacher.head.weight.detach().cpu(), self.cfg.S,
                                         self.cfg.null_space, self.ctx.run.seed).to(self.ctx.device)
        if self.ctx.run.data.augment == "none":
            logits = predict(teacher, self.x, self.ctx.run.eval.batch_size, self.ctx.device)
            self._targets = subclass_targets(self.projection(h.to(self.ctx.device)), logits.to(self.ctx.device),
                                             self.cfg.tau, self.cfg.beta)

    @torch.no_grad()
    def _batch_targets(self, batch) -> torch.Tensor:
        if self.projection is None:
            self._fit()
        if self._targets is not None:
            return self._targets[batch["idx"].to(self._targets.device)]
        teacher = self.teacher()
        h = teacher.embed(batch["x"])
        return subclass_targets(self.projection(h), teacher.head(h), self.cfg.tau, self.cfg.beta)

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
