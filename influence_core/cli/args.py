"""The arguments several commands share, declared once: which problem (dataset, model, data
root, recipe overrides, checkpoint) and which attribution index, with their defaults."""

from __future__ import annotations

import argparse
import math

from ..config import recipe
from ..progress import tqdm_progress

DATASET, MODEL = "digits", "mlp"  # the default problem of every command
DATASET_HELP = ("digits | mnist | fashion_mnist | cifar10 | flowers102 | food101 | "
                "imagefolder:<path>")
MODEL_HELP = "mlp | cnn | resnet18 | resnet50 | vit_b_16"
DATA_ROOT_HELP = "torchvision data root (default ./data)"


def add_data_args(p: argparse.ArgumentParser, described: bool = True) -> None:
    """--dataset, --model, --data-root. described=False leaves out their help lines (evaluate
    and verify-unlearning list them bare)."""
    p.add_argument("--dataset", default=DATASET, help=DATASET_HELP if described else None)
    p.add_argument("--model", default=MODEL, help=MODEL_HELP if described else None)
    p.add_argument("--data-root", default=None, help=DATA_ROOT_HELP if described else None)


def add_problem_args(p: argparse.ArgumentParser) -> None:
    """The data arguments plus the recipe's overrides and a user's checkpoint."""
    add_data_args(p)
    p.add_argument("--noise", type=float, default=None, help="fraction of labels to flip")
    p.add_argument("--noise-kind", default=None, choices=("uniform", "pair", "instance"),
                   help="which labels --noise flips and to what (default uniform)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--checkpoint", default=None, help="your own state_dict (weights_only)")


def problem_from_args(args: argparse.Namespace):
    """The Problem the problem arguments name: trained, or loaded from the cache."""
    from ..data.registry import load_problem

    cfg = recipe(args.dataset, args.model, noise=args.noise, seed=args.seed, epochs=args.epochs,
                 weight_decay=args.weight_decay, noise_kind=getattr(args, "noise_kind", None))
    return load_problem(cfg, args.data_root, args.checkpoint, tqdm_progress())


def add_index_args(p: argparse.ArgumentParser) -> None:
    """The problem arguments plus the attribution index's and its EK-FAC fit's settings."""
    add_problem_args(p)
    p.add_argument("--method", default="ekfac", help="curvature (the index needs ekfac)")
    p.add_argument("--dim", type=int, default=None,
                   help="eigen-directions kept over the conv (non-rank-one) layers")
    p.add_argument("--rank", type=int, default=None, help="query kernel rank per linear layer")
    p.add_argument("--no-factorise", dest="factorise", action="store_const", const=False,
                   default=None, help="linear layers as eigen-directions too (the old index)")
    p.add_argument("--measurement", default=None, help="query measurement: loss | margin")
    p.add_argument("--shard-size", type=int, default=None, help="examples per resumable shard")
    p.add_argument("--fit-examples", type=int, default=None,
                   help="fit EK-FAC on at most this many seeded examples (default: all)")
    p.add_argument("--covariance-examples", type=int, default=None,
                   help="EK-FAC covariances (pass 1) on at most this many of them")
    p.add_argument("--matmul", default=None, choices=("auto", "float32", "bfloat16"),
                   help="precision of precompute's big products (auto: bfloat16 where the CPU "
                        "has bf16 units)")


def index_config(args: argparse.Namespace):
    """IndexConfig from the index arguments (defaults where not given)."""
    from ..config import IndexConfig

    over = {"dim": args.dim, "rank": args.rank, "factorise": args.factorise,
            "measurement": args.measurement, "shard_size": args.shard_size,
            "matmul": args.matmul}
    return IndexConfig(**{k: v for k, v in over.items() if v is not None})


def curvature_config(args: argparse.Namespace):
    """EKFACConfig from --fit-examples / --covariance-examples (defaults where not given)."""
    from ..config import EKFACConfig

    over = {"max_examples": args.fit_examples,
            "covariance_max_examples": args.covariance_examples}
    return EKFACConfig(**{k: v for k, v in over.items() if v is not None})


def positive_float(text: str) -> float:
    """argparse type: a finite float > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be > 0 and finite, got {text}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value
