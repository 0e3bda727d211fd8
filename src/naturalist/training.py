"""The one training loop: train_scratch, every sweep trial and every finetune stage use ``fit``."""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from naturalist.allocator import keep_freed_memory
from naturalist.data import BatchLoader, SplitArrays, resolve_device


@dataclass(frozen=True)
class FitConfig:
    """How to train: the ``train.*`` params for the scratch CNN, ``finetune.*`` for fine-tuning."""

    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "adam"
    weight_decay: float = 0.0
    schedule: str = "cosine"
    early_stopping: int = 0
    device: str = "auto"
    augment: bool = False
    label_smoothing: float = 0.0
    seed: int = 0
    image_size: int | None = None  # resize batches on the fly when the model wants another size


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    seconds: float


@dataclass
class FitResult:
    history: list[EpochMetrics] = field(default_factory=list)
    best_epoch: int = 0
    best_val_acc: float = 0.0
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)
    stopped_early: bool = False
    seconds: float = 0.0
    train_images_per_second: float = 0.0


EpochCallback = Callable[[EpochMetrics], None]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so that the same params give the same run on the CPU."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(
    name: str, groups: list[dict], lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(
            groups, lr=lr, weight_decay=weight_decay, momentum=0.9, nesterov=True
        )
    raise ValueError(f"unknown optimizer {name!r} (adam, adamw, sgd)")


def lr_factor(schedule: str, step: int, total: int) -> float:
    """Multiplier of each group's base learning rate at ``step`` of ``total`` steps."""
    progress = min(step / max(total, 1), 1.0)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "onecycle":
        warmup = 0.3
        if progress < warmup:
            return 0.04 + 0.96 * progress / warmup
        return 0.5 * (1 + math.cos(math.pi * (progress - warmup) / (1 - warmup)))
    return 1.0


def autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA; plain float32 elsewhere (CPU bf16 is slower on most machines)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def predict(model: nn.Module, loader: BatchLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (float32, on the CPU) and labels for every batch of ``loader``, in order."""
    keep_freed_memory()
    model.eval().to(memory_format=torch.channels_last)
    logits, labels = [], []
    for images, targets in loader:
        with autocast(loader.device):
            logits.append(model(images).float().cpu())
        labels.append(targets.cpu())
    return torch.cat(logits), torch.cat(labels)


def evaluate(model: nn.Module, loader: BatchLoader) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` on every image of ``loader``."""
    logits, labels = predict(model, loader)
    loss = nn.functional.cross_entropy(logits, labels).item()
    return loss, (logits.argmax(1) == labels).float().mean().item()


def fit(
    model: nn.Module,
    train: SplitArrays,
    val: SplitArrays,
    config: FitConfig,
    *,
    param_groups: list[dict] | None = None,
    on_epoch: EpochCallback | None = None,
    progress: bool = True,
    desc: str = "train",
) -> FitResult:
    """Train ``model`` and keep the weights of its best validation-accuracy epoch.

    ``param_groups`` gives groups their own learning rates (a fine-tune's head); by default every
    trainable parameter shares ``config.lr``. ``on_epoch`` sees each epoch's metrics: logging
    goes there, and a sweep's pruner may raise from it to stop the trial.
    """
    keep_freed_memory()  # reuse big buffers, no page faults: 1.1-1.6x faster steps (bench/)
    seed_everything(config.seed)
    device = resolve_device(config.device)
    # channels_last: 1.2-1.6x faster convs on this 2-core CPU (bench/README.md) as well as on CUDA
    model.to(device, memory_format=torch.channels_last)
    train_loader = BatchLoader(
        train,
        batch_size=config.batch_size,
        device=device,
        shuffle=True,
        augment=config.augment,
        seed=config.seed,
        image_size=config.image_size,
    )
    val_loader = BatchLoader(
        val, batch_size=max(config.batch_size, 256), device=device, image_size=config.image_size
    )
    groups = param_groups or [{"params": [p for p in model.parameters() if p.requires_grad]}]
    optimizer = make_optimizer(config.optimizer, groups, config.lr, config.weight_decay)
    total_steps = config.epochs * len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(config.schedule, step, total_steps)
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

    result = FitResult()
    since_best = 0
    started = time.perf_counter()
    train_seconds = 0.0
    for epoch in range(1, config.epochs + 1):
        epoch_start = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        bar = tqdm(
            train_loader,
            desc=f"{desc} {epoch}/{config.epochs}",
            unit="batch",
            leave=False,
            disable=not progress,
        )
        for images, labels in bar:
            with autocast(device):
                logits = model(images)
                loss = loss_fn(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach() * len(labels)
            correct += (logits.argmax(1) == labels).sum()
            seen += len(labels)
        train_seconds += time.perf_counter() - epoch_start
        val_loss, val_acc = evaluate(model, val_loader)
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=loss_sum.item() / seen,
            train_acc=correct.item() / seen,
            val_loss=val_loss,
            val_acc=val_acc,
            lr=optimizer.param_groups[0]["lr"],
            seconds=time.perf_counter() - epoch_start,
        )
        result.history.append(metrics)
        if progress:
            tqdm.write(
                f"{desc} epoch {epoch}/{config.epochs}: train loss {metrics.train_loss:.3f} "
                f"acc {metrics.train_acc:.3f} | val loss {val_loss:.3f} acc {val_acc:.3f} "
                f"| {metrics.seconds:.1f}s"
            )
        if val_acc > result.best_val_acc or not result.best_state:
            result.best_val_acc, result.best_epoch = val_acc, epoch
            result.best_state = copy.deepcopy(
                {k: v.detach().cpu() for k, v in model.state_dict().items()}
            )
            since_best = 0
        else:
            since_best += 1
        if on_epoch is not None:
            on_epoch(metrics)
        if config.early_stopping and since_best >= config.early_stopping:
            result.stopped_early = True
            if progress:
                tqdm.write(f"{desc}: early stop, no better val acc for {since_best} epochs")
            break
    result.seconds = time.perf_counter() - started
    trained = len(result.history) * len(train)
    result.train_images_per_second = trained / max(train_seconds, 1e-9)
    model.load_state_dict(result.best_state)
    return result
