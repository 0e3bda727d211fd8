"""The embedded offline dataset: ten classes of drawn shapes in the nature_12K folder layout.

Each image is a shape or pattern in a random colour on a random noisy background, at a random
place, scale and rotation, saved as a JPEG of random size and aspect. The class is the shape, never
the colour, so a colour histogram cannot solve it while a small CNN can. Every image is a pure
function of ``(seed, split, class, index)``: the dataset is identical on every machine and run.
The class names say what the images are, so the data can never pass for iNaturalist.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = (
    "checkerboard",
    "circle",
    "cross",
    "dots",
    "horizontal_stripes",
    "ring",
    "square",
    "star",
    "triangle",
    "vertical_stripes",
)
MARKER_FILE = "SYNTHETIC_DATASET.txt"
_SPLIT_IDS = {"train": 0, "val": 1}

Painter = Callable[[ImageDraw.ImageDraw, int, np.random.Generator], None]


def _regular_polygon(
    side: int, corners: int, inner: float | None = None
) -> list[tuple[float, float]]:
    """Corners of a regular polygon (or a star when ``inner`` is set) filling a square canvas."""
    centre, radius = side / 2, side * 0.46
    points = []
    steps = corners * (2 if inner else 1)
    for step in range(steps):
        angle = -math.pi / 2 + 2 * math.pi * step / steps
        r = radius * (inner if inner and step % 2 else 1.0)
        points.append((centre + r * math.cos(angle), centre + r * math.sin(angle)))
    return points


def _stripes(horizontal: bool) -> Painter:
    def paint(draw: ImageDraw.ImageDraw, side: int, rng: np.random.Generator) -> None:
        count = int(rng.integers(3, 6))
        period = side / count
        for k in range(count):
            start = k * period
            box = (
                (0, start, side, start + period / 2)
                if horizontal
                else (start, 0, start + period / 2, side)
            )
            draw.rectangle(box, fill=255)

    return paint


def _checkerboard(draw: ImageDraw.ImageDraw, side: int, rng: np.random.Generator) -> None:
    cells = int(rng.integers(3, 6))
    cell = side / cells
    for row in range(cells):
        for col in range(row % 2, cells, 2):
            draw.rectangle((col * cell, row * cell, (col + 1) * cell, (row + 1) * cell), fill=255)


def _dots(draw: ImageDraw.ImageDraw, side: int, rng: np.random.Generator) -> None:
    for _ in range(int(rng.integers(5, 10))):
        r = side * rng.uniform(0.05, 0.09)
        x, y = rng.uniform(r, side - r, size=2)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=255)


def _cross(draw: ImageDraw.ImageDraw, side: int, rng: np.random.Generator) -> None:
    arm = side * rng.uniform(0.12, 0.18)
    mid = side / 2
    draw.rectangle((mid - arm, side * 0.05, mid + arm, side * 0.95), fill=255)
    draw.rectangle((side * 0.05, mid - arm, side * 0.95, mid + arm), fill=255)


def _ring(draw: ImageDraw.ImageDraw, side: int, rng: np.random.Generator) -> None:
    width = max(2, int(side * rng.uniform(0.08, 0.14)))
    draw.ellipse((side * 0.05, side * 0.05, side * 0.95, side * 0.95), outline=255, width=width)


PAINTERS: dict[str, Painter] = {
    "checkerboard": _checkerboard,
    "circle": lambda d, s, _: d.ellipse((s * 0.05, s * 0.05, s * 0.95, s * 0.95), fill=255),
    "cross": _cross,
    "dots": _dots,
    "horizontal_stripes": _stripes(horizontal=True),
    "ring": _ring,
    "square": lambda d, s, _: d.rectangle((s * 0.15, s * 0.15, s * 0.85, s * 0.85), fill=255),
    "star": lambda d, s, _: d.polygon(_regular_polygon(s, 5, inner=0.45), fill=255),
    "triangle": lambda d, s, _: d.polygon(_regular_polygon(s, 3), fill=255),
    "vertical_stripes": _stripes(horizontal=False),
}
# Stripes keep their orientation (it is the class); every other shape may turn freely.
_MAX_TILT = {"horizontal_stripes": 15.0, "vertical_stripes": 15.0}


def _contrasting_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    while True:
        fg, bg = rng.integers(0, 256, size=(2, 3))
        if abs(fg.mean() - bg.mean()) > 50 or np.abs(fg - bg).max() > 120:
            return fg, bg


def render_image(
    class_name: str, seed: int, split: str, index: int, min_side: int = 96, max_side: int = 320
) -> Image.Image:
    """Draw one image of ``class_name``; the same arguments always give the same pixels."""
    class_id = CLASSES.index(class_name)
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], class_id, index])
    width, height = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
    fg, bg = _contrasting_colours(rng)

    gradient = np.linspace(-1, 1, width)[None, :, None] * rng.uniform(-30, 30, size=3)
    noise = rng.normal(0, 14, size=(height, width, 3))
    canvas = np.clip(bg + gradient + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(canvas, "RGB")

    side = int(min(width, height) * rng.uniform(0.45, 0.8))
    mask = Image.new("L", (side, side), 0)
    PAINTERS[class_name](ImageDraw.Draw(mask), side, rng)
    tilt = _MAX_TILT.get(class_name, 180.0)
    mask = mask.rotate(
        float(rng.uniform(-tilt, tilt)), resample=Image.Resampling.BILINEAR, expand=True
    )
    x = int(rng.integers(0, max(1, width - mask.width + 1)))
    y = int(rng.integers(0, max(1, height - mask.height + 1)))
    image.paste(Image.new("RGB", mask.size, tuple(int(c) for c in fg)), (x, y), mask)
    return image


def _write_class(job: tuple[Path, str, str, int, int, int, int, int]) -> None:
    folder, split, class_name, count, seed, min_side, max_side, quality = job
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        image = render_image(class_name, seed, split, index, min_side, max_side)
        image.save(folder / f"{class_name}_{index:05d}.jpg", quality=quality)


def generate(
    dest: Path,
    *,
    seed: int,
    train_per_class: int,
    test_per_class: int,
    min_side: int = 96,
    max_side: int = 320,
    quality: int = 90,
    workers: int | None = None,
) -> dict[str, int]:
    """Write the dataset as ``dest/{train,val}/<class>/<class>_<index>.jpg``; return counts.

    Classes are drawn in parallel (one job per split and class); each image depends only on its
    own arguments, so the result does not depend on the number of workers.
    """
    if min_side > max_side:
        raise ValueError(f"min_side ({min_side}) must not exceed max_side ({max_side})")
    sizes = {"train": train_per_class, "val": test_per_class}
    jobs = [
        (dest / split / name, split, name, count, seed, min_side, max_side, quality)
        for split, count in sizes.items()
        for name in CLASSES
    ]
    with ProcessPoolExecutor(workers or os.cpu_count() or 1) as pool:
        list(pool.map(_write_class, jobs))
    (dest / MARKER_FILE).write_text(
        "Synthetic shapes generated by naturalist.synthetic for offline runs.\n"
        "These are not iNaturalist images; set data.source: inaturalist for the real dataset.\n"
    )
    return {split: count * len(CLASSES) for split, count in sizes.items()}
