"""Shared set-up for the benchmarks: a nature_12K-like folder of large JPEGs, and timing."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from naturalist import synthetic
from naturalist.split import split_dataset


def make_large_jpegs(
    root: Path,
    per_class: int,
    *,
    test_per_class: int = 1,
    min_side: int = 600,
    max_side: int = 800,
    seed: int = 0,
) -> Path:
    """Synthetic JPEGs the size of the real data (about 800x600), in the nature_12K layout."""
    if not (root / synthetic.MARKER_FILE).is_file():
        synthetic.generate(
            root,
            seed=seed,
            train_per_class=per_class,
            test_per_class=test_per_class,
            min_side=min_side,
            max_side=max_side,
        )
    return root


def make_split(raw: Path, out: Path, image_size: int) -> Path:
    if not (out / "manifest.json").is_file():
        split_dataset(raw, out, image_size=image_size, val_fraction=0.2, seed=0, progress=False)
    return out


def images_per_second(run: Callable[[], int], repeats: int = 1) -> float:
    """Best of ``repeats`` timed calls of ``run``, which returns how many images it handled."""
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        count = run()
        best = max(best, count / (time.perf_counter() - started))
    return best


def print_table(headers: list[str], rows: list[list[object]]) -> None:
    cells = [headers, *[[f"{c:,.0f}" if isinstance(c, float) else str(c) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            print("  ".join("-" * w for w in widths))
