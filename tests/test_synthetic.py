"""The embedded dataset: deterministic, in the nature_12K layout, and not solvable by colour."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from naturalist import synthetic
from naturalist.layout import read_layout


def digest_tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.jpg"))
    }


def test_layout_counts_and_class_names(small_dataset: Path) -> None:
    layout = read_layout(small_dataset)
    assert layout.classes == tuple(sorted(synthetic.CLASSES))
    assert len(layout.classes) == 10
    assert all(n == 20 for n in layout.counts()["train"].values())
    assert all(n == 6 for n in layout.counts()["val"].values())
    assert (small_dataset / synthetic.MARKER_FILE).read_text().startswith("Synthetic")


def test_same_seed_same_bytes_other_seed_other_images(tmp_path: Path) -> None:
    options = {"train_per_class": 2, "test_per_class": 1, "min_side": 40, "max_side": 80}
    synthetic.generate(tmp_path / "a", seed=1, **options)
    synthetic.generate(tmp_path / "b", seed=1, **options)
    synthetic.generate(tmp_path / "c", seed=2, **options)
    assert digest_tree(tmp_path / "a") == digest_tree(tmp_path / "b")
    a, c = digest_tree(tmp_path / "a"), digest_tree(tmp_path / "c")
    assert a.keys() == c.keys()
    assert all(a[name] != c[name] for name in a)


def test_images_vary_in_size_and_aspect(small_dataset: Path) -> None:
    sizes = {Image.open(p).size for p in small_dataset.rglob("*.jpg")}
    assert len(sizes) > 50
    assert all(48 <= w <= 96 and 48 <= h <= 96 for w, h in sizes)
    assert any(w > h for w, h in sizes) and any(h > w for w, h in sizes)


def test_colour_alone_does_not_tell_the_class(small_dataset: Path) -> None:
    """A nearest-centroid classifier on mean RGB stays near chance (10 %)."""

    def mean_colours(split: str) -> tuple[np.ndarray, np.ndarray]:
        features, labels = [], []
        for label, name in enumerate(synthetic.CLASSES):
            for path in sorted((small_dataset / split / name).glob("*.jpg")):
                features.append(np.asarray(Image.open(path), dtype=np.float64).mean(axis=(0, 1)))
                labels.append(label)
        return np.array(features), np.array(labels)

    train_x, train_y = mean_colours("train")
    test_x, test_y = mean_colours("val")
    centroids = np.stack([train_x[train_y == k].mean(0) for k in range(10)])
    predicted = np.argmin(((test_x[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (predicted == test_y).mean() < 0.3
