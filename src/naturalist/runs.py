"""One training run from params to checkpoint: for train_scratch, sweep trials and finetune."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from naturalist.backbones import build_finetune_model, finetune_config
from naturalist.data import SplitArrays, load_split
from naturalist.models import ScratchCNN, count_parameters, save_checkpoint, scratch_config
from naturalist.params import Params
from naturalist.tracking import Tracker
from naturalist.training import (
    EpochCallback,
    EpochMetrics,
    FitConfig,
    FitResult,
    fit,
    seed_everything,
)


@dataclass
class Splits:
    train: SplitArrays
    val: SplitArrays

    @classmethod
    def load(cls, split_dir: Path) -> Splits:
        return cls(load_split(split_dir, "train"), load_split(split_dir, "val"))

    @property
    def image_size(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def classes(self) -> list[str]:
        return self.train.classes


def train_and_save(
    model: nn.Module,
    splits: Splits,
    fit_config: FitConfig,
    *,
    kind: str,
    config: dict[str, Any],
    logged_params: dict[str, Any],
    params: Params,
    dvclive_dir: Path,
    model_path: Path,
    run_name: str,
    group: str | None = None,
    param_groups: list[dict] | None = None,
    on_epoch: EpochCallback | None = None,
    progress: bool = True,
    extra_summary: dict[str, int | float | str] | None = None,
) -> FitResult:
    """Train with ``fit``, log to dvclive (and W&B), save the best checkpoint, print a summary.

    ``extra_summary`` values join the dvclive summary and the checkpoint's meta.
    """
    extra = dict(extra_summary or {})
    trainable, total = count_parameters(model)
    tracker = Tracker(
        dvclive_dir, params=logged_params, wandb_params=params.wandb, run_name=run_name, group=group
    )

    def log_then_callback(metrics: EpochMetrics) -> None:
        tracker.log_epoch(metrics)
        if on_epoch is not None:
            on_epoch(metrics)

    try:
        result = fit(
            model,
            splits.train,
            splits.val,
            fit_config,
            param_groups=param_groups,
            on_epoch=log_then_callback,
            progress=progress,
            desc=run_name,
        )
        tracker.log_summary(result, params_trainable=trainable, params_total=total, **extra)
    finally:
        tracker.close()
    save_checkpoint(
        model_path,
        model,
        kind=kind,
        config=config,
        state_dict=result.best_state,
        meta={
            "classes": splits.classes,
            "run": run_name,
            "val_acc": result.best_val_acc,
            "epoch": result.best_epoch,
            "params_trainable": trainable,
            "params_total": total,
            **extra,
        },
    )
    print(
        f"{run_name}: best val acc {result.best_val_acc:.4f} at epoch {result.best_epoch}/"
        f"{len(result.history)}, {trainable:,} of {total:,} params trained, "
        f"{result.seconds:.1f}s ({result.train_images_per_second:.0f} train images/s) "
        f"-> {model_path}"
    )
    return result


def train_scratch(
    params: Params,
    splits: Splits,
    *,
    dvclive_dir: Path,
    model_path: Path,
    run_name: str = "train_scratch",
    group: str | None = None,
    on_epoch: EpochCallback | None = None,
    progress: bool = True,
) -> FitResult:
    """Build the 5-block CNN from ``params.model`` and train it with ``params.train``."""
    config = scratch_config(params.model, splits.image_size, len(splits.classes))
    seed_everything(params.seed)
    model = ScratchCNN(**config)
    fit_config = FitConfig(
        **params.train.model_dump(), augment=params.model.augment, seed=params.seed
    )
    logged = {
        "seed": params.seed,
        "model": params.model.model_dump(),
        "train": params.train.model_dump(),
    }
    return train_and_save(
        model,
        splits,
        fit_config,
        kind="scratch_cnn",
        config=config,
        logged_params=logged,
        params=params,
        dvclive_dir=dvclive_dir,
        model_path=model_path,
        run_name=run_name,
        group=group,
        on_epoch=on_epoch,
        progress=progress,
    )


def finetune(
    params: Params,
    splits: Splits,
    *,
    freeze: int,
    dvclive_dir: Path,
    model_path: Path,
    run_name: str | None = None,
    group: str | None = "finetune",
    on_epoch: EpochCallback | None = None,
    progress: bool = True,
) -> FitResult:
    """Fine-tune ``params.finetune.backbone`` with ``freeze`` % of its layers frozen.

    The trainable backbone layers learn at ``finetune.lr``, the new head at ``finetune.head_lr``.
    Batches come from the split stage's uint8 arrays and are resized on the fly to
    ``finetune.image_size`` (one bilinear interpolate per batch) rather than cached at a second
    size. Measured on 2 CPU cores: 64 -> 96 px costs 5.6 ms per 32-image batch against 0.9 ms for
    slicing a cached 96 px array, i.e. +4.7 ms on a ~200 ms EfficientNet-Lite0 training step
    (about 2 %; 64 -> 224 px: +20 ms on a step of over a second). A cached copy would save that
    but cost a stage and, at 224 px on the real data, 1.5 GB of disk per size. With
    ``data.image_size`` equal to ``finetune.image_size`` no resize happens at all.
    """
    options = params.finetune
    config = finetune_config(options, freeze=freeze, num_classes=len(splits.classes))
    seed_everything(params.seed)
    model = build_finetune_model(**config)
    plan = model.freeze_plan
    assert plan is not None
    run_name = run_name or f"finetune@{freeze}"
    if progress:
        print(f"{run_name}: {options.backbone}, {plan.describe()}")
    fit_config = FitConfig(
        epochs=options.epochs,
        batch_size=options.batch_size,
        lr=options.lr,
        optimizer=options.optimizer,
        weight_decay=options.weight_decay,
        schedule=options.schedule,
        early_stopping=options.early_stopping,
        device=options.device,
        augment=options.augment,
        label_smoothing=options.label_smoothing,
        seed=params.seed,
        image_size=options.image_size,
    )
    logged = {
        "seed": params.seed,
        "finetune": {**options.model_dump(exclude={"freeze"}), "freeze": freeze},
    }
    return train_and_save(
        model,
        splits,
        fit_config,
        kind="finetune",
        config=config,
        logged_params=logged,
        params=params,
        dvclive_dir=dvclive_dir,
        model_path=model_path,
        run_name=run_name,
        group=group,
        param_groups=model.param_groups(options.lr, options.head_lr),
        on_epoch=on_epoch,
        progress=progress,
        extra_summary={
            "freeze": freeze,
            "layers_frozen": plan.frozen,
            "layers_total": len(plan.layers),
        },
    )
