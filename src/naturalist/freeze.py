"""The freeze rule of a fine-tune: which layers of a pretrained backbone train and which do not.

Definition (DESIGN.md §6, documented in the README):

- A **layer** is a module that owns weights and does work: ``nn.Conv2d`` or ``nn.Linear``.
- Any other module that owns weights (a BatchNorm, or another normalisation) **belongs to the layer
  that ran just before it**: a conv and its batch norm are one layer.
- Layers are counted in **forward order**, found by running the backbone once on a small dummy
  image with hooks, so the count does not depend on how a model registers its children.
- "Freeze N %" freezes the first ``round(N % of the layers)`` layers, rounding halves up
  (``freeze_count``). 100 freezes the whole backbone (only the new head trains); 0 freezes
  nothing (a full fine-tune). The new 10-class head is not part of the backbone and always trains.
- A frozen module runs in eval mode even while the model trains (``keep_frozen_in_eval``): a
  frozen batch norm keeps normalising with its ImageNet statistics and never updates them, and a
  fully frozen block does no stochastic depth, so the frozen part is a fixed feature extractor.

Counting modules (not parameter tensors, top-level children or ResNet stages) makes every freeze
level a distinct model: on ResNet50 (53 layers) and EfficientNet-Lite0 (49 layers) 70, 80 and 90 %
freeze three different sets of layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class Layer:
    """One layer of a backbone: a conv or linear module plus the modules that belong to it."""

    index: int  # 0-based position in forward order
    name: str  # qualified name of the conv / linear module inside the backbone
    kind: str  # "Conv2d" or "Linear" (subclasses, e.g. padded convs, count as their base)
    members: tuple[str, ...]  # qualified names of every module in the layer (itself first)
    params: int  # parameters of all members


@dataclass(frozen=True)
class FreezePlan:
    """The outcome of the freeze rule on one backbone at one percentage."""

    percent: int
    layers: tuple[Layer, ...]
    frozen: int  # how many layers (the first ones in forward order) are frozen

    @property
    def frozen_layers(self) -> tuple[Layer, ...]:
        return self.layers[: self.frozen]

    @property
    def trainable_layers(self) -> tuple[Layer, ...]:
        return self.layers[self.frozen :]

    @property
    def frozen_params(self) -> int:
        return sum(layer.params for layer in self.frozen_layers)

    def describe(self) -> str:
        """One line: how many layers are frozen, and where the boundary is."""
        total = len(self.layers)
        if self.frozen == 0:
            return f"freeze {self.percent}%: 0 of {total} layers frozen (full fine-tune)"
        last = self.frozen_layers[-1].name
        if self.frozen == total:
            return f"freeze {self.percent}%: all {total} layers frozen (head only)"
        first = self.trainable_layers[0].name
        return (
            f"freeze {self.percent}%: {self.frozen} of {total} layers frozen "
            f"(last frozen {last}, first trained {first})"
        )


def freeze_count(num_layers: int, percent: int) -> int:
    """round(percent % of num_layers), halves rounded up, in exact integer arithmetic."""
    if not 0 <= percent <= 100:
        raise ValueError(f"freeze percentage must be in 0..100, got {percent}")
    return (2 * num_layers * percent + 100) // 200


def _owns_weights(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def trace_layers(backbone: nn.Module, example: torch.Tensor | None = None) -> tuple[Layer, ...]:
    """The backbone's layers in forward order (see the module docstring for the definition).

    Runs one forward pass on ``example`` (default: a 1x3x32x32 zero image) in eval mode without
    gradients and records the first call of every module that owns weights. A module that owns
    weights but never runs, or a normalisation that runs before any conv, is an error: the rule
    would not cover all of the backbone's weights.
    """
    if example is None:
        example = torch.zeros(1, 3, 32, 32)
    names = {module: name for name, module in backbone.named_modules()}
    weighted = [m for m in names if _owns_weights(m)]
    order: list[nn.Module] = []
    seen: set[int] = set()

    def record(module: nn.Module, *_: object) -> None:
        if id(module) not in seen:
            seen.add(id(module))
            order.append(module)

    handles = [m.register_forward_pre_hook(record) for m in weighted]
    was_training = backbone.training
    try:
        backbone.eval()
        with torch.no_grad():
            backbone(example.to(next(backbone.parameters()).device))
    finally:
        for handle in handles:
            handle.remove()
        backbone.train(was_training)

    never_ran = [names[m] for m in weighted if id(m) not in seen]
    if never_ran:
        raise ValueError(f"modules with weights that never run in forward: {never_ran}")

    groups: list[list[nn.Module]] = []
    for module in order:
        if isinstance(module, LAYER_TYPES):
            groups.append([module])
        elif groups:
            groups[-1].append(module)
        else:
            raise ValueError(
                f"{names[module]} ({type(module).__name__}) owns weights but runs before any "
                "conv or linear layer"
            )
    return tuple(
        Layer(
            index=i,
            name=names[group[0]],
            kind=next(t.__name__ for t in LAYER_TYPES if isinstance(group[0], t)),
            members=tuple(names[m] for m in group),
            params=sum(p.numel() for m in group for p in m.parameters(recurse=False)),
        )
        for i, group in enumerate(groups)
    )


def apply_freeze(
    backbone: nn.Module, percent: int, layers: tuple[Layer, ...] | None = None
) -> FreezePlan:
    """Freeze the first round(percent %) layers of ``backbone`` and unfreeze the rest.

    Sets ``requires_grad`` on every parameter of the backbone; returns the plan. Call
    ``keep_frozen_in_eval`` after every ``model.train()`` (FinetuneModel does) so that frozen
    batch norms do not update their running statistics.
    """
    if layers is None:
        layers = trace_layers(backbone)
    frozen = freeze_count(len(layers), percent)
    modules = dict(backbone.named_modules())
    for i, layer in enumerate(layers):
        for member in layer.members:
            for param in modules[member].parameters(recurse=False):
                param.requires_grad_(i >= frozen)
    return FreezePlan(percent=percent, layers=layers, frozen=frozen)


def keep_frozen_in_eval(module: nn.Module) -> None:
    """Put every submodule whose weights are all frozen in eval mode (top-down, recursively).

    A frozen BatchNorm then normalises with its stored running statistics and never updates
    them; a frozen block skips its dropout / stochastic depth. Modules without weights (ReLU,
    pooling, dropout) follow their parent.
    """
    params = list(module.parameters())
    if params and not any(p.requires_grad for p in params):
        module.eval()
        return
    for child in module.children():
        keep_frozen_in_eval(child)
