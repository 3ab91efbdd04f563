"""The cases of `bench faults` (faults.py): each feeds one class of bad input to a real entry point
in the scratch folder and returns its report row. CASES lists them in report order."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from ..evaluation import fault_inputs as inputs
from .fault_disk import full_disk, full_log, full_precompute
from .faults import QUICK, Outcome, Scratch, row, run_cli, run_core

UPLOAD = "app_api explain_image (an upload)"


def _tree(home: Path) -> dict[str, int]:
    """path -> size of every file in the scratch folder but the inputs: what a refusal must
    leave as it was."""
    return {str(p.relative_to(home)): p.stat().st_size for p in sorted(home.rglob("*"))
            if p.is_file() and p.relative_to(home).parts[0] != "inputs"}


def _index(s: Scratch) -> object:
    if s.index is None:
        from ..app_api import open_index

        s.index = open_index(s.quick_problem())
    return s.index


def _upload_refused(name: str, given: str, data: Callable[[], bytes]) -> Callable:
    def case(s: Scratch) -> dict:
        from ..app_tables import explain_image

        index, train, given_bytes = _index(s), s.quick_problem().train, data()
        before = _tree(s.home)
        outcome, _ = run_core(lambda: explain_image(index, train, given_bytes))
        return row(s, name, given, UPLOAD, "ImageError", outcome, _tree(s.home) != before,
                   "artifact files before == after")
    return case


def _upload_converted(name: str, given: str, data: Callable[[], bytes],
                      probe: tuple[int, int] | None = None) -> Callable:
    """An image the app must accept: explain_image returns, and decode_image gives 8-bit L or
    RGB (`probe`: a pixel whose value is reported, e.g. 16-bit grey's mid value)."""
    def case(s: Scratch) -> dict:
        from ..app_tables import explain_image
        from ..data.images import decode_image

        index, train, given_bytes = _index(s), s.quick_problem().train, data()
        outcome, value = run_core(lambda: explain_image(index, train, given_bytes))
        converted = None
        if value is not None:
            image = decode_image(given_bytes, train.background())
            converted = inputs.describe(image)
            if probe is not None:
                converted += f"; pixel {probe} became {image.getpixel(probe)}"
            converted += f"; model input {tuple(train.normalise(image).shape)}"
        return row(s, name, given, UPLOAD, "converted", outcome, False,
                   "nothing written by an upload", converted)
    return case


def _checkpoint_case(name: str, given: str, build: Callable[[Scratch, Path], Path]) -> Callable:
    def case(s: Scratch) -> dict:
        marker = s.path(f"{name}.marker")
        path = build(s, s.path(f"{name}.pt"))
        before = _tree(s.home)
        outcome = run_cli(["precompute", "--checkpoint", str(path)])
        lost = _tree(s.home) != before or marker.exists()
        check = "no index or factors written" + ("; payload marker not created"
                                                 if "pickle" in name else "")
        return row(s, name, given, "CLI precompute --checkpoint", "exit 2", outcome, lost, check)
    return case


def _other_architecture(s: Scratch, path: Path) -> Path:
    import torch

    from ..data.models import build_model

    torch.save(build_model("cnn", (1, 8, 8), 10).state_dict(), path)
    return path


def _state(s: Scratch) -> dict:
    return s.quick_problem().model.state_dict()


def _cli_refused(name: str, given: str, argv: list[str], subtree: str) -> Callable:
    def case(s: Scratch) -> dict:
        before = _tree(s.home)
        outcome = run_cli(argv)
        after = _tree(s.home)
        changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
        return row(s, name, given, f"CLI {argv[0]} {argv[1]}", "exit 2", outcome,
                   any(k.startswith(subtree) for k in changed),
                   f"nothing new under {subtree}/")
    return case


def _session(s: Scratch) -> object:
    if s.session is None:
        from ..audit.session import open_session

        s.session = open_session(s.quick_problem(), "kfac", s.home / "decisions" / "faults.db")
        s.session.record(5, "keep", annotator="bench")  # a log with something to lose
    return s.session


def _label_out_of_range(s: Scratch) -> dict:
    from ..app_tables import record_decision

    session = _session(s)
    before = session.log.decisions()
    outcome, value = run_core(lambda: record_decision(session, 3, "relabel", 99, "bench",
                                                      session.log.version()))
    if isinstance(value, str):  # the app shows the returned reason
        outcome = Outcome("refusal returned", value, False)
    return row(s, "label out of range", "relabel train[3] to class 99 (digits: 0..9)",
               "app_tables record_decision (Review buttons)", "refusal returned", outcome,
               session.log.decisions() != before, "decision log rows before == after")


def _label_out_of_range_cli(s: Scratch) -> dict:
    session = _session(s)
    before = session.log.decisions()
    outcome = run_cli(["unlearn", *QUICK, "--method", "kfac", "--log", str(session.log.path),
                       "--relabel", "4:99"])
    return row(s, "label out of range (CLI)", "unlearn --relabel 4:99", "CLI unlearn --relabel",
               "exit 2", outcome, session.log.decisions() != before,
               "decision log rows before == after")


def _damping_core(s: Scratch) -> dict:
    from ..audit.session import open_session

    before = _tree(s.home)
    outcome, _ = run_core(lambda: open_session(s.quick_problem(), "kfac", damping=-1.0))
    return row(s, "damping <= 0 (core)", "damping=-1.0", "audit open_session", "ValueError",
               outcome, _tree(s.home) != before, "no decision log created")


def _nan_loss(s: Scratch) -> dict:
    from ..config import recipe
    from ..data.registry import load_problem
    from ..data.training import checkpoint_dir

    cfg = recipe("digits", "mlp", epochs=1, lr=1e6)  # the loss is NaN within a few steps
    outcome, _ = run_core(lambda: load_problem(cfg))
    folder = checkpoint_dir(cfg)
    left = [p.name for p in (folder / "model.pt", folder / "meta.json", folder / "snapshots")
            if p.exists()]
    return row(s, "NaN loss during training", "digits/mlp recipe with lr=1e6",
               "data load_problem (train_or_load)", "TrainingDiverged", outcome, bool(left),
               "no model.pt, meta.json or snapshots saved")


def _other_version(name: str, argv: list[str]) -> Callable:
    """An artifact folder whose manifest says another layout version (what a folder written
    by an older release holds), run through `argv`; the folder is restored afterwards."""
    def case(s: Scratch) -> dict:
        import json

        from ..artifacts import MANIFEST
        from ..attribution.precompute import artifact_folder

        _index(s)
        folder = artifact_folder(s.quick_problem())  # the index open_index built
        manifest = folder / MANIFEST
        original = manifest.read_bytes()
        old = {**json.loads(original), "layout": "layout-v0"}
        manifest.write_text(json.dumps(old, indent=2, sort_keys=True))
        before, edited = _tree(s.home), manifest.read_bytes()
        outcome = run_cli(argv)
        lost = _tree(s.home) != before or manifest.read_bytes() != edited
        manifest.write_bytes(original)
        return row(s, name, "index folder whose manifest has layout 'layout-v0'",
                   f"CLI {argv[0]}", "exit 2", outcome, lost,
                   "artifact folder files and manifest bytes before == after")
    return case


def _corrupt_log(s: Scratch) -> Path:
    """A real decision log with two decisions whose SQLite header was overwritten."""
    from ..audit.store import DecisionLog

    path = s.path("corrupt.db")
    if not path.exists():
        train = s.quick_problem().train
        log = DecisionLog(path, train.labels, train.num_classes)
        log.record(1, "keep"), log.record(2, "remove")
        log.close()
        with sqlite3.connect(path) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        data = bytearray(path.read_bytes())
        data[:100] = b"\x00not a database header\x00".ljust(100, b"#")
        path.write_bytes(bytes(data))
    return path


def _corrupt_log_case(name: str, where: str, run: Callable[[Scratch, Path], Outcome],
                      expected: str) -> Callable:
    def case(s: Scratch) -> dict:
        path = _corrupt_log(s)
        before = path.read_bytes()
        outcome = run(s, path)
        return row(s, name, "a decision log whose first 100 bytes were overwritten", where,
                   expected, outcome, path.read_bytes() != before,
                   "the log file's bytes before == after")
    return case


def _open_corrupt_log(s: Scratch, path: Path) -> Outcome:
    from ..audit.session import open_session

    return run_core(lambda: open_session(s.quick_problem(), "kfac", path))[0]


CASES: list[tuple[str, Callable[[Scratch], dict]]] = [
    ("corrupt image", _upload_refused("corrupt image", "PNG signature + 200 random bytes",
                                      inputs.corrupt_png)),
    ("truncated image", _upload_refused("truncated image", "first half of a 64x64 PNG",
                                        inputs.truncated_png)),
    ("empty image", _upload_refused("empty image", "0 bytes", lambda: b"")),
    ("decompression bomb", _upload_refused(
        "decompression bomb", "PNG header claiming 100000 x 100000 pixels", inputs.bomb_png)),
    ("16-bit grey image", _upload_converted("16-bit grey image", "I;16 PNG, 0 / 32768 / 65535",
                                            inputs.grey16_png, (0, 0))),
    ("RGBA image", _upload_converted("RGBA image", "white square on transparency",
                                     inputs.rgba_png, (8, 8))),
    ("palette image", _upload_converted("palette image", "4-colour palette PNG",
                                        inputs.palette_png, (8, 8))),
    ("CMYK image", _upload_converted("CMYK image", "CMYK JPEG", inputs.cmyk_jpeg, (8, 8))),
    ("checkpoint of another architecture", _checkpoint_case(
        "checkpoint of another architecture", "a cnn state_dict for digits/mlp",
        _other_architecture)),
    ("pickle carrying code", _checkpoint_case(
        "pickle carrying code", "torch.save of an object whose unpickling creates a file",
        lambda s, p: inputs.code_pickle(p, s.path("pickle carrying code.marker")))),
    ("truncated checkpoint", _checkpoint_case(
        "truncated checkpoint", "first half of a digits/mlp model.pt",
        lambda s, p: inputs.truncated_checkpoint(_state(s), p))),
    ("NaN-weight checkpoint", _checkpoint_case(
        "NaN-weight checkpoint", "digits/mlp model.pt with one weight NaN",
        lambda s, p: inputs.nan_checkpoint(_state(s), p))),
    ("label out of range", _label_out_of_range),
    ("label out of range (CLI)", _label_out_of_range_cli),
    ("noise fraction 1.0", _cli_refused("noise fraction 1.0", "train --noise 1.0",
                                        ["train", "--noise", "1.0"], "models")),
    ("noise fraction -0.1", _cli_refused("noise fraction -0.1", "train --noise -0.1",
                                         ["train", "--noise", "-0.1"], "models")),
    ("damping <= 0 (CLI)", _cli_refused("damping <= 0 (CLI)", "unlearn --damping 0",
                                        ["unlearn", "--damping", "0", "--remove", "1"],
                                        "decisions")),
    ("damping <= 0 (core)", _damping_core),
    ("NaN loss during training", _nan_loss),
    ("full disk while saving a checkpoint", full_disk),
    ("full decision log", full_log),
    ("full disk during precompute", full_precompute),
    ("artifact folder from another version", _other_version(
        "artifact folder from another version", ["query", *QUICK, "--index", "0"])),
    ("artifact folder from another version (precompute)", _other_version(
        "artifact folder from another version (precompute)", ["precompute", *QUICK])),
    ("corrupted decision log (CLI)", _corrupt_log_case(
        "corrupted decision log (CLI)", "CLI unlearn --log",
        lambda s, p: run_cli(["unlearn", *QUICK, "--log", str(p), "--remove", "1"]), "exit 2")),
    ("corrupted decision log (app)", _corrupt_log_case(
        "corrupted decision log (app)", "audit open_session", _open_corrupt_log,
        "DecisionLogError")),
]
