"""The shared training loop on real (small, synthetic) data: it learns, repeats, and logs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from naturalist.data import BatchLoader, augment_batch, load_split
from naturalist.models import load_checkpoint
from naturalist.params import parse_params
from naturalist.runs import Splits, train_scratch
from naturalist.training import evaluate

REPO = Path(__file__).resolve().parents[1]


def tiny_params(**sections: dict) -> object:
    raw = {
        "seed": 1,
        "wandb": {"mode": "disabled"},
        "model": {"filters": [16, 16, 16, 16, 16], "dense_units": 64, "dropout": 0.1},
        "train": {"epochs": 12, "batch_size": 32, "lr": 0.003, "device": "cpu"},
    }
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return parse_params(raw)


def run(params: object, split: Path, out: Path, name: str = "run"):
    return train_scratch(
        params,
        Splits.load(split),
        dvclive_dir=out / name,
        model_path=out / f"{name}.pt",
        run_name=name,
        progress=False,
    )


def test_loss_falls_and_accuracy_is_well_above_chance(small_split: Path, tmp_path: Path) -> None:
    result = run(tiny_params(), small_split, tmp_path)
    history = result.history
    assert history[-1].train_loss < history[0].train_loss * 0.8
    assert result.best_val_acc >= 0.3  # chance is 0.1
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["best/val_acc"] == pytest.approx(result.best_val_acc)
    assert metrics["epochs_trained"] == 12
    assert (tmp_path / "run" / "plots" / "metrics" / "val" / "acc.tsv").is_file()
    # the checkpoint holds the best epoch, not the last
    model, meta = load_checkpoint(tmp_path / "run.pt")
    val = load_split(small_split, "val")
    _, acc = evaluate(model, BatchLoader(val, batch_size=64, device=torch.device("cpu")))
    assert acc == pytest.approx(result.best_val_acc)
    assert meta["epoch"] == result.best_epoch


def test_same_params_give_identical_metrics_on_cpu(small_split: Path, tmp_path: Path) -> None:
    params = tiny_params(train={"epochs": 2}, model={"augment": True})
    first = run(params, small_split, tmp_path, "a")
    second = run(params, small_split, tmp_path, "b")
    assert [(m.train_loss, m.val_loss, m.val_acc) for m in first.history] == [
        (m.train_loss, m.val_loss, m.val_acc) for m in second.history
    ]
    reseeded = parse_params({**params.model_dump(), "seed": 2})
    other = run(reseeded, small_split, tmp_path, "c")
    assert other.history[0].train_loss != first.history[0].train_loss


def test_early_stopping_stops(small_split: Path, tmp_path: Path) -> None:
    params = tiny_params(train={"epochs": 8, "lr": 1e-7, "early_stopping": 1, "schedule": "none"})
    result = run(params, small_split, tmp_path)
    assert result.stopped_early and len(result.history) < 8


def test_augmentation_keeps_shape_and_range_and_changes_pixels() -> None:
    images = torch.rand(6, 3, 32, 32)
    out = augment_batch(images.clone(), torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out, images)
    again = augment_batch(images.clone(), torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_wandb_offline_logs_and_a_broken_wandb_only_warns(
    small_split: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    monkeypatch.chdir(tmp_path)
    offline = tiny_params(train={"epochs": 1}, wandb={"mode": "offline"})
    run(offline, small_split, tmp_path, "offline")
    assert list((tmp_path / "wandb").glob("offline-run-*"))

    # online with no login and no network must not stop training
    monkeypatch.setenv("WANDB_API_KEY", "")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "5")
    online = tiny_params(train={"epochs": 1}, wandb={"mode": "online"})
    result = run(online, small_split, tmp_path, "online")
    assert len(result.history) == 1 and (tmp_path / "online.pt").is_file()
    assert "warning: W&B" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kernel_sizes": [3, 3, 3, 3]}, "model.kernel_sizes: [3, 3, 3, 3] must be a list of"),
        ({"activation": "Swish"}, "model.activation: 'Swish' is not one of ReLU, GELU, SiLU"),
        ({"dropout": 1.5}, "model.dropout: 1.5 must be < 1.0"),
    ],
)
def test_stage_refuses_bad_params_with_one_line_before_training(
    tmp_path: Path, change: dict, message: str
) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["model"].update(change)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    done = subprocess.run(
        [sys.executable, str(REPO / "stages" / "train_scratch.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "WANDB_MODE": "disabled"},
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: params.yaml: {message}"
    ] or done.stderr.strip().startswith(f"error: params.yaml: {message}")
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "models").exists() and not (tmp_path / "results").exists()
