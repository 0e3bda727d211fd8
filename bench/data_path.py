"""Images per second delivered to the model: our uint8-array loader against ImageFolder + PIL.

    python bench/data_path.py [--per-class 40] [--sizes 128 224] [--workdir /tmp/naturalist-bench]

Both read the same JPEGs of the real data's size (about 800x600). The baseline is the usual
torchvision pipeline (ImageFolder, Resize, ToTensor, a DataLoader with the same batch size and
workers) and decodes every JPEG every epoch. Ours decodes each JPEG once in the split stage (timed
separately) and then slices uint8 arrays, in memory or memory-mapped from disk.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from common import images_per_second, make_large_jpegs, make_split, print_table
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from naturalist.allocator import keep_freed_memory
from naturalist.data import BatchLoader, load_split
from naturalist.split import split_dataset


def baseline_rate(root: Path, size: int, batch_size: int, workers: int) -> float:
    folder = datasets.ImageFolder(
        str(root / "train"),
        transform=transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor()]),
    )
    loader = DataLoader(folder, batch_size=batch_size, shuffle=True, num_workers=workers)

    def one_epoch() -> int:
        return sum(len(labels) for _, labels in loader)

    return images_per_second(one_epoch)


def ours_rate(split_dir: Path, batch_size: int, in_memory: bool) -> float:
    arrays = load_split(split_dir, "train")
    loader = BatchLoader(
        arrays,
        batch_size=batch_size,
        device=torch.device("cpu"),
        shuffle=True,
        in_memory_limit=2**62 if in_memory else 0,
    )

    def one_epoch() -> int:
        return sum(len(labels) for _, labels in loader)

    return images_per_second(one_epoch, repeats=3)


def decode_rate(raw: Path, workdir: Path, size: int) -> float:
    out = workdir / f"decode-{size}"
    return split_dataset(
        raw, out, image_size=size, val_fraction=0.2, seed=0, progress=False
    ).images_per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/naturalist-bench"))
    args = parser.parse_args()
    keep_freed_memory()  # the allocator settings of training.fit, for both loaders
    raw = make_large_jpegs(args.workdir / f"raw-{args.per_class}", args.per_class)
    count = args.per_class * 10
    print(
        f"{count} JPEGs of 600-800 px per side, batch {args.batch_size}, "
        f"{args.workers} workers, {os.cpu_count()} cores\n"
    )
    rows = []
    for size in args.sizes:
        split_dir = make_split(raw, args.workdir / f"split-{args.per_class}-{size}", size)
        base = baseline_rate(raw, size, args.batch_size, args.workers)
        memory = ours_rate(split_dir, args.batch_size, in_memory=True)
        mapped = ours_rate(split_dir, args.batch_size, in_memory=False)
        decode = decode_rate(raw, args.workdir, size)
        rows.append(
            [size, base, memory, mapped, f"{memory / base:.1f}x", f"{mapped / base:.1f}x", decode]
        )
    print_table(
        [
            "px",
            "ImageFolder img/s",
            "ours (memory)",
            "ours (memmap)",
            "ratio memory",
            "ratio memmap",
            "split decode img/s (once)",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
