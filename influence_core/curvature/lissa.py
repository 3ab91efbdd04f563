"""LiSSA (Agarwal et al. 2017; the paper's Section 5.1).

r_0 = v;  r_j = v + (I - alpha (G_batch + lambda I)) r_{j-1};  alpha r_J ~= (G + lambda I)^-1 v,
with G_batch a Gauss-Newton estimate on a fresh random mini-batch at each step. It converges only
if alpha (G + lambda I) <= I: by default alpha = 1 / (1.1 (top eigenvalue + lambda)), the top
eigenvalue from power iteration. Gauss-Newton-vector products are J^T H_out J v through
torch.func.jvp / vjp, with H_out = diag(p) - p p^T the softmax cross-entropy output Hessian.
"""

from __future__ import annotations

import warnings

import torch
from torch.func import functional_call, jvp, vjp, vmap

from ..config import LissaConfig
from ..data.datasets import ImageDataset
from ..progress import Progress, silent
from .base import Curvature, model_dtype, trace_over_params
from .gradients import TrackedModel
from .task import Task


class LissaDivergedError(RuntimeError):
    """The recursion's iterates grew beyond what a convergent run allows."""


class Lissa(Curvature):
    name = "lissa"

    def __init__(self, tracked: TrackedModel, task: Task, data: ImageDataset, cfg: LissaConfig,
                 damping: float, scale: float) -> None:
        self.tracked, self.task, self.data, self.cfg = tracked, task, data, cfg
        self.damping, self.scale = damping, scale
        self.theta = tracked.flat_params()
        self.history: list[float] = []  # ||r_j|| of the last run (diagnostics)

    @classmethod
    def fit(
        cls, tracked: TrackedModel, task: Task, data: ImageDataset,
        cfg: LissaConfig = LissaConfig(), progress: Progress = silent,
    ) -> Lissa:
        damping = cfg.damping
        if damping is None:
            damping = cfg.damping_factor * trace_over_params(tracked, task, data, 512, progress)
        est = cls(tracked, task, data, cfg, damping, 1.0)
        est.scale = cfg.scale if cfg.scale is not None else 1.1 * (est.top_eigenvalue() + damping)
        return est

    def gvp(self, vectors: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(k, p) -> (k, p): G_batch v = (1/B) sum_i J_i^T H_out,i J_i v on inputs x."""
        f = self._logits_fn(x)
        logits, pull = vjp(f, self.theta)
        probs = self.task.fisher_weights(logits)
        jv = vmap(lambda v: jvp(f, (self.theta,), (v,))[1])(vectors)  # (k, B, K)
        hjv = probs * jv - probs * (probs * jv).sum(-1, keepdim=True)
        return vmap(lambda c: pull(c)[0])(hjv) / x.shape[0]

    def top_eigenvalue(self, iterations: int = 20, batch: int = 1024) -> float:
        gen = torch.Generator().manual_seed(self.cfg.seed)
        x = self._batch(gen, batch)
        v = torch.randn(1, self.theta.numel(), generator=gen, dtype=self.theta.dtype)
        eig = 0.0
        for _ in range(iterations):
            w = self.gvp(v / v.norm(), x)
            eig, v = float(w.norm()), w
        return eig

    def ihvp_layers(self, vectors: list[torch.Tensor]) -> list[torch.Tensor]:
        flat = torch.cat([v.flatten(1) for v in vectors], 1)
        return self.tracked.split(self.ihvp(flat))

    def ihvp(self, vectors: torch.Tensor, depth: int | None = None) -> torch.Tensor:
        depth = depth or self.cfg.depth
        alpha, lam = 1.0 / self.scale, self.damping
        v = vectors.to(self.theta.dtype)
        bound = v.norm(dim=1) / (alpha * lam)  # the converged ||r|| can be no larger
        gen = torch.Generator().manual_seed(self.cfg.seed)
        total = torch.zeros_like(v)
        for _ in range(self.cfg.repeats):
            r, self.history = v.clone(), []
            for j in range(depth):
                x = self._batch(gen, self.cfg.batch_size)
                r = v + r - alpha * (self.gvp(r, x) + lam * r)
                norms = r.norm(dim=1)
                self.history.append(float(norms.max()))
                limit = 2.0 * torch.minimum(bound, (j + 2) * v.norm(dim=1))
                if not torch.isfinite(norms).all() or (norms > limit + 1e-12).any():
                    msg = (f"LiSSA diverged at step {j + 1} (||r|| = {float(norms.max()):.3g}); "
                           f"increase scale (now {self.scale:.3g}) or damping (now {lam:.3g})")
                    warnings.warn(msg, RuntimeWarning, stacklevel=2)
                    raise LissaDivergedError(msg)
            total += alpha * r
        return (total / self.cfg.repeats).to(vectors.dtype)

    def _batch(self, gen: torch.Generator, size: int) -> torch.Tensor:
        idx = torch.randperm(len(self.data), generator=gen)[:size]  # without replacement
        return self.data.tensor(idx).to(model_dtype(self.tracked))

    def _logits_fn(self, x: torch.Tensor):
        tracked = self.tracked

        def f(theta: torch.Tensor) -> torch.Tensor:
            return functional_call(tracked.model, tracked.as_params(theta), (x,))

        return f
