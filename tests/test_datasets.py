"""Datasets: sizes, index order and labels of every builder, on real data where it is stored here
and on tiny trees in torchvision's on-disk layout that the tests write themselves."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from influence_core import DATASETS, DatasetError, ImageDataset, inject_label_noise, load_dataset

LAZY_SIZE = 224  # Flowers102 / Food101 inputs for ImageNet-pretrained models


def _rows(pixels: torch.Tensor) -> list[bytes]:
    return sorted(p.numpy().tobytes() for p in pixels)


# ---- digits ----------------------------------------------------------------------------------


def test_digits_split_is_fixed_stratified_and_complete() -> None:
    from sklearn.datasets import load_digits

    train, test = DATASETS["digits"](None)
    again_train, again_test = DATASETS["digits"](None)
    assert (len(train), len(test)) == (1437, 360)
    assert torch.equal(train.pixels, again_train.pixels)  # same examples at the same indices
    assert torch.equal(test.labels, again_test.labels)
    assert train.class_names == [str(d) for d in range(10)]
    for split in (train, test):
        assert int(split.labels.min()) >= 0 and int(split.labels.max()) <= 9
    # train and test together are exactly the 1797 bundled digits, each once
    bundled = np.round(load_digits().images * (255.0 / 16.0)).astype(np.uint8)
    assert _rows(torch.cat([train.pixels, test.pixels])) == _rows(torch.from_numpy(bundled))
    # stratified: every class has 20 % (+-1) of its examples in test
    counts = torch.bincount(torch.cat([train.labels, test.labels]), minlength=10)
    assert (torch.bincount(test.labels, minlength=10) - 0.2 * counts).abs().max() <= 1
    img = train.image(0)
    assert isinstance(img, Image.Image) and img.size == (8, 8) and img.mode == "L"


def test_tensor_normalises_with_train_statistics() -> None:
    train, _ = load_dataset("digits")
    x = train.tensor(torch.arange(len(train)))
    assert x.shape == (len(train), 1, 8, 8) and train.shape == (1, 8, 8)
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-3


def test_out_of_range_labels_raise() -> None:
    pixels = torch.zeros(3, 4, 4, dtype=torch.uint8)
    for bad, where in (([0, 1, 2], 2), ([0, -1, 1], 1)):
        with pytest.raises(DatasetError, match=f"label {bad[where]} at index {where}"):
            ImageDataset("toy", "train", ["a", "b"], torch.tensor(bad), (0.5,), (0.5,), pixels)
    with pytest.raises(DatasetError, match="3 images but 2 labels"):
        ImageDataset("toy", "train", ["a", "b"], torch.tensor([0, 1]), (0.5,), (0.5,), pixels)


# ---- MNIST, Fashion-MNIST (real data in ../shared/data) ---------------------------------------


@pytest.mark.parametrize("name, first_labels", [
    ("mnist", [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]),
    ("fashion_mnist", [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]),
])
def test_mnist_family_from_shared_data(data_root: Path, name: str, first_labels: list) -> None:
    train, test = load_dataset(name, data_root)
    assert (len(train), len(test)) == (60000, 10000)
    assert train.labels[:10].tolist() == first_labels
    assert train.shape == (1, 28, 28) and train.num_classes == 10
    assert torch.bincount(test.labels, minlength=10).min() > 800  # every class present
    assert train.image(0).size == (28, 28)
    assert abs(train.mean[0] - (0.1307 if name == "mnist" else 0.2860)) < 1e-3


# ---- CIFAR-10 (tiny tree in torchvision's layout; its md5 check is switched off) --------------


def test_cifar10_builds_in_memory_rgb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    batches = {}
    for k, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        batches[name] = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
                         "labels": [(k + j) % 10 for j in range(4)]}
        (base / name).write_bytes(pickle.dumps(batches[name]))
    names = [f"c{k}" for k in range(10)]
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))

    train, test = DATASETS["cifar10"](tmp_path)
    assert (len(train), len(test)) == (20, 4) and train.class_names == names
    assert train.shape == (3, 32, 32) and len(train.mean) == 3
    chw = batches["data_batch_1"]["data"][1].reshape(3, 32, 32)
    assert np.array_equal(np.asarray(train.image(1)), chw.transpose(1, 2, 0))
    assert test.labels.tolist() == batches["test_batch"]["labels"]


# ---- Flowers102 and Food101 (tiny trees in torchvision's layout) ------------------------------

FLOWER_LABELS = [1, 1, 2, 2, 3, 3, 1, 2, 3, 102, 5, 5]  # 1-based, image ids 1..12
FLOWER_SPLITS = {"trnid": [1, 3, 5, 7, 9], "valid": [2, 4], "tstid": [6, 8, 10, 11, 12]}


@pytest.fixture
def flowers_root(tmp_path: Path, write_image) -> Path:
    from scipy.io import savemat

    base = tmp_path / "flowers-102"
    for k in range(1, 13):
        write_image(base / "jpg" / f"image_{k:05d}.jpg", size=(40 + k, 30), seed=k)
    savemat(base / "imagelabels.mat", {"labels": np.array([FLOWER_LABELS])})
    savemat(base / "setid.mat", {k: np.array([v]) for k, v in FLOWER_SPLITS.items()})
    return tmp_path


def test_flowers102_reads_the_layout_when_torchvision_refuses_it(flowers_root: Path) -> None:
    import torchvision.datasets as tvd

    with pytest.raises(RuntimeError):  # hand-made .mat files fail torchvision's md5 check
        tvd.Flowers102(str(flowers_root), split="train", download=False)
    train, test = DATASETS["flowers102"](flowers_root)
    assert train.labels.tolist() == [FLOWER_LABELS[i - 1] - 1 for i in FLOWER_SPLITS["trnid"]]
    assert test.labels.tolist() == [FLOWER_LABELS[i - 1] - 1 for i in FLOWER_SPLITS["tstid"]]
    assert train.num_classes == 102 and test.labels.max() == 101
    assert train.image(2).size == (45, 30) and train.image(2).mode == "RGB"  # image_00005.jpg
    assert train.tensor(slice(0, 2)).shape == (2, 3, LAZY_SIZE, LAZY_SIZE)


def test_flowers102_readers_agree(flowers_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets.flowers102 as tv_flowers

    ours = DATASETS["flowers102"](flowers_root)
    monkeypatch.setattr(tv_flowers, "check_integrity", lambda *a, **k: True)
    theirs = DATASETS["flowers102"](flowers_root)  # now read by torchvision's class
    for a, b in zip(ours, theirs):
        assert torch.equal(a.labels, b.labels) and a.class_names == b.class_names
        assert all(a.image(i).tobytes() == b.image(i).tobytes() for i in range(len(a)))


FOOD = {"train": {"sushi": ["11", "12"], "apple_pie": ["1", "2", "3"], "bibimbap": ["7"]},
        "test": {"apple_pie": ["4"], "bibimbap": ["8"], "sushi": ["13"]}}


@pytest.fixture
def food_root(tmp_path: Path, write_image) -> Path:
    base = tmp_path / "food-101"
    for split, listing in FOOD.items():
        for c, ids in listing.items():
            for i in ids:
                write_image(base / "images" / c / f"{i}.jpg", seed=int(i))
        meta = {c: [f"{c}/{i}" for i in ids] for c, ids in listing.items()}
        (base / "meta").mkdir(exist_ok=True)
        (base / "meta" / f"{split}.json").write_text(json.dumps(meta))
    (base / "meta" / "classes.txt").write_text("apple_pie\nbibimbap\nsushi\n")
    return tmp_path


def test_food101_reads_the_layout(food_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets as tvd

    theirs = DATASETS["food101"](food_root)
    train, test = theirs
    assert train.class_names == ["apple_pie", "bibimbap", "sushi"]
    assert train.labels.tolist() == [2, 2, 0, 0, 0, 1]  # meta order, indices from classes.txt
    assert test.labels.tolist() == [0, 1, 2]
    assert train.image(0).size == (16, 12)
    assert test.tensor([0]).shape == (1, 3, LAZY_SIZE, LAZY_SIZE)

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("pretend torchvision changed its checks")

    monkeypatch.setattr(tvd.Food101, "__init__", refuse)
    ours = DATASETS["food101"](food_root)  # now read by our own reader
    for a, b in zip(ours, theirs):
        assert torch.equal(a.labels, b.labels) and a.class_names == b.class_names
        assert all(a.image(i).tobytes() == b.image(i).tobytes() for i in range(len(a)))


def test_food101_missing_image_is_named(food_root: Path) -> None:
    gone = food_root / "food-101" / "images" / "sushi" / "12.jpg"
    gone.unlink()
    with pytest.raises(DatasetError, match=r"1 of 6 listed images are missing.*12\.jpg"):
        DATASETS["food101"](food_root)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "flowers102", "food101"])
def test_missing_files_raise_dataset_error_naming_the_path(
    name: str, tmp_path: Path, offline: None
) -> None:
    root = tmp_path / f"empty_{name}"
    with pytest.raises(DatasetError) as info:
        load_dataset(name, root)
    assert str(root) in str(info.value)


def test_unknown_dataset_is_refused() -> None:
    with pytest.raises(DatasetError, match="unknown dataset 'mnits'"):
        load_dataset("mnits")


# ---- imagefolder --------------------------------------------------------------------------


def test_imagefolder_skips_and_reports_unreadable_files(tmp_path: Path, write_image) -> None:
    for c in ("cat", "dog"):
        for k in range(5):
            write_image(tmp_path / c / f"{k}.png", size=(12, 10 + k), seed=k)
    corrupt = tmp_path / "cat" / "x.png"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    notes = tmp_path / "dog" / "notes.txt"
    notes.write_text("photos from the garden")
    truncated = tmp_path / "dog" / "t.png"
    truncated.write_bytes(write_image(tmp_path / "full.png", size=(64, 64)).read_bytes()[:200])
    (tmp_path / "full.png").unlink()

    with pytest.warns(UserWarning, match="skipped 3 unreadable") as record:
        train, test = load_dataset(f"imagefolder:{tmp_path}")
    message = str(record[0].message)
    assert all(str(p) in message for p in (corrupt, notes, truncated))
    assert sorted(p for p, _ in train.skipped) == sorted(map(str, (corrupt, notes, truncated)))
    assert train.class_names == ["cat", "dog"]
    assert (len(train), len(test)) == (8, 2) and sorted(test.labels.tolist()) == [0, 1]
    assert train.labels.tolist() == sorted(train.labels.tolist())  # sorted class, then file
    assert train.shape == (3, 12, 12)  # median shorter side of 10..14 is 12
    assert train.image(0).size == (12, 12)


def test_imagefolder_never_follows_a_symlink_out_of_the_folder(tmp_path: Path,
                                                               write_image) -> None:
    """A symlinked file or class folder that resolves outside the image folder is skipped and
    named (nothing under its target is read or listed); a symlink within the folder is read."""
    root, secret = tmp_path / "images", tmp_path / "secret"
    for c in ("cat", "dog"):
        for k in range(5):
            write_image(root / c / f"{k}.png", seed=k)
    for k in range(3):
        write_image(secret / "private" / f"{k}.png", seed=10 + k)
    (root / "cat" / "leak.png").symlink_to(secret / "private" / "0.png")
    (root / "stolen").symlink_to(secret / "private", target_is_directory=True)
    (root / "dog" / "sub").symlink_to(secret, target_is_directory=True)
    (root / "dog" / "alias.png").symlink_to(root / "cat" / "1.png")  # inside: followed

    with pytest.warns(UserWarning, match="symlink") as record:
        train, test = load_dataset(f"imagefolder:{root}")
    links = [root / "cat" / "leak.png", root / "dog" / "sub", root / "stolen"]
    assert sorted(p for p, _ in train.skipped) == sorted(map(str, links))
    assert all("outside" in why for _, why in train.skipped)
    assert all(str(p) in str(record[0].message) for p in links)
    assert "private/1.png" not in str(record[0].message)  # the target's files are not listed
    assert train.class_names == ["cat", "dog"]
    assert len(train) + len(test) == 11  # 10 images and the alias


def test_imagefolder_train_test_folders_and_grey(tmp_path: Path, write_image) -> None:
    for split, n in (("train", 3), ("test", 2)):
        for c in ("b", "a"):
            for k in range(n):
                write_image(tmp_path / split / c / f"{k}.png", size=(90, 100), mode="L", seed=k)
    train, test = load_dataset(f"imagefolder:{tmp_path}")
    assert (len(train), len(test)) == (6, 4) and train.class_names == ["a", "b"]
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1] and test.labels.tolist() == [0, 0, 1, 1]
    assert train.shape == (1, 64, 64) and train.skipped == []  # median 90 capped at 64
    source = Image.open(tmp_path / "train" / "a" / "0.png")
    original = np.asarray(source.resize((64, 64), Image.BILINEAR))
    assert np.abs(np.asarray(train.image(0)).astype(int) - original).max() <= 1


def test_imagefolder_missing_or_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=str(tmp_path / "nowhere")):
        load_dataset(f"imagefolder:{tmp_path / 'nowhere'}")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no readable images"):
        load_dataset(f"imagefolder:{tmp_path / 'empty'}")


# ---- label noise --------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.5])
def test_label_noise_flips_exactly_the_masked_labels(fraction: float) -> None:
    train, _ = load_dataset("digits")
    labels = train.labels
    noisy, mask = inject_label_noise(labels, fraction, 10, seed=3)
    assert int(mask.sum()) == round(fraction * len(labels))
    assert (noisy[mask] != labels[mask]).all()
    assert torch.equal(noisy[~mask], labels[~mask])
    assert int(noisy.min()) >= 0 and int(noisy.max()) <= 9
    again, again_mask = inject_label_noise(labels, fraction, 10, seed=3)
    assert torch.equal(noisy, again) and torch.equal(mask, again_mask)
    if fraction > 0:
        assert not torch.equal(inject_label_noise(labels, fraction, 10, seed=4)[1], mask)


def test_label_noise_rounds_and_keeps_originals() -> None:
    labels = torch.arange(10) % 3
    assert int(inject_label_noise(labels, 0.25, 3)[1].sum()) == round(2.5)
    train, _ = load_dataset("digits")
    noisy, _ = inject_label_noise(train.labels, 0.1, 10)
    relabelled = train.with_labels(noisy)
    assert torch.equal(relabelled.labels, noisy) and relabelled.pixels is train.pixels
    assert torch.equal(relabelled.original_labels, train.labels)
    with pytest.raises(ValueError, match="noise fraction"):
        inject_label_noise(labels, 1.0, 3)
