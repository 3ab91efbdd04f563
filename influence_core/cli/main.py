"""Command line: `python -m influence_core <command>`. Every command calls the same public
functions the app uses."""

from __future__ import annotations

import argparse
import sys

from ..config import recipe
from ..optional import MissingExtra
from ..progress import tqdm_progress
from ..runtime import tune_runtime


def _add_problem_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="digits", help="digits | mnist | fashion_mnist | cifar10 | "
                   "flowers102 | food101 | imagefolder:<path>")
    p.add_argument("--model", default="mlp", help="mlp | cnn | resnet18 | resnet50 | vit_b_16")
    p.add_argument("--data-root", default=None, help="torchvision data root (default ./data)")
    p.add_argument("--noise", type=float, default=None, help="fraction of labels to flip")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--checkpoint", default=None, help="your own state_dict (weights_only)")


def problem_from_args(args: argparse.Namespace):
    from ..data.registry import load_problem

    cfg = recipe(args.dataset, args.model, noise=args.noise, seed=args.seed, epochs=args.epochs,
                 weight_decay=args.weight_decay)
    return load_problem(cfg, args.data_root, args.checkpoint, tqdm_progress())


def _cmd_train(args: argparse.Namespace) -> int:
    from ..data.training import checkpoint_dir

    problem = problem_from_args(args)
    print(f"test accuracy: {problem.meta['test_accuracy']:.4f}")
    if "seconds_per_epoch" in problem.meta:
        print(f"seconds per epoch: {problem.meta['seconds_per_epoch']}")
    print(f"checkpoint: {checkpoint_dir(problem.config) / 'model.pt'}")
    return 0


def _add_index_args(p: argparse.ArgumentParser) -> None:
    _add_problem_args(p)
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


def _index_config(args: argparse.Namespace):
    from ..config import IndexConfig

    over = {"dim": args.dim, "rank": args.rank, "factorise": args.factorise,
            "measurement": args.measurement, "shard_size": args.shard_size,
            "matmul": args.matmul}
    return IndexConfig(**{k: v for k, v in over.items() if v is not None})


def _curvature_config(args: argparse.Namespace):
    from ..config import EKFACConfig

    over = {"max_examples": args.fit_examples,
            "covariance_max_examples": args.covariance_examples}
    return EKFACConfig(**{k: v for k, v in over.items() if v is not None})


def _cmd_precompute(args: argparse.Namespace) -> int:
    import json

    from ..attribution.precompute import barrier, init_distributed, precompute

    rank, _ = init_distributed()
    if rank == 0:  # trains the model if needed; the other ranks wait, then load it
        problem = problem_from_args(args)
    barrier()
    if rank != 0:
        problem = problem_from_args(args)
    folder = precompute(problem, args.method, _curvature_config(args), _index_config(args),
                        tqdm_progress())
    if rank == 0:
        manifest = json.loads((folder / "manifest.json").read_text())
        print(json.dumps({k: manifest[k] for k in ("timings", "peak_rss_mb")}, indent=1))
        print(f"artifacts: {folder}")
    return 0


def _add_query_args(p: argparse.ArgumentParser) -> None:
    _add_index_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--index", type=int, help="a test-set index to explain")
    src.add_argument("--image", help="an image file to explain (an upload)")
    p.add_argument("--label", type=int, default=None, help="query label (default: prediction)")
    p.add_argument("--top", type=int, default=10)


def _cmd_query(args: argparse.Namespace) -> int:
    from PIL import Image

    from ..attribution.index import load_index, query_index
    from ..attribution.precompute import artifact_folder

    problem = problem_from_args(args)
    folder = artifact_folder(problem, args.method, _curvature_config(args), _index_config(args))
    index = load_index(folder, problem.model)
    if args.image is not None:
        x, label = problem.test.normalise(Image.open(args.image)), args.label
    else:
        x = problem.test.tensor([args.index])
        label = args.label if args.label is not None else int(problem.test.labels[args.index])
    helpful, harmful = query_index(index, x, label, args.top)
    for title, ranked in (("helpful", helpful), ("harmful", harmful)):
        print(f"{title}:")
        for i, s in zip(ranked.indices.tolist(), ranked.scores.tolist()):
            print(f"  train[{i}]  label={int(problem.train.labels[i])}  score={s:+.4g}")
    return 0


def _add_bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("mode", choices=sorted(BENCH_MODES))
    _add_index_args(p)
    p.add_argument("--out", default=None, help="JSON report path (default artifacts/bench/...)")
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--width", type=int, default=None, help="query: load only this many columns")
    p.add_argument("--skip-quality", action="store_true", help="query: latency only")
    p.add_argument("--subset", type=int, default=None,
                   help="core: time both we and Kronfluence on this many seeded examples "
                        "(default: the whole training set)")
    p.add_argument("--bench-batch-size", type=int, default=128,
                   help="core: examples per forward-backward, the same for both")
    p.add_argument("--threads", type=int, default=2, help="core: torch threads for both")


def _cmd_bench(args: argparse.Namespace) -> int:
    return BENCH_MODES[args.mode](args)


def _bench_query(args: argparse.Namespace) -> int:
    from ..evaluation.bench_query import bench_query_cli

    return bench_query_cli(args, problem_from_args(args), _index_config(args),
                           _curvature_config(args))


def _bench_core(args: argparse.Namespace) -> int:
    from ..evaluation.bench_core import bench_core

    bench_core(args.data_root, args.subset, args.bench_batch_size, args.threads, args.out,
               tqdm_progress())
    return 0


BENCH_MODES = {"query": _bench_query, "core": _bench_core}  # bench <mode>: add other modes here

COMMANDS = {
    "train": (_cmd_train, _add_problem_args, "train (or reuse) a model"),
    "precompute": (_cmd_precompute, _add_index_args,
                   "fit EK-FAC, self-influence and the attribution index (torchrun-able)"),
    "query": (_cmd_query, _add_query_args, "top helpful/harmful training examples for a query"),
    "bench": (_cmd_bench, _add_bench_args, "benchmarks: bench query | bench core"),
}

from .evaluate import COMMAND as _EVALUATE  # noqa: E402  (cli_evaluate imports this module)

COMMANDS["evaluate"] = _EVALUATE
from .unlearn import COMMANDS as _UNLEARN  # noqa: E402  (cli_unlearn imports this module)

COMMANDS.update(_UNLEARN)
from ..evaluation.benchmarks_doc import COMMAND as _REPORT

COMMANDS["report"] = _REPORT


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m influence_core")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, add_args, help_text) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help_text))
    args = parser.parse_args(argv)
    tune_runtime()
    try:
        return COMMANDS[args.command][0](args)
    # DatasetError, CheckpointError, a bad config, a missing optional extra
    except (ValueError, FileNotFoundError, MissingExtra) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
