"""Batches from the split stage's uint8 arrays, with augmentation done batch-wise on tensors.

No JPEG is decoded here: the split stage did that once. A batch is a slice of a (possibly
disk-backed) uint8 array, moved to the device and turned into floats there. When the array is small
enough it is held whole on the device (on a GPU, the airbench way), so an epoch costs no host I/O.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from naturalist.errors import PipelineError
from naturalist.split import MANIFEST

# Hold an array in (device) memory below this size; above it, read batches from the memmap.
IN_MEMORY_LIMIT = 2 * 1024**3


@dataclass
class SplitArrays:
    """One split: images (N, H, W, 3) uint8, labels (N,) int64, and the class names."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def load_manifest(split_dir: Path) -> dict:
    path = Path(split_dir) / MANIFEST
    if not path.is_file():
        raise PipelineError(f"{path} not found: run the split stage first (dvc repro split)")
    return json.loads(path.read_text())


def load_split(split_dir: Path, name: str) -> SplitArrays:
    """Open one split's arrays; the images stay on disk (memory-mapped) until they are used."""
    split_dir = Path(split_dir)
    manifest = load_manifest(split_dir)
    images = np.load(split_dir / f"{name}_images.npy", mmap_mode="r")
    labels = np.load(split_dir / f"{name}_labels.npy")
    return SplitArrays(images=images, labels=labels, classes=list(manifest["classes"]))


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise PipelineError(
            "train.device: 'cuda' requested but no CUDA device is available (use auto or cpu)"
        )
    if name == "mps" and not torch.backends.mps.is_available():
        raise PipelineError(
            "train.device: 'mps' requested but Apple MPS is not available (use auto or cpu)"
        )
    return torch.device(name)


def to_float_images(batch: torch.Tensor, image_size: int | None = None) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [0, 1], resized when ``image_size`` differs.

    The permute leaves the tensor in channels_last memory order, which is what fast convs want
    (the training loop puts models in channels_last too).
    """
    images = batch.permute(0, 3, 1, 2).float().div_(255.0)
    if image_size is not None and images.shape[-1] != image_size:
        images = F.interpolate(
            images,
            size=(image_size, image_size),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )
    return images


def augment_batch(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random resized crop, horizontal flip and light colour jitter, per image, in one pass.

    The crop and flip are one affine resampling (grid_sample) of the whole batch; the random numbers
    come from a CPU generator so the result is the same on every device for a given seed.
    """
    n = images.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return (torch.rand(n, generator=generator) * (high - low) + low).to(images.device)

    area = uniform(0.5, 1.0)
    log_ratio = uniform(math.log(3 / 4), math.log(4 / 3))
    scale_x = (area * log_ratio.exp()).sqrt().clamp(max=1.0)
    scale_y = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
    shift_x = (uniform(-1, 1)) * (1 - scale_x)
    shift_y = (uniform(-1, 1)) * (1 - scale_y)
    flip = torch.where(uniform(0, 1) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=images.device)
    theta[:, 0, 0] = scale_x * flip
    theta[:, 0, 2] = shift_x
    theta[:, 1, 1] = scale_y
    theta[:, 1, 2] = shift_y
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(
        images, grid, mode="bilinear", padding_mode="reflection", align_corners=False
    )

    brightness = uniform(0.8, 1.2).view(n, 1, 1, 1)
    contrast = uniform(0.8, 1.2).view(n, 1, 1, 1)
    saturation = uniform(0.8, 1.2).view(n, 1, 1, 1)
    images = images * brightness
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    images = (images - mean) * contrast + mean
    gray = images.mean(dim=1, keepdim=True)
    images = (images - gray) * saturation + gray
    return images.clamp_(0.0, 1.0)


class BatchLoader:
    """Iterate over (images, labels) batches of a split on a device.

    images are float (N, 3, S, S) in [0, 1]; shuffling and augmentation draw from a generator
    seeded by ``seed`` plus the epoch, so every epoch differs and every run repeats.
    """

    def __init__(
        self,
        arrays: SplitArrays,
        *,
        batch_size: int,
        device: torch.device,
        shuffle: bool = False,
        augment: bool = False,
        seed: int = 0,
        image_size: int | None = None,
        in_memory_limit: int = IN_MEMORY_LIMIT,
    ) -> None:
        self.batch_size = batch_size
        self.device = device
        self.shuffle = shuffle
        self.augment = augment
        self.seed = seed
        self.image_size = image_size
        self.epoch = 0
        self.labels = torch.from_numpy(np.asarray(arrays.labels, dtype=np.int64)).to(device)
        self.in_memory = arrays.images.nbytes <= in_memory_limit
        if self.in_memory:
            self.images: torch.Tensor | np.ndarray = torch.from_numpy(np.array(arrays.images)).to(
                device
            )
        else:
            self.images = arrays.images

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def _slice(self, index: torch.Tensor) -> torch.Tensor:
        if self.in_memory:
            assert isinstance(self.images, torch.Tensor)
            # index_select copies whole rows; images[index] gathers byte by byte (10x slower)
            return self.images.index_select(0, index.to(self.images.device))
        batch = torch.from_numpy(np.ascontiguousarray(self.images[index.numpy()]))
        pin = self.device.type == "cuda"
        return (batch.pin_memory() if pin else batch).to(self.device, non_blocking=pin)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        self.epoch += 1
        n = len(self.labels)
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        for start in range(0, n, self.batch_size):
            index = order[start : start + self.batch_size]
            if not self.in_memory:  # sorted rows make memmap reads mostly sequential
                index = torch.from_numpy(np.sort(index.numpy()))
            images = to_float_images(self._slice(index), self.image_size)
            if self.augment:
                images = augment_batch(images, generator)
            yield images, self.labels[index.to(self.labels.device)]
