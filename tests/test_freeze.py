"""The freeze rule (DESIGN.md §6) on both real backbone architectures and on small nets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from naturalist.backbones import FinetuneModel, build_backbone, build_finetune_model
from naturalist.freeze import (
    Layer,
    apply_freeze,
    freeze_count,
    keep_frozen_in_eval,
    trace_layers,
)

# backbone -> (layers, {level: frozen layers}, first layer's members, last layer's members)
EXPECTED = {
    "resnet50": (
        53,
        {0: 0, 70: 37, 80: 42, 90: 48, 100: 53},
        ("conv1", "bn1"),
        ("layer4.2.conv3", "layer4.2.bn3"),
    ),
    "efficientnet_lite0": (
        49,
        {0: 0, 70: 34, 80: 39, 90: 44, 100: 49},
        ("_conv_stem", "_bn0"),
        ("_conv_head", "_bn1"),
    ),
}
BACKBONES = sorted(EXPECTED)


Traced = tuple[str, nn.Module, tuple[Layer, ...]]


@pytest.fixture(scope="module", params=BACKBONES)
def backbone(request: pytest.FixtureRequest) -> Traced:
    """The real architecture with random weights (the rule does not depend on the weights)."""
    net, _ = build_backbone(request.param, pretrained=False)
    return request.param, net, trace_layers(net)


def trainable_names(net: nn.Module) -> set[str]:
    return {name for name, p in net.named_parameters() if p.requires_grad}


def test_freeze_count_rounds_half_up_exactly() -> None:
    assert [freeze_count(53, p) for p in (0, 70, 80, 90, 100)] == [0, 37, 42, 48, 53]
    assert [freeze_count(49, p) for p in (0, 70, 80, 90, 100)] == [0, 34, 39, 44, 49]
    assert freeze_count(10, 25) == 3  # 2.5 -> 3 (Python's round() would give 2)
    assert freeze_count(10, 15) == 2  # 1.5 -> 2
    assert freeze_count(10, 14) == 1  # 1.4 -> 1
    with pytest.raises(ValueError, match=r"0\.\.100"):
        freeze_count(10, 101)


def test_layers_are_convs_in_forward_order_each_with_its_batch_norm(backbone: Traced) -> None:
    name, net, layers = backbone
    count, _, first, last = EXPECTED[name]
    assert len(layers) == count
    assert layers[0].members == first
    assert layers[-1].members == last
    assert all(layer.kind == "Conv2d" for layer in layers)  # the classifier is gone
    modules = dict(net.named_modules())
    for layer in layers:
        # a conv plus the batch norm that runs right after it, nothing else
        assert isinstance(modules[layer.members[0]], nn.Conv2d)
        assert [type(modules[m]) for m in layer.members[1:]] == [nn.BatchNorm2d]
    # every weight of the backbone belongs to exactly one layer
    members = [m for layer in layers for m in layer.members]
    assert len(members) == len(set(members))
    assert sum(layer.params for layer in layers) == sum(p.numel() for p in net.parameters())


def test_resnet_downsample_is_counted_where_it_runs(backbone: Traced) -> None:
    if backbone[0] != "resnet50":
        pytest.skip("ResNet only")
    names = [layer.name for layer in backbone[2]]
    # Bottleneck.forward runs conv1..conv3 and then the shortcut's 1x1 conv
    assert names[1:6] == [
        "layer1.0.conv1",
        "layer1.0.conv2",
        "layer1.0.conv3",
        "layer1.0.downsample.0",
        "layer1.1.conv1",
    ]


@pytest.mark.parametrize("level", [0, 70, 80, 90, 100])
def test_apply_freeze_freezes_exactly_the_first_layers(backbone: Traced, level: int) -> None:
    name, net, layers = backbone
    _, frozen_counts, _, _ = EXPECTED[name]
    plan = apply_freeze(net, level, layers)
    assert plan.frozen == frozen_counts[level]
    modules = dict(net.named_modules())
    for layer in plan.layers:
        flags = {p.requires_grad for m in layer.members for p in modules[m].parameters()}
        assert flags == {layer.index >= plan.frozen}, layer.name  # a conv and its BN agree
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert trainable == sum(layer.params for layer in plan.trainable_layers)
    if level == 0:
        assert trainable == sum(p.numel() for p in net.parameters())
    if level == 100:
        assert trainable == 0


def test_70_80_90_train_three_different_nested_sets(backbone: Traced) -> None:
    _, net, layers = backbone
    sets = {}
    for level in (70, 80, 90):
        apply_freeze(net, level, layers)
        sets[level] = trainable_names(net)
    assert sets[90] < sets[80] < sets[70]  # strictly nested: three different models
    assert len({len(s) for s in sets.values()}) == 3


def test_head_always_trains_and_the_plan_is_recorded() -> None:
    for level in (0, 100):
        model = build_finetune_model(
            backbone="efficientnet_lite0", freeze=level, num_classes=10, pretrained=False
        )
        assert all(p.requires_grad for p in model.head.parameters())
        assert model.freeze_plan is not None and model.freeze_plan.percent == level
    groups = model.param_groups(lr=1e-4, head_lr=1e-2)
    assert [g["name"] for g in groups] == ["head"]  # at 100 % no backbone group at all
    assert "head only" in model.freeze_plan.describe()


def test_frozen_modules_stay_in_eval_mode_through_train(backbone: Traced) -> None:
    _, net, layers = backbone
    model = FinetuneModel(net, features=8, num_classes=10, dropout=0.0, image_size=64)
    plan = apply_freeze(net, 80, layers)
    model.train()
    modules = dict(model.backbone.named_modules())
    frozen_bn = [modules[m] for layer in plan.frozen_layers for m in layer.members[1:]]
    trained_bn = [modules[m] for layer in plan.trainable_layers for m in layer.members[1:]]
    assert frozen_bn and trained_bn
    assert not any(bn.training for bn in frozen_bn)
    assert all(bn.training for bn in trained_bn)
    assert model.head.training
    model.eval()
    assert not any(m.training for m in model.modules())
    model.train()
    assert not any(bn.training for bn in frozen_bn) and all(bn.training for bn in trained_bn)


# --------------------------------------------------------------------------------------------
# The rule on small nets, where the expected answer is obvious


class Swapped(nn.Module):
    """Registers ``late`` before ``early`` but runs ``early`` first."""

    def __init__(self) -> None:
        super().__init__()
        self.late = nn.Conv2d(4, 4, 3, padding=1)
        self.late_bn = nn.BatchNorm2d(4)
        self.early = nn.Conv2d(3, 4, 3, padding=1)
        self.early_bn = nn.BatchNorm2d(4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.late_bn(self.late(self.early_bn(self.early(x)).relu()))
        return self.fc(self.pool(x).flatten(1))


def test_layers_follow_forward_order_not_registration_order() -> None:
    layers = trace_layers(Swapped())
    assert [layer.members for layer in layers] == [
        ("early", "early_bn"),
        ("late", "late_bn"),
        ("fc",),
    ]
    assert [layer.kind for layer in layers] == ["Conv2d", "Conv2d", "Linear"]


def test_keep_frozen_in_eval_on_a_small_net() -> None:
    net = Swapped()
    plan = apply_freeze(net, 34)  # round(3 * 0.34) = 1 layer: early + early_bn
    assert plan.frozen == 1
    net.train()
    keep_frozen_in_eval(net)
    assert not net.early_bn.training and not net.early.training
    assert net.late_bn.training and net.training


def test_weights_outside_any_layer_are_an_error() -> None:
    with pytest.raises(ValueError, match="before any conv"):
        trace_layers(nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 1)))

    class Unused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Conv2d(3, 4, 1)
            self.spare = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x)

    with pytest.raises(ValueError, match="never run"):
        trace_layers(Unused())
