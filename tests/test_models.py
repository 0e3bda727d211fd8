"""The 5-block CNN: every point of the original search space builds and gives 10 logits."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from torch import nn

from naturalist.models import (
    ScratchCNN,
    count_parameters,
    feature_size,
    load_checkpoint,
    save_checkpoint,
)

KERNELS = ([3, 3, 3, 3, 3], [3, 5, 5, 7, 7], [7, 7, 5, 5, 3])
FILTERS = ([32, 32, 32, 32, 32], [128, 128, 64, 64, 32], [32, 64, 128, 256, 512])
ACTIVATIONS = ("ReLU", "GELU", "SiLU", "Mish")


def make(**overrides) -> ScratchCNN:
    config = {
        "filters": [8] * 5,
        "kernel_sizes": [3] * 5,
        "activation": "ReLU",
        "batch_norm": True,
        "dropout": 0.2,
        "dense_units": 16,
        "image_size": 64,
    }
    return ScratchCNN(**{**config, **overrides})


@pytest.mark.parametrize(("kernels", "filters"), list(itertools.product(KERNELS, FILTERS)))
def test_whole_search_space_builds_and_outputs_logits(kernels: list, filters: list) -> None:
    images = torch.rand(2, 3, 64, 64)
    for activation, batch_norm, dense in itertools.product(ACTIVATIONS, (True, False), (128, 256)):
        model = make(
            filters=filters,
            kernel_sizes=kernels,
            activation=activation,
            batch_norm=batch_norm,
            dense_units=dense,
        ).eval()
        with torch.no_grad():
            assert model(images).shape == (2, 10)
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        assert [c.kernel_size[0] for c in convs] == kernels
        assert [c.out_channels for c in convs] == filters
        assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == batch_norm


@pytest.mark.parametrize("image_size", [32, 64, 100, 224])
def test_flattened_size_follows_the_image_size(image_size: int) -> None:
    model = make(image_size=image_size).eval()
    dense = model.head[1]
    assert dense.in_features == 8 * feature_size(image_size) ** 2
    assert model(torch.rand(1, 3, image_size, image_size)).shape == (1, 10)


def test_too_small_image_is_refused() -> None:
    with pytest.raises(ValueError, match="too small"):
        make(image_size=16)


def test_outputs_are_logits_not_probabilities() -> None:
    model = make().eval()
    assert not any(isinstance(m, (nn.Softmax, nn.LogSoftmax)) for m in model.modules())
    with torch.no_grad():
        out = model(torch.rand(8, 3, 64, 64))
    assert (out < 0).any()
    assert not torch.allclose(out.sum(1), torch.ones(8))


def test_checkpoint_round_trip_gives_identical_predictions(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = make(activation="Mish", batch_norm=True).eval()
    model.features[2].running_mean.fill_(0.3)  # buffers travel too
    config = {
        "filters": [8] * 5,
        "kernel_sizes": [3] * 5,
        "activation": "Mish",
        "batch_norm": True,
        "dropout": 0.2,
        "dense_units": 16,
        "image_size": 64,
    }
    save_checkpoint(
        tmp_path / "m.pt",
        model,
        kind="scratch_cnn",
        config=config,
        meta={"classes": list("abcdefghij")},
    )
    loaded, meta = load_checkpoint(tmp_path / "m.pt")  # weights_only=True inside
    images = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(images), loaded(images))
    assert meta["classes"] == list("abcdefghij")
    assert count_parameters(loaded) == count_parameters(model)
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    assert set(payload) == {"kind", "config", "state_dict", "meta"}
