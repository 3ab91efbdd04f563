"""Kronecker-factored curvature's building blocks, shared by K-FAC, EK-FAC, their fit
(curvature.fit) and the attribution index: a layer's factors, its eigenbases, and the rotations
of captured gradients into them.

G_l ~= (Q_S (x) Q_A) diag(Lambda) (Q_S (x) Q_A)^T per layer; R_i = Q_S^T DW_i Q_A is example
i's gradient in that eigenbasis.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import KFACConfig

TINY = 1e-20  # eigenvector entries below this are rounding noise, and denormal in float32


@dataclass
class KroneckerFactors:
    """One layer's eigenbasis and diagonal: G_l ~= (Q_S (x) Q_A) diag(Lambda) (Q_S (x) Q_A)^T."""

    q_a: torch.Tensor  # (d_in, d_in)
    q_s: torch.Tensor  # (d_out, d_out)
    eigenvalues: torch.Tensor  # Lambda (d_out, d_in)
    damping: float

    def __post_init__(self) -> None:  # also for bases fitted before eigenbasis() zeroed noise
        self.q_a = torch.where(self.q_a.abs() < TINY, 0.0, self.q_a)
        self.q_s = torch.where(self.q_s.abs() < TINY, 0.0, self.q_s)



def eigenbasis(cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(eigenvalues >= 0, eigenvectors) with rounding-noise entries zeroed: cast to float32
    they would be denormals, which make every product with the basis several times slower.
    Coordinates of variance exactly 0 (a dead ReLU channel's output gradient, an input feature
    that is 0 on every example) are split off first: they keep unit eigenvectors with
    eigenvalue 0, listed first, and every other eigenvector is exactly 0 on them (Side)."""
    dead = cov.diagonal() == 0
    if not dead.any() or dead.all():
        e, q = torch.linalg.eigh(cov)
        return e.clamp_min(0.0), torch.where(q.abs() < TINY, 0.0, q)
    keep, drop = (~dead).nonzero()[:, 0], dead.nonzero()[:, 0]
    e_live, q_live = eigenbasis(cov[keep][:, keep])
    q = cov.new_zeros(cov.shape)
    q[drop, torch.arange(len(drop))] = 1.0
    q[keep[:, None], len(drop) + torch.arange(len(keep))] = q_live
    return torch.cat([e_live.new_zeros(len(drop)), e_live]), q



def canonical(q: torch.Tensor) -> torch.Tensor:
    """Eigenvectors with their largest entry positive: one basis however the covariance was
    summed (in one process or W, in the library or the precompute)."""
    pick = q.abs().argmax(0)
    return q * torch.sign(q[pick, torch.arange(q.shape[1])])

@dataclass
class Side:
    """One Kronecker factor's eigenbasis as the data passes use it: x (..., d) rotates to
    x[..., coords] @ q, k columns, the live directions `dirs` of the full basis. Skipped: unit
    eigenvectors of eigenvalue exactly 0 (eigenbasis' dead coordinates), whose coordinates
    `dead` are 0 in every captured vector of the fitted data, so their rotated entries are 0.
    A batch with a nonzero there is rotated in the full basis instead (Rotation.sides)."""

    q: torch.Tensor  # (len(coords), len(dirs))
    coords: torch.Tensor | None  # None: every coordinate
    dirs: torch.Tensor
    dead: torch.Tensor

    @classmethod
    def split(cls, q: torch.Tensor, zero: torch.Tensor) -> Side:
        """`zero` (d,) bool: the directions whose eigenvalue (or every Lambda entry) is 0."""
        dead_dirs = (zero & ((q != 0).sum(0) == 1)).nonzero()[:, 0]
        dead = q[:, dead_dirs].abs().argmax(0)
        dirs = _complement(dead_dirs, q.shape[1])
        if len(dead) == 0 or (q[dead][:, dirs] != 0).any():
            return cls.whole(q)
        return cls(q[_complement(dead, q.shape[0])][:, dirs], _complement(dead, q.shape[0]),
                   dirs, dead)

    @classmethod
    def whole(cls, q: torch.Tensor) -> Side:
        """Every coordinate and direction."""
        return cls(q, None, torch.arange(q.shape[1]), torch.zeros(0, dtype=torch.long))

    def take(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.coords is None else x[..., self.coords]


def _complement(idx: torch.Tensor, n: int) -> torch.Tensor:
    mask = torch.ones(n, dtype=torch.bool)
    mask[idx] = False
    return mask.nonzero()[:, 0]


@dataclass
class Rotation:
    """A layer's (A side, S side) for the data passes, and the full basis for batches that
    reach a skipped coordinate."""

    a: Side
    s: Side
    full_a: Side
    full_s: Side

    @classmethod
    def of(cls, q_a: torch.Tensor, q_s: torch.Tensor, zero_a: torch.Tensor | None = None,
           zero_s: torch.Tensor | None = None) -> Rotation:
        """`zero_*`: the directions whose eigenvalue is exactly 0 (None: skip nothing)."""
        full_a, full_s = Side.whole(q_a), Side.whole(q_s)
        return cls(full_a if zero_a is None else Side.split(q_a, zero_a),
                   full_s if zero_s is None else Side.split(q_s, zero_s), full_a, full_s)

    def sides(self, a: torch.Tensor, g: torch.Tensor) -> tuple[Side, Side]:
        """The skipping sides if a and g are 0 on every skipped coordinate, else the full."""
        for side, x in ((self.a, a), (self.s, g)):
            if len(side.dead) and bool(x[..., side.dead].any()):
                return self.full_a, self.full_s
        return self.a, self.s

    def to(self, dtype: torch.dtype) -> Rotation:
        def cast(side: Side) -> Side:
            return Side(side.q.to(dtype), side.coords, side.dirs, side.dead)

        return Rotation(cast(self.a), cast(self.s), cast(self.full_a), cast(self.full_s))


def heuristic_damping(eigenvalues: torch.Tensor, cfg: KFACConfig) -> float:
    if cfg.damping is not None:
        return cfg.damping
    return cfg.damping_factor * float(eigenvalues.mean())


def rotate_conv(a: torch.Tensor, g: torch.Tensor, q_a: torch.Tensor, q_s: torch.Tensor
                ) -> torch.Tensor:
    """R_i = Q_S^T DW_i Q_A (B, k_s, k_a) for a conv layer's captured a (B, T, d_in) and
    g (B, T, d_out), DW_i = g_i^T a_i, in the bases' dtype. Never rotates all T patches; the
    cheaper of two orders: with T < d_in (mnist/cnn conv2: 121 < 289) the T output-gradient
    rows are rotated first, (g_i Q_S)^T a_i Q_A; else DW_i is formed first (conv1: 676 > 10)
    in the dtype of the larger of a, g (no copy of it)."""
    dtype = q_a.dtype
    if a.shape[1] < a.shape[2]:
        return torch.einsum("bts,bti->bsi", g.to(dtype) @ q_s, a.to(dtype)) @ q_a
    big = a.dtype if a.numel() >= g.numel() else g.dtype
    dw = torch.einsum("bto,bti->boi", g.to(big), a.to(big)).to(dtype)
    return q_s.T @ dw @ q_a


def cast_factors(factors: list[KroneckerFactors], dtype: torch.dtype) -> list[KroneckerFactors]:
    return [
        KroneckerFactors(f.q_a.to(dtype), f.q_s.to(dtype), f.eigenvalues.to(dtype), f.damping)
        for f in factors
    ]
