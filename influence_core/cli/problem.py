"""`train`, `precompute` and `query`: a model, its attribution index, and questions to it."""

from __future__ import annotations

import argparse

from ..progress import tqdm_progress
from .args import (
    add_index_args,
    add_problem_args,
    curvature_config,
    index_config,
    positive_int,
    problem_from_args,
)


def _cmd_train(args: argparse.Namespace) -> int:
    from ..data.training import checkpoint_dir

    problem = problem_from_args(args)
    print(f"test accuracy: {problem.meta['test_accuracy']:.4f}")
    if "seconds_per_epoch" in problem.meta:
        print(f"seconds per epoch: {problem.meta['seconds_per_epoch']}")
    print(f"checkpoint: {checkpoint_dir(problem.config) / 'model.pt'}")
    return 0


def _cmd_precompute(args: argparse.Namespace) -> int:
    import json

    from ..attribution.precompute import barrier, init_distributed, precompute

    rank, _ = init_distributed()
    if rank == 0:  # trains the model if needed; the other ranks wait, then load it
        problem = problem_from_args(args)
    barrier()
    if rank != 0:
        problem = problem_from_args(args)
    folder = precompute(problem, args.method, curvature_config(args), index_config(args),
                        tqdm_progress())
    if rank == 0:
        manifest = json.loads((folder / "manifest.json").read_text())
        print(json.dumps({k: manifest[k] for k in ("timings", "peak_rss_mb")}, indent=1))
        print(f"artifacts: {folder}")
    return 0


def _add_query_args(p: argparse.ArgumentParser) -> None:
    add_index_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--index", type=int, help="a test-set index to explain")
    src.add_argument("--image", help="an image file to explain (an upload)")
    p.add_argument("--label", type=int, default=None, help="query label (default: prediction)")
    p.add_argument("--top", type=positive_int, default=10, help="training examples per list")


def _check_query(args: argparse.Namespace, n_test: int, num_classes: int) -> None:
    if args.index is not None and not 0 <= args.index < n_test:  # -1 is not "the last"
        raise ValueError(f"--index {args.index} is outside the test set (0..{n_test - 1})")
    if args.label is not None and not 0 <= args.label < num_classes:
        raise ValueError(f"--label {args.label} is outside the classes (0..{num_classes - 1})")


def _cmd_query(args: argparse.Namespace) -> int:
    from ..attribution.index import load_index, query_index
    from ..attribution.precompute import artifact_folder
    from ..data.images import decode_image

    problem = problem_from_args(args)
    _check_query(args, len(problem.test), problem.test.num_classes)
    folder = artifact_folder(problem, args.method, curvature_config(args), index_config(args))
    index = load_index(folder, problem.model)
    if args.image is not None:
        image = decode_image(args.image, problem.train.background())
        x, label = problem.test.normalise(image), args.label
    else:
        x = problem.test.tensor([args.index])
        label = args.label if args.label is not None else int(problem.test.labels[args.index])
    helpful, harmful = query_index(index, x, label, args.top)
    for title, ranked in (("helpful", helpful), ("harmful", harmful)):
        print(f"{title}:")
        for i, s in zip(ranked.indices.tolist(), ranked.scores.tolist()):
            print(f"  train[{i}]  label={int(problem.train.labels[i])}  score={s:+.4g}")
    return 0


COMMANDS = {
    "train": (_cmd_train, add_problem_args, "train (or reuse) a model"),
    "precompute": (_cmd_precompute, add_index_args,
                   "fit EK-FAC, self-influence and the attribution index (torchrun-able)"),
    "query": (_cmd_query, _add_query_args, "top helpful/harmful training examples for a query"),
}
