"""The split stage: stratified, deterministic, decodes odd images and skips broken ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import NATURE_CLASSES, make_nature_tree
from PIL import Image

from naturalist.layout import LayoutError
from naturalist.split import decode_image, split_dataset, stratified_split


def run_split(raw: Path, out: Path, seed: int = 0, size: int = 32) -> dict:
    split_dataset(raw, out, image_size=size, val_fraction=0.2, seed=seed, progress=False)
    return json.loads((out / "manifest.json").read_text())


def test_stratified_80_20_per_class_and_test_is_the_val_folder(
    small_dataset: Path, tmp_path: Path
) -> None:
    manifest = run_split(small_dataset, tmp_path / "split")
    assert set(manifest["counts"]) == {"train", "val", "test"}
    for name in manifest["classes"]:
        assert manifest["counts"]["train"][name] == 16
        assert manifest["counts"]["val"][name] == 4
        assert manifest["counts"]["test"][name] == 6
    images = np.load(tmp_path / "split" / "train_images.npy", mmap_mode="r")
    labels = np.load(tmp_path / "split" / "train_labels.npy")
    assert images.shape == (160, 32, 32, 3) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [16] * 10
    test_files = (tmp_path / "split" / "test_files.txt").read_text().split()
    assert len(test_files) == 60 and all(f.startswith("val/") for f in test_files)
    train_files = set((tmp_path / "split" / "train_files.txt").read_text().split())
    val_files = set((tmp_path / "split" / "val_files.txt").read_text().split())
    assert not train_files & val_files and len(train_files | val_files) == 200


def test_same_seed_same_split_other_seed_other_split(small_dataset: Path, tmp_path: Path) -> None:
    run_split(small_dataset, tmp_path / "a", seed=5)
    run_split(small_dataset, tmp_path / "b", seed=5)
    run_split(small_dataset, tmp_path / "c", seed=6)
    for name in ("train_images.npy", "val_labels.npy", "val_files.txt"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "val_files.txt").read_text() != (
        tmp_path / "c" / "val_files.txt"
    ).read_text()


def test_stratified_split_rounds_per_class() -> None:
    files = {"a": [Path(f"a{i}") for i in range(10)], "b": [Path(f"b{i}") for i in range(7)]}
    train, val = stratified_split(files, 0.2, seed=1)
    assert sum(1 for _, y in val if y == 0) == 2 and sum(1 for _, y in val if y == 1) == 1
    assert len(train) + len(val) == 17


def test_odd_images_decode_to_rgb_and_corrupt_ones_are_skipped(tmp_path: Path) -> None:
    raw = make_nature_tree(
        tmp_path / "raw",
        classes=NATURE_CLASSES[:2],
        per_class_train=5,
        per_class_val=2,
        corrupt_class=NATURE_CLASSES[1],
        wrapper=None,
    )
    odd = raw / "train" / NATURE_CLASSES[0]
    Image.new("L", (40, 30), 128).save(odd / "gray.jpg")
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(odd / "cmyk.jpg")  # a red CMYK JPEG
    Image.new("RGBA", (20, 20), (0, 0, 255, 128)).save(odd / "really_a_png.jpg", format="PNG")
    (odd / "truncated.jpg").write_bytes((odd / "gray.jpg").read_bytes()[:60])

    for name in ("gray.jpg", "cmyk.jpg", "really_a_png.jpg"):
        array = decode_image(odd / name, 16)
        assert array.shape == (16, 16, 3) and array.dtype == np.uint8
    assert decode_image(odd / "cmyk.jpg", 16)[..., 0].mean() > 200  # red stays red
    assert decode_image(odd / "gray.jpg", 16).std(axis=2).max() == 0  # gray stays gray

    manifest = run_split(raw, tmp_path / "split")
    skipped = {entry["file"]: entry["reason"] for entry in manifest["skipped"]}
    assert set(skipped) == {
        f"train/{NATURE_CLASSES[1]}/corrupt.jpg",
        f"train/{NATURE_CLASSES[0]}/truncated.jpg",
    }
    assert all(reason for reason in skipped.values())
    kept = manifest["totals"]["train"] + manifest["totals"]["val"]
    assert kept == (5 + 3) + 5  # class 0: 5 + gray, cmyk, png; class 1: 5 (corrupt skipped)
    images = np.load(tmp_path / "split" / "train_images.npy")
    assert len(images) == manifest["totals"]["train"]
    assert len(np.load(tmp_path / "split" / "train_labels.npy")) == len(images)


def test_a_bad_layout_leaves_the_previous_split_untouched(
    small_dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "split"
    run_split(small_dataset, out)
    before = (out / "manifest.json").read_bytes()
    broken = make_nature_tree(
        tmp_path / "broken",
        classes=NATURE_CLASSES[:2],
        per_class_train={NATURE_CLASSES[0]: 2},
        per_class_val=1,
        wrapper=None,
    )
    with pytest.raises(LayoutError, match="different classes"):
        run_split(broken, out)
    assert (out / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "split"]
