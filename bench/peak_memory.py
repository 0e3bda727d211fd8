"""Peak memory of the split stage and of training on a nature_12K-sized set (10,000 images).

    python bench/peak_memory.py [--images 10000] [--size 224] [--workdir /tmp/naturalist-bench]

Each measurement runs in a fresh process and reports its peak resident set size. The baseline is
the naive in-memory approach: every decoded image kept in a Python list, stacked, and converted to
one float32 tensor (what ``torch.stack([ToTensor()(img) ...])`` does).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from common import make_large_jpegs, print_table

CHILD = r"""
import json, resource, sys
from pathlib import Path
import numpy as np
import torch
mode, raw, out, size = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
if mode == "split":
    from naturalist.split import split_dataset
    split_dataset(raw, out, image_size=size, val_fraction=0.2, seed=0, progress=False)
elif mode == "naive-split":
    from naturalist.layout import read_layout
    from naturalist.split import decode_image
    layout = read_layout(raw)
    images = [decode_image(p, size) for files in layout.files["train"].values() for p in files]
    tensor = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(255)
elif mode in ("train", "train-glibc"):
    from naturalist.allocator import keep_freed_memory
    from naturalist.data import BatchLoader, load_split
    if mode == "train":
        keep_freed_memory()  # as training.fit does: the heap keeps its peak
    from naturalist.models import ScratchCNN
    model = ScratchCNN(filters=[32] * 5, kernel_sizes=[3] * 5, activation="ReLU",
                       batch_norm=True, dropout=0.2, dense_units=128, image_size=size)
    optimizer = torch.optim.Adam(model.parameters())
    loader = BatchLoader(load_split(out, "train"), batch_size=64, device=torch.device("cpu"),
                         shuffle=True)
    for step, (x, y) in enumerate(loader):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(); loss.backward(); optimizer.step()
        if step == 5:
            break
print(json.dumps({"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def peak(mode: str, raw: Path, out: Path, size: int) -> float:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(raw), str(out), str(size)],
        capture_output=True,
        text=True,
        check=True,
    )
    own = json.loads(done.stdout.strip().splitlines()[-1])["peak_mib"]
    # the split's decoding workers are children of that process, measured separately by the OS
    return own


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/naturalist-bench"))
    args = parser.parse_args()
    per_class = args.images // 10
    raw = make_large_jpegs(
        args.workdir / f"mem-raw-{per_class}",
        per_class,
        test_per_class=1,
        min_side=args.size,
        max_side=int(args.size * 1.5),
    )
    out = args.workdir / f"mem-split-{per_class}-{args.size}"
    rows = []
    for label, mode in (
        ("split (ours: memmap)", "split"),
        ("split (naive: list + stack + float32)", "naive-split"),
        ("training, 6 steps (fit's allocator settings)", "train"),
        ("training, 6 steps (glibc's defaults)", "train-glibc"),
    ):
        rows.append([label, peak(mode, raw, out, args.size)])
    print(
        f"{args.images:,} images at {args.size} px "
        f"({args.images * args.size * args.size * 3 / 2**30:.2f} GiB as uint8)\n"
    )
    print_table(["process", "peak RSS MiB"], rows)
    print(
        f"\nratio naive/ours (split): {rows[1][1] / rows[0][1]:.1f}x; training keeps "
        f"{rows[2][1] / rows[3][1]:.2f}x the memory of glibc's defaults"
    )


if __name__ == "__main__":
    main()
