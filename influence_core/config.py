"""Every frozen configuration dataclass. Frozen so that a config hashes, keys caches and is stored
with `dataclasses.asdict` beside the artifact it produced."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def artifacts_root() -> Path:
    """Where checkpoints, factors, indices and the decision log live ($INFLUENCE_AUDIT_HOME)."""
    return Path(os.environ.get("INFLUENCE_AUDIT_HOME", "artifacts")).resolve()


@contextlib.contextmanager
def fresh_artifacts_root(home: Path) -> Iterator[Path]:
    """`home`, emptied, as $INFLUENCE_AUDIT_HOME for the duration (benchmarks from scratch)."""
    shutil.rmtree(home, ignore_errors=True)
    with artifacts_home(home) as root:
        yield root


@contextlib.contextmanager
def artifacts_home(home: Path) -> Iterator[Path]:
    """`home` (created if missing, kept as it is) as $INFLUENCE_AUDIT_HOME for the duration."""
    home.mkdir(parents=True, exist_ok=True)
    before = os.environ.get("INFLUENCE_AUDIT_HOME")
    os.environ["INFLUENCE_AUDIT_HOME"] = str(home)
    try:
        yield home.resolve()
    finally:
        if before is None:
            os.environ.pop("INFLUENCE_AUDIT_HOME", None)
        else:
            os.environ["INFLUENCE_AUDIT_HOME"] = before


def default_data_root() -> Path:
    """Where torchvision datasets are read from or downloaded to ($INFLUENCE_AUDIT_DATA)."""
    return Path(os.environ.get("INFLUENCE_AUDIT_DATA", "data")).resolve()


def config_hash(*configs: object, length: int = 12) -> str:
    """A stable content hash of one or more dataclass configs (sorted-key JSON, sha256)."""
    payload = [_hashed_fields(c) if dataclasses.is_dataclass(c) else c for c in configs]
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def _hashed_fields(config: object) -> dict:
    """asdict, without fields marked `unhashed_default` that hold their default (a field added
    later then keeps the hashes, and cached artifacts, of every config that leaves it alone)."""
    out = dataclasses.asdict(config)
    for f in dataclasses.fields(config):
        if f.metadata.get("unhashed_default") and out[f.name] == f.default:
            del out[f.name]
    return out


def _check_range(name: str, value: float, low: float, high: float, open_low: bool = False
                 ) -> None:
    """Refuse a value that is not a finite number in [low, high) ((low, high) with open_low)."""
    if not (math.isfinite(value) and (low < value if open_low else low <= value) and value < high):
        raise ValueError(f"{name} must be a finite number in {'(' if open_low else '['}{low:g}, "
                         f"{high:g}), got {value}")


@dataclass(frozen=True)
class TrainConfig:
    dataset: str = "digits"
    model: str = "mlp"
    epochs: int = 30  # digits/mlp reference recipe; mnist/cnn uses 3
    batch_size: int = 64
    lr: float = 0.05  # SGD, momentum 0.9, cosine decay to 0
    momentum: float = 0.9
    weight_decay: float = 1e-3
    seed: int = 0  # model init and batch order
    noise: float = 0.0  # fraction of training labels flipped (label-noise experiments)
    noise_seed: int = 0
    # which labels are flipped and to what: uniform | pair | instance (data/noise.py)
    noise_kind: str = dataclasses.field(default="uniform", metadata={"unhashed_default": True})
    subset_seed: int = -1  # >= 0: train on a seeded random subset (LDS); -1: all examples
    subset_fraction: float = 1.0
    # batch order only (>= 0); -1: from `seed` like the init. LDS uses it to tell the noise of
    # SGD's batch order apart from that of the initialisation.
    order_seed: int = dataclasses.field(default=-1, metadata={"unhashed_default": True})

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be positive")
        _check_range("lr", self.lr, 0.0, math.inf, open_low=True)
        _check_range("momentum", self.momentum, 0.0, 1.0)
        _check_range("weight_decay", self.weight_decay, 0.0, math.inf)
        if not 0.0 <= self.noise < 1.0:
            raise ValueError(f"noise must be in [0, 1), got {self.noise}")
        if self.noise_kind not in ("uniform", "pair", "instance"):
            raise ValueError(f"noise_kind must be uniform, pair or instance, "
                             f"got {self.noise_kind!r}")
        if not 0.0 < self.subset_fraction <= 1.0:
            raise ValueError(f"subset_fraction must be in (0, 1], got {self.subset_fraction}")


#: Training recipes that reach the accuracy goals on 2 CPU cores (README table).
RECIPES: dict[tuple[str, str], dict] = {
    ("digits", "mlp"): dict(epochs=30),
    ("digits", "cnn"): dict(epochs=30),
    ("mnist", "cnn"): dict(epochs=3, batch_size=128, lr=0.05, weight_decay=5e-4),
    ("mnist", "mlp"): dict(epochs=5, batch_size=128),
    ("fashion_mnist", "cnn"): dict(epochs=5, batch_size=128, lr=0.05, weight_decay=5e-4),
    ("fashion_mnist", "mlp"): dict(epochs=5, batch_size=128),
    ("cifar10", "cnn"): dict(epochs=10, batch_size=128),
}


def recipe(dataset: str, model: str, **overrides: object) -> TrainConfig:
    """The default TrainConfig for a (dataset, model) pair, with explicit overrides applied."""
    base = dict(RECIPES.get((dataset.split(":")[0], model), dict(epochs=10)))
    base.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(dataset=dataset, model=model, **base)


FISHER_MODES = ("sampled", "expected", "empirical")


MATMUL = ("auto", "float32", "bfloat16")  # curvature.base.matmul_dtype reads these


def _check_curvature(damping: float | None, damping_factor: float, fisher: str) -> None:
    if damping is not None and damping < 0:
        raise ValueError(f"damping must be >= 0, got {damping}")
    if damping_factor <= 0:
        raise ValueError(f"damping_factor must be > 0, got {damping_factor}")
    if fisher not in FISHER_MODES:
        raise ValueError(f"fisher must be one of {FISHER_MODES}, got {fisher!r}")


@dataclass(frozen=True)
class EKFACConfig:
    damping: float | None = None  # None: damping_factor x mean fitted eigenvalue, per layer
    damping_factor: float = 0.1  # Kronfluence's heuristic; best LDS on digits/mlp
    fisher: str = "sampled"  # sampled (true Fisher, 1 label/example) | expected | empirical
    batch_size: int = 128  # per forward/backward; 128 beats 512 on CPU (cache), measured
    seed: int = 0  # pseudo-label sampling
    # precompute: fit covariances and eigenvalues on at most this many seeded examples (like
    # Kronfluence's covariance_/lambda_max_examples); None: all. Scores always cover every example.
    max_examples: int | None = None
    # precompute: covariances (pass 1) on at most this many of those (Kronfluence's
    # covariance_max_examples); the eigenvalue correction still sees max_examples. None: all.
    covariance_max_examples: int | None = None
    # the library fit's big products of a float32 model (fit passes under autocast, covariance
    # and rotation GEMMs; the rotations of self-influence): auto = bfloat16 where the CPU has
    # bf16 matrix units, else float32. Sums, squares and damping stay float32 / float64. The
    # precompute follows IndexConfig.matmul instead (one setting for its three passes).
    matmul: str = "auto"

    def __post_init__(self) -> None:
        _check_curvature(self.damping, self.damping_factor, self.fisher)
        if self.matmul not in MATMUL:
            raise ValueError(f"matmul must be one of {MATMUL}, got {self.matmul!r}")
        for name in ("max_examples", "covariance_max_examples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be positive, got {value}")


@dataclass(frozen=True)
class KFACConfig(EKFACConfig):
    """K-FAC: eigenvalues e_S e_A^T of the Kronecker factors instead of fitted ones."""


@dataclass(frozen=True)
class ExactConfig:
    damping: float | None = None  # None: damping_factor x trace(G) / p
    damping_factor: float = 0.1
    fisher: str = "expected"  # the Gauss-Newton matrix itself: all classes, weighted by p
    batch_size: int = 256
    max_params: int = 50_000  # dense float64 G beyond this is refused
    seed: int = 0

    def __post_init__(self) -> None:
        _check_curvature(self.damping, self.damping_factor, self.fisher)


@dataclass(frozen=True)
class LissaConfig:
    depth: int = 1000  # recursion steps J
    # alpha = 1 / scale; None: 1.1 x (power-iteration top eigenvalue + lambda)
    scale: float | None = None
    damping: float | None = None  # None: damping_factor x trace(G) / p
    damping_factor: float = 0.1
    repeats: int = 1  # independent recursions averaged
    batch_size: int = 128  # examples per stochastic G estimate
    seed: int = 0

    def __post_init__(self) -> None:
        _check_curvature(self.damping, self.damping_factor, "expected")
        if self.depth < 1 or self.repeats < 1 or self.batch_size < 1:
            raise ValueError("depth, repeats and batch_size must be positive")
        if self.scale is not None and self.scale <= 0:
            raise ValueError(f"scale must be > 0, got {self.scale}")


@dataclass(frozen=True)
class IdentityConfig:
    """Plain gradient dot product: G + lambda I replaced by I (the baseline)."""


CURVATURE_CONFIGS = {
    "ekfac": EKFACConfig, "kfac": KFACConfig, "exact": ExactConfig,
    "lissa": LissaConfig, "identity": IdentityConfig,
}


@dataclass(frozen=True)
class IndexConfig:
    dim: int = 4096  # eigen-directions kept over the non-rank-one (conv) layers (see README)
    rank: int = 16  # singular pairs of a query's kernel per factorised (linear) layer
    factorise: bool = True  # False: rank-one layers also go through the `dim` eigen-directions
    dtype: str = "float16"  # stored precision: float16 | float32
    shard_size: int = 4096  # training examples per resumable (and distributed) shard
    batch_size: int = 128  # examples per forward/backward in the scoring pass (cache-friendly)
    measurement: str = "loss"  # query measurement f: loss | margin
    # precompute's big products (covariances, rotations into the eigenbasis) of a float32 model:
    # auto = bfloat16 where the CPU has bf16 matrix units (AMX / AVX512-BF16: 3x faster here),
    # else float32. Sums, squares, scaling and the stored rows are unaffected (README).
    matmul: str = "auto"

    def __post_init__(self) -> None:
        if min(self.dim, self.rank, self.batch_size, self.shard_size) < 1:
            raise ValueError("dim, rank, batch_size and shard_size must be positive")
        if self.dtype not in ("float16", "float32"):
            raise ValueError(f"dtype must be float16 or float32, got {self.dtype!r}")
        if self.matmul not in MATMUL:
            raise ValueError(f"matmul must be one of {MATMUL}, got {self.matmul!r}")


EXPERIMENTS = ("remove", "relabel")  # verify-unlearning's edit kinds
REFINE_POINTS = 8192  # kept points in the refinement's edited objective (audit.unlearning)


@dataclass(frozen=True)
class VerifyConfig:
    dataset: str = "digits"
    model: str = "mlp"
    curvature: str = "ekfac"
    damping: float | None = None  # absolute lambda; None: calibrated on held-out sets
    damping_grid: tuple[float, ...] = (1.0, 10.0, 30.0, 100.0, 300.0, 1000.0)  # x weight decay
    removal_fraction: float = 0.01  # the headline removal set: top 1% self-influence
    extra_sets: bool = True  # the other reported removal sets (Pearson needs them)
    noise: float = 0.1  # label-repair run
    refine_steps: int = 3  # line-searched steps on the edited objective (unlearning.refine)
    full_refine: bool = False  # also refine further (full_refine_steps): refined_full
    full_refine_steps: int = 20
    refine_points: int = REFINE_POINTS  # the edited objective's subsample of kept points
    noise_floor: bool = True  # retrain the edited data with seed 1
    experiments: tuple[str, ...] = EXPERIMENTS
    latency_repeats: int = 20
