"""Experiment logging: dvclive always, W&B per ``wandb.mode``. Logging never stops training."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

from naturalist.training import EpochMetrics, FitResult


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


class Tracker:
    """Log one training run to a dvclive folder and, if enabled, to a W&B run.

    ``dvclive_dir`` is a stage output of its own. ``Live(dvcyaml=False)`` keeps dvclive from
    rewriting dvc.yaml (metrics and plots are declared there once) and ``save_dvc_exp=False`` keeps
    it from creating experiments of its own: ``dvc exp run`` does that.
    """

    def __init__(
        self,
        dvclive_dir: Path,
        *,
        params: dict[str, Any],
        wandb_params: Any,
        run_name: str,
        group: str | None = None,
    ) -> None:
        from dvclive import Live

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.live = Live(dir=str(dvclive_dir), dvcyaml=False, save_dvc_exp=False, report=None)
        self.live.log_params(params)
        self.wandb_run = _start_wandb(wandb_params, params, run_name, group)

    def log_epoch(self, metrics: EpochMetrics) -> None:
        values = {
            "train/loss": metrics.train_loss,
            "train/acc": metrics.train_acc,
            "val/loss": metrics.val_loss,
            "val/acc": metrics.val_acc,
            "lr": metrics.lr,
        }
        for name, value in values.items():
            self.live.log_metric(name, value)
        self.live.next_step()
        self._wandb("log", {**values, "epoch": metrics.epoch})

    def log_summary(self, result: FitResult, **extra: float | int | str) -> None:
        """Best-epoch figures, which ``dvc exp show`` lists beside the params."""
        summary = {
            "best/val_acc": result.best_val_acc,
            "best/epoch": result.best_epoch,
            "epochs_trained": len(result.history),
            **extra,
        }
        for name, value in summary.items():
            self.live.summary[name] = value
        self.live.make_summary()
        if self.wandb_run is not None:
            try:
                self.wandb_run.summary.update(summary)
            except Exception as error:
                _warn(f"W&B summary failed ({error}); training results are still in dvclive")

    def close(self) -> None:
        self.live.end()
        self._wandb("finish")

    def _wandb(self, method: str, *args: Any) -> None:
        if self.wandb_run is None:
            return
        try:
            getattr(self.wandb_run, method)(*args)
        except Exception as error:
            _warn(f"W&B {method} failed ({error}); W&B logging is off for the rest of this run")
            self.wandb_run = None


def _start_wandb(
    wandb_params: Any, config: dict[str, Any], run_name: str, group: str | None
) -> Any:
    if wandb_params.mode == "disabled":
        return None
    try:
        import wandb

        return wandb.init(
            project=wandb_params.project,
            entity=wandb_params.entity,
            mode=wandb_params.mode,
            config=config,
            name=run_name,
            group=group,
            dir=os.getcwd(),
            reinit="create_new",
            settings=wandb.Settings(silent=True, console="off"),
        )
    except Exception as error:
        hint = (
            " (run `wandb login`, or set wandb.mode: offline)"
            if wandb_params.mode == "online"
            else ""
        )
        _warn(f"W&B did not start ({type(error).__name__}: {error}){hint}; logging to dvclive only")
        return None
