"""The 5-block CNN trained from scratch, and rebuilding any saved model from its checkpoint.

Every model here takes float images in [0, 1], shape (N, 3, H, W), and returns logits: the
normalisation is the model's first layer (so a checkpoint carries it) and the softmax belongs to the
loss alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "ReLU": nn.ReLU,
    "GELU": nn.GELU,
    "SiLU": nn.SiLU,
    "Mish": nn.Mish,
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NUM_BLOCKS = 5


class Normalize(nn.Module):
    """Per-channel standardisation with fixed statistics (ImageNet's, which suit both models)."""

    def __init__(
        self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
    ) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def feature_size(image_size: int, blocks: int = NUM_BLOCKS) -> int:
    """Side of the feature map after ``blocks`` 2x2 max-pools ('same' convs keep the size)."""
    for _ in range(blocks):
        image_size //= 2
    return image_size


class ScratchCNN(nn.Module):
    """Five blocks of conv, [batch norm], activation, 2x2 max-pool; a dense layer; 10 logits."""

    def __init__(
        self,
        *,
        filters: Sequence[int],
        kernel_sizes: Sequence[int],
        activation: str,
        batch_norm: bool,
        dropout: float,
        dense_units: int,
        image_size: int,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        if len(filters) != NUM_BLOCKS or len(kernel_sizes) != NUM_BLOCKS:
            raise ValueError(f"filters and kernel_sizes need {NUM_BLOCKS} values each")
        side = feature_size(image_size)
        if side < 1:
            raise ValueError(
                f"image_size {image_size} is too small for {NUM_BLOCKS} max-pools "
                f"(needs >= {2**NUM_BLOCKS})"
            )
        act = ACTIVATIONS[activation]
        layers: list[nn.Module] = [Normalize()]
        channels = 3
        for out_channels, kernel in zip(filters, kernel_sizes, strict=True):
            layers.append(
                nn.Conv2d(channels, out_channels, kernel, padding="same", bias=not batch_norm)
            )
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers += [act(), nn.MaxPool2d(2)]
            channels = out_channels
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * side * side, dense_units),
            act(),
            nn.Dropout(dropout),
            nn.Linear(dense_units, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def scratch_config(model_params: Any, image_size: int, num_classes: int) -> dict[str, Any]:
    """The keyword arguments of ScratchCNN from ``params.model`` (also stored in checkpoints)."""
    return {
        "filters": list(model_params.filters),
        "kernel_sizes": list(model_params.kernel_sizes),
        "activation": model_params.activation,
        "batch_norm": model_params.batch_norm,
        "dropout": model_params.dropout,
        "dense_units": model_params.dense_units,
        "image_size": image_size,
        "num_classes": num_classes,
    }


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def build_model(kind: str, config: dict[str, Any]) -> nn.Module:
    """Rebuild a model from the ``kind`` and ``config`` stored in its checkpoint."""
    if kind == "scratch_cnn":
        return ScratchCNN(**config)
    if kind == "finetune":
        from naturalist.backbones import build_finetune_model

        return build_finetune_model(**config, pretrained=False)
    raise ValueError(f"unknown model kind {kind!r}")


def save_checkpoint(
    path: Path,
    model: nn.Module,
    *,
    kind: str,
    config: dict[str, Any],
    state_dict: dict[str, torch.Tensor] | None = None,
    meta: dict[str, Any] | None = None,
) -> None:
    """Save weights plus what is needed to rebuild the model; loadable with weights_only=True."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = state_dict if state_dict is not None else model.state_dict()
    payload = {
        "kind": kind,
        "config": config,
        "state_dict": {k: v.detach().cpu() for k, v in state.items()},
        "meta": meta or {},
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a model from a checkpoint (weights only, no pickled code); return it and its meta."""
    payload = torch.load(path, map_location=device, weights_only=True)
    model = build_model(payload["kind"], payload["config"])
    model.load_state_dict(payload["state_dict"])
    model.to(device).eval()
    return model, payload["meta"]
