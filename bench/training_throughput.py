"""Images per second of a train_scratch epoch: our loop's batches against an ImageFolder loop.

    python bench/training_throughput.py [--per-class 40] [--workdir /tmp/naturalist-bench]

Same default model (params.yaml's model.* at data.image_size), same optimizer, same batch size;
only the batches differ. The baseline feeds the model from ImageFolder + PIL Resize + ToTensor with
DataLoader workers, decoding the ~800x600 JPEGs every epoch; ours slices the split stage's arrays.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from common import images_per_second, make_large_jpegs, make_split, print_table
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from naturalist.allocator import keep_freed_memory
from naturalist.data import BatchLoader, load_split
from naturalist.models import ScratchCNN, scratch_config
from naturalist.params import load_params


def train_epoch(model: nn.Module, batches: Iterable) -> int:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    seen = 0
    for images, labels in batches:
        loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(labels)
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/naturalist-bench"))
    args = parser.parse_args()

    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    size, batch = params.data.image_size, params.train.batch_size
    raw = make_large_jpegs(args.workdir / f"raw-{args.per_class}", args.per_class)
    split_dir = make_split(raw, args.workdir / f"split-{args.per_class}-{size}", size)
    keep_freed_memory()  # both loops run with the allocator settings of training.fit
    torch.manual_seed(0)
    model = ScratchCNN(**scratch_config(params.model, size, 10))
    model.to(memory_format=torch.channels_last)  # as training.fit does

    folder = datasets.ImageFolder(
        str(raw / "train"),
        transform=transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor()]),
    )
    naive = DataLoader(folder, batch_size=batch, shuffle=True, num_workers=args.workers)
    ours = BatchLoader(
        load_split(split_dir, "train"), batch_size=batch, device=torch.device("cpu"), shuffle=True
    )
    train_epoch(model, ours)  # warm-up: first-call allocations
    base = images_per_second(lambda: train_epoch(model, naive))
    fast = images_per_second(lambda: train_epoch(model, ours), repeats=2)
    print(
        f"default model at {size} px, batch {batch}, {args.workers} loader workers, "
        f"{len(folder)} train JPEGs of 600-800 px\n"
    )
    print_table(
        ["loop", "train img/s"],
        [["ImageFolder + DataLoader", base], ["naturalist BatchLoader", fast]],
    )
    print(f"\nratio: {fast / base:.1f}x")


if __name__ == "__main__":
    main()
