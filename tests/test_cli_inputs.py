"""Bad command-line values are one-line messages (exit 2), found before any long work: no index
is loaded for a query that cannot be answered, and an empty image-folder path is not the
current directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from influence_core import damping_refusal
from influence_core.cli import main

QUICK = ["--epochs", "2"]  # a digits/mlp trained in about a second; digits has 360 test images


def _last_error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "Traceback" not in err
    return err


OUT_OF_RANGE = [
    (["--index", "99999"], "--index 99999 is outside the test set (0..359)"),
    (["--index", "-1"], "--index -1 is outside the test set (0..359)"),
    (["--index", "3", "--label", "99"], "--label 99 is outside the classes (0..9)"),
    (["--index", "3", "--label", "-1"], "--label -1 is outside the classes (0..9)"),
]


@pytest.mark.parametrize("args, message", OUT_OF_RANGE)
def test_query_refuses_an_index_or_label_out_of_range(artifacts_home: Path, capsys, args,
                                                      message: str) -> None:
    assert main(["query", *QUICK, *args]) == 2
    assert _last_error_line(capsys) == f"error: {message}"
    assert not (artifacts_home / "index").exists()


@pytest.fixture(scope="module")
def indexed_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An artifacts folder with the quick digits model and its attribution index."""
    home = tmp_path_factory.mktemp("indexed")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INFLUENCE_AUDIT_HOME", str(home))
        assert main(["precompute", *QUICK]) == 0
    return home


@pytest.mark.parametrize("args, message", OUT_OF_RANGE)
def test_with_an_index_an_out_of_range_query_is_still_one_line(
    indexed_home: Path, monkeypatch: pytest.MonkeyPatch, capsys, args, message: str,
) -> None:
    """Where the index exists, 99999 is not an IndexError traceback and -1 is not the last
    test image."""
    monkeypatch.setenv("INFLUENCE_AUDIT_HOME", str(indexed_home))
    assert main(["query", *QUICK, *args]) == 2
    assert _last_error_line(capsys) == f"error: {message}"


def test_a_truncated_checkpoint_names_what_is_wrong(tmp_path: Path) -> None:
    """Half a model.pt: a CheckpointError saying it cannot be read (truncated?), not a bare
    '[Errno 22] Invalid argument'."""
    import torch

    from influence_core.data.models import CheckpointError, build_model, load_checkpoint

    model = build_model("mlp", (1, 8, 8), 10)
    whole, half = tmp_path / "model.pt", tmp_path / "half.pt"
    torch.save(model.state_dict(), whole)
    half.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*half\.pt \(truncated"):
        load_checkpoint(build_model("mlp", (1, 8, 8), 10), half)


@pytest.mark.parametrize("argv, message", [
    (["query", "--index", "3", "--top", "0"], "--top: must be >= 1, got 0"),
    (["query", "--index", "3", "--top", "-1"], "--top: must be >= 1, got -1"),
    (["unlearn", "--method", "foo"], "--method: invalid choice: 'foo'"),
])
def test_argument_types_and_choices_are_checked_by_the_parser(artifacts_home: Path, capsys,
                                                              argv, message: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (artifacts_home / "models").exists()


@pytest.mark.parametrize("dataset", ["imagefolder:", "imagefolder:  "])
def test_an_empty_image_folder_path_is_refused_not_the_current_directory(
        artifacts_home: Path, tmp_path: Path, monkeypatch, capsys, dataset: str) -> None:
    (tmp_path / "cls").mkdir()  # a folder that would train if "" meant "."
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--dataset", dataset]) == 2
    assert "needs a folder path" in _last_error_line(capsys)
    assert not (artifacts_home / "models").exists()


def test_unlearn_refuses_malformed_index_lists(artifacts_home: Path, capsys) -> None:
    assert main(["unlearn", "--remove", "1,x"]) == 2
    assert "--remove takes comma-separated integers" in _last_error_line(capsys)
    assert main(["unlearn", "--relabel", "4:a"]) == 2
    assert "--relabel takes INDEX:LABEL" in _last_error_line(capsys)
    assert not (artifacts_home / "models").exists()


@pytest.mark.parametrize("text, refused", [("0", None), ("0.5", None), ("nan", "finite"),
                                           ("-1", "> 0"), ("inf", "finite"),
                                           ("abc", "not a number")])
def test_the_apps_damping_parameter_is_checked_like_the_clis(text: str, refused) -> None:
    got = damping_refusal(text)
    assert got is None if refused is None else refused in got
