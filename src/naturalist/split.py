"""Split the raw dataset and decode every image exactly once into uint8 arrays.

``train/`` is split per class (stratified) into train and val, deterministically from the seed; the
dataset's own ``val/`` becomes the test split and is never used for training or model selection.
Each image is decoded once (JPEG draft mode lets libjpeg downscale while decoding), converted to
RGB, squashed to ``image_size`` x ``image_size`` and stored in ``<split>_images.npy`` (N, H, W, 3)
as a disk-backed array, so a 10,000-image set at 224 px never has to fit in memory twice.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap
from PIL import Image
from tqdm import tqdm

from naturalist.fsutil import replacing_directory
from naturalist.layout import read_layout

SPLIT_NAMES = ("train", "val", "test")
MANIFEST = "manifest.json"


@dataclass
class Skipped:
    file: str
    reason: str


@dataclass
class SplitResult:
    classes: list[str]
    counts: dict[str, dict[str, int]]
    skipped: list[Skipped] = field(default_factory=list)
    images_per_second: float = 0.0


def stratified_split(
    files_per_class: dict[str, list[Path]], val_fraction: float, seed: int
) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
    """Split each class on its own so train and val keep the class proportions.

    Files are sorted before shuffling, so the split depends only on the file names and the seed.
    """
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label, class_name in enumerate(sorted(files_per_class)):
        files = sorted(files_per_class[class_name])
        order = rng.permutation(len(files))
        n_val = round(len(files) * val_fraction)
        val += [(files[i], label) for i in sorted(order[:n_val])]
        train += [(files[i], label) for i in sorted(order[n_val:])]
    return train, val


def decode_image(path: Path, size: int) -> np.ndarray:
    """Decode one image file to an RGB uint8 array of shape (size, size, 3).

    Works for grayscale, CMYK, palette and RGBA images and for PNGs named ``.jpg``: Pillow
    identifies the format from the bytes, not the file name.
    """
    with Image.open(path) as image:
        image.draft("RGB", (size, size))  # a no-op for non-JPEGs; JPEG decodes at 1/2..1/8 scale
        rgb = image.convert("RGB")
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def _decode_job(job: tuple[int, str, int]) -> tuple[int, np.ndarray | None, str]:
    index, path, size = job
    try:
        return index, decode_image(Path(path), size), ""
    except Exception as error:
        return index, None, f"{type(error).__name__}: {error}".splitlines()[0]


def _pool_context() -> multiprocessing.context.BaseContext:
    # fork starts workers in milliseconds; spawn is the only safe choice off Linux.
    return multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")


def decode_into(
    items: list[tuple[Path, int]],
    out_dir: Path,
    name: str,
    size: int,
    root: Path,
    workers: int,
    progress: bool = True,
) -> tuple[np.ndarray, list[Skipped]]:
    """Decode ``items`` into ``<out_dir>/<name>_images.npy`` and ``<name>_labels.npy``.

    Returns the labels that were kept and the files that were skipped.
    """
    images_path = out_dir / f"{name}_images.npy"
    images = open_memmap(images_path, mode="w+", dtype=np.uint8, shape=(len(items), size, size, 3))
    labels: list[int] = []
    kept: list[str] = []
    skipped: list[Skipped] = []
    jobs = [(i, str(path), size) for i, (path, _) in enumerate(items)]
    chunksize = max(1, min(64, len(jobs) // (workers * 8) or 1))
    with (
        _pool_context().Pool(workers) as pool,
        tqdm(total=len(jobs), desc=f"decode {name}", unit="img", disable=not progress) as bar,
    ):
        for index, array, reason in pool.imap(_decode_job, jobs, chunksize=chunksize):
            path, label = items[index]
            relative = path.relative_to(root).as_posix()
            if array is None:
                skipped.append(Skipped(relative, reason))
                tqdm.write(
                    f"warning: skipped unreadable image {relative} ({reason})", file=sys.stderr
                )
            else:
                images[len(labels)] = array
                labels.append(label)
                kept.append(relative)
            bar.update()
    if skipped:  # compact: the skipped rows were never written, drop the unused tail
        images.flush()
        compact = open_memmap(
            out_dir / f"{name}_images.tmp.npy",
            mode="w+",
            dtype=np.uint8,
            shape=(len(labels), size, size, 3),
        )
        for start in range(0, len(labels), 1024):
            stop = min(start + 1024, len(labels))
            compact[start:stop] = images[start:stop]
        compact.flush()
        del images, compact
        os.replace(out_dir / f"{name}_images.tmp.npy", images_path)
    else:
        images.flush()
        del images
    label_array = np.asarray(labels, dtype=np.int64)
    np.save(out_dir / f"{name}_labels.npy", label_array)
    (out_dir / f"{name}_files.txt").write_text("".join(f"{f}\n" for f in kept))
    return label_array, skipped


def split_dataset(
    raw: Path,
    out: Path,
    *,
    image_size: int,
    val_fraction: float,
    seed: int,
    workers: int | None = None,
    progress: bool = True,
) -> SplitResult:
    """The split stage: stratified train/val from ``train/``, test from ``val/``, decoded once."""
    layout = read_layout(raw)
    train, val = stratified_split(layout.files["train"], val_fraction, seed)
    test = [
        (path, label) for label, c in enumerate(layout.classes) for path in layout.files["val"][c]
    ]
    workers = workers or os.cpu_count() or 1

    started = time.perf_counter()
    counts: dict[str, dict[str, int]] = {}
    skipped: list[Skipped] = []
    with replacing_directory(out) as tmp:
        for name, items in zip(SPLIT_NAMES, (train, val, test), strict=True):
            labels, split_skipped = decode_into(
                items, tmp, name, image_size, layout.root, workers, progress
            )
            skipped += split_skipped
            per_class = np.bincount(labels, minlength=len(layout.classes))
            counts[name] = {c: int(n) for c, n in zip(layout.classes, per_class, strict=True)}
        elapsed = time.perf_counter() - started
        total = len(train) + len(val) + len(test)
        result = SplitResult(list(layout.classes), counts, skipped, total / max(elapsed, 1e-9))
        manifest = {
            "classes": result.classes,
            "image_size": image_size,
            "val_fraction": val_fraction,
            "seed": seed,
            "counts": counts,
            "totals": {name: sum(c.values()) for name, c in counts.items()},
            "skipped": [vars(s) for s in skipped],
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return result
