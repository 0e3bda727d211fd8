"""Test-set evaluation of every trained model: metrics, confusion matrices and a prediction grid.

Only the test split is read here, and it picks nothing: the "best model" shown in the prediction
grid is the one with the highest *validation* accuracy recorded in its checkpoint
(``meta["val_acc"]``), whatever its test accuracy turns out to be.

Metrics are computed in plain torch/numpy from one confusion matrix per model (rows: true class,
columns: predicted class):

- ``test_acc``: correct predictions / test images;
- ``macro_f1``: the unweighted mean over classes of F1 = 2 TP / (2 TP + FP + FN), over the classes
  that occur in the labels or the predictions (scikit-learn's default);
- ``per_class_acc``: TP / images of the class (the class's recall), ``None`` for a class with no
  test image;
- ``loss``: mean cross-entropy of the logits, the same loss the models were trained with (without
  label smoothing).

A model that always predicts one class therefore scores exactly 10 % on a balanced 10-class test
set.
"""

from __future__ import annotations

import json
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from naturalist.data import BatchLoader, SplitArrays, load_split, resolve_device
from naturalist.errors import PipelineError
from naturalist.models import load_checkpoint
from naturalist.training import predict

METRICS_FILE = "metrics.json"  # {model: {test_acc, macro_f1, loss}}: what `dvc exp show` lists
DETAILS_FILE = "details.json"  # per-class accuracy, validation accuracy, the best model, the grid
FIGURES_DIR = "figures"  # confusion_<model>.png, prediction_grid.png
GRID_FILE = "prediction_grid.png"
CONFUSION_PLOT = "confusion_{name}"  # dvclive: plots/sklearn/confusion_<model>.json
DPI = 100


@dataclass(frozen=True)
class TestMetrics:
    """The test metrics of one model, all derived from its confusion matrix and logits."""

    test_acc: float
    macro_f1: float
    loss: float
    per_class_acc: list[float | None]
    confusion: np.ndarray  # (classes, classes) int64; rows: true class, columns: predicted

    def summary(self) -> dict[str, float]:
        """The figures that go to metrics.json (one column each in `dvc exp show`)."""
        return {"test_acc": self.test_acc, "macro_f1": self.macro_f1, "loss": self.loss}


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts of (true, predicted) pairs: rows are true classes, columns predicted classes."""
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    if labels.shape != predictions.shape:
        raise ValueError(f"{labels.shape[0]} labels but {predictions.shape[0]} predictions")
    pairs = labels * num_classes + predictions
    return np.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def scores_from_confusion(confusion: np.ndarray) -> tuple[float, float, list[float | None]]:
    """(accuracy, macro-F1, per-class accuracy) of a confusion matrix."""
    confusion = np.asarray(confusion, dtype=np.float64)
    total = confusion.sum()
    true_positive = np.diag(confusion)
    support = confusion.sum(axis=1)  # images of each true class
    predicted = confusion.sum(axis=0)  # predictions of each class
    accuracy = float(true_positive.sum() / total) if total else 0.0
    present = (support + predicted) > 0
    denominator = support + predicted  # 2 TP + FP + FN
    f1 = np.divide(
        2 * true_positive, denominator, out=np.zeros_like(true_positive), where=denominator > 0
    )
    macro_f1 = float(f1[present].mean()) if present.any() else 0.0
    per_class = [float(tp / n) if n else None for tp, n in zip(true_positive, support, strict=True)]
    return accuracy, macro_f1, per_class


def compute_metrics(logits: torch.Tensor, labels: torch.Tensor) -> TestMetrics:
    """Metrics of (N, classes) logits against (N,) integer labels."""
    num_classes = logits.shape[1]
    predictions = logits.argmax(dim=1)
    confusion = confusion_matrix(labels.cpu().numpy(), predictions.cpu().numpy(), num_classes)
    accuracy, macro_f1, per_class = scores_from_confusion(confusion)
    loss = nn.functional.cross_entropy(logits.float(), labels.long()).item()
    return TestMetrics(
        test_acc=accuracy,
        macro_f1=macro_f1,
        loss=loss,
        per_class_acc=per_class,
        confusion=confusion,
    )


def evaluate_model(
    model: nn.Module, test: SplitArrays, *, batch_size: int, device: torch.device
) -> tuple[TestMetrics, np.ndarray]:
    """Batched inference on ``device`` over a split: (metrics, predicted class of each image)."""
    return evaluate_on(model, BatchLoader(test, batch_size=batch_size, device=device))


def evaluate_on(model: nn.Module, loader: BatchLoader) -> tuple[TestMetrics, np.ndarray]:
    """Like ``evaluate_model``, with a loader that several models can share."""
    logits, labels = predict(model, loader)
    return compute_metrics(logits, labels), logits.argmax(dim=1).numpy()


def model_sort_key(name: str) -> tuple[int, int, str]:
    """scratch, sweep_best, finetune_<N> by N, then anything else by name."""
    if name == "scratch":
        return (0, 0, name)
    if name == "sweep_best":
        return (1, 0, name)
    match = re.fullmatch(r"finetune_(\d+)", name)
    if match:
        return (2, int(match.group(1)), name)
    return (3, 0, name)


def discover_models(models_dir: Path) -> list[tuple[str, Path]]:
    """Every checkpoint ``<name>.pt`` directly in ``models_dir``, named by its file stem."""
    models_dir = Path(models_dir)
    found = [(path.stem, path) for path in models_dir.glob("*.pt") if path.is_file()]
    return sorted(found, key=lambda item: model_sort_key(item[0]))


@dataclass
class ModelResult:
    """One evaluated checkpoint."""

    name: str
    path: Path
    kind: str
    val_acc: float | None
    metrics: TestMetrics
    predictions: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def select_best(results: Sequence[ModelResult]) -> ModelResult:
    """The model with the highest validation accuracy; ties go to the first in model order.

    Deliberately never the test accuracy: the test set must not choose a model.
    """
    if not results:
        raise ValueError("no models to choose from")
    return max(results, key=lambda r: -1.0 if r.val_acc is None else r.val_acc)


def grid_indices(labels: np.ndarray, num_classes: int, per_class: int) -> np.ndarray:
    """(num_classes, per_class) indices into the test split: the first images of each class.

    A class with fewer test images gets -1 for its missing cells (drawn empty).
    """
    labels = np.asarray(labels)
    grid = np.full((num_classes, per_class), -1, dtype=np.int64)
    for label in range(num_classes):
        found = np.flatnonzero(labels == label)[:per_class]
        grid[label, : len(found)] = found
    return grid


# Figure geometry, in inches (pixels = inches * DPI): fixed, so the PNG size is known in advance.
GRID_CELL = 1.35
GRID_ROW_LABEL = 1.7
GRID_TITLE = 0.95
GRID_CELL_TITLE = 0.3


def grid_figure_size(rows: int, columns: int) -> tuple[int, int]:
    """The prediction grid PNG's (width, height) in pixels."""
    width = GRID_ROW_LABEL + columns * GRID_CELL
    height = GRID_TITLE + rows * (GRID_CELL + GRID_CELL_TITLE)
    return round(width * DPI), round(height * DPI)


@dataclass(frozen=True)
class GridCell:
    true: str
    predicted: str
    index: int  # row of the test split


@dataclass(frozen=True)
class GridResult:
    path: Path
    size: tuple[int, int]
    cells: list[list[GridCell | None]]  # [class][column], None where the class ran out of images
    drawn_titles: list[list[str]]  # the text above each cell, as drawn
    drawn_row_labels: list[str]  # the text left of each row, as drawn


def plot_prediction_grid(
    images: np.ndarray,
    labels: np.ndarray,
    predictions: np.ndarray,
    classes: Sequence[str],
    path: Path,
    *,
    per_class: int = 3,
    title: str = "Test predictions",
    subtitle: str = "",
) -> GridResult:
    """A (classes x per_class) grid of test images: true class per row, prediction per cell.

    A correct prediction is written in green with a check mark, a wrong one in red with a cross.
    Returns what was drawn, so a caller (or a test) can check it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    indices = grid_indices(labels, len(classes), per_class)
    rows, columns = indices.shape
    width, height = grid_figure_size(rows, columns)
    fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    top = 1 - GRID_TITLE * DPI / height
    left = GRID_ROW_LABEL * DPI / width
    grid = fig.add_gridspec(
        rows, columns, left=left, right=0.99, top=top, bottom=0.005, hspace=0.28, wspace=0.06
    )
    cells: list[list[GridCell | None]] = []
    titles: list[list[str]] = []
    row_labels: list[str] = []
    for row in range(rows):
        cells.append([])
        titles.append([])
        for column in range(columns):
            ax = fig.add_subplot(grid[row, column])
            ax.set_xticks([])
            ax.set_yticks([])
            index = int(indices[row, column])
            if column == 0:
                ax.set_ylabel(
                    classes[row], rotation=0, ha="right", va="center", fontsize=10, labelpad=8
                )
                row_labels.append(ax.get_ylabel())
            if index < 0:
                for spine in ax.spines.values():
                    spine.set_visible(False)
                cells[-1].append(None)
                titles[-1].append("")
                continue
            ax.imshow(np.asarray(images[index]), interpolation="bilinear")
            true_name, predicted_name = (
                classes[int(labels[index])],
                classes[int(predictions[index])],
            )
            correct = true_name == predicted_name
            ax.set_title(
                f"{'✓' if correct else '✗'} {predicted_name}",
                fontsize=8.5,
                color="#1a7f37" if correct else "#cf222e",
                pad=3,
            )
            for spine in ax.spines.values():
                spine.set_edgecolor("#1a7f37" if correct else "#cf222e")
                spine.set_linewidth(1.5 if correct else 2.5)
            cells[-1].append(GridCell(true=true_name, predicted=predicted_name, index=index))
            titles[-1].append(ax.get_title())
    fig.suptitle(title, fontsize=11.5, y=1 - 0.1 * DPI / height, va="top")
    legend = "rows: true class · above each image: predicted class (✓ right, ✗ wrong)"
    fig.text(
        0.5,
        1 - 0.42 * DPI / height,
        f"{subtitle}\n{legend}" if subtitle else legend,
        ha="center",
        va="top",
        fontsize=8.5,
        color="#57606a",
        linespacing=1.5,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # glyph warnings on systems without DejaVu's check mark
        fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return GridResult(
        path=path,
        size=(width, height),
        cells=cells,
        drawn_titles=titles,
        drawn_row_labels=row_labels,
    )


def plot_confusion(confusion: np.ndarray, classes: Sequence[str], path: Path, title: str) -> Path:
    """Confusion matrix PNG: counts in the cells, colour = share of the true class (row)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    confusion = np.asarray(confusion)
    support = confusion.sum(axis=1, keepdims=True)
    share = np.divide(confusion, support, out=np.zeros(confusion.shape), where=support > 0)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(7.2, 6.4), dpi=DPI)
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    for row in range(n):
        for column in range(n):
            count = int(confusion[row, column])
            if count:
                ax.text(
                    column,
                    row,
                    str(count),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if share[row, column] > 0.55 else "#24292f",
                )
    ax.set_xticks(range(n), classes, rotation=45, ha="right", fontsize=8.5)
    ax.set_yticks(range(n), classes, fontsize=8.5)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=10.5)
    colorbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
    colorbar.set_label("share of the true class", fontsize=8.5)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


@dataclass
class EvaluationResult:
    results: list[ModelResult]
    best: ModelResult
    grid: GridResult
    classes: list[str]
    test_images: int
    seconds: float


def _check_classes(name: str, meta: dict[str, Any], classes: list[str]) -> None:
    trained_on = meta.get("classes")
    if trained_on is not None and list(trained_on) != classes:
        raise PipelineError(
            f"model {name} was trained on classes {trained_on}, but the test split has "
            f"{classes}: re-run its stage (dvc repro)"
        )


def evaluate_models(
    models_dir: Path,
    split_dir: Path,
    out_dir: Path,
    *,
    batch_size: int = 256,
    device: str = "auto",
    grid_per_class: int = 3,
    progress: bool = True,
) -> EvaluationResult:
    """Evaluate every checkpoint in ``models_dir`` on the test split and write ``out_dir``.

    Writes ``metrics.json`` (dvclive summary keyed by model), ``details.json``, one dvclive
    confusion-matrix plot per model under ``plots/sklearn/``, and under ``figures/`` a confusion
    matrix PNG per model and the prediction grid of the best model by validation accuracy.
    """
    started = time.perf_counter()
    checkpoints = discover_models(models_dir)
    if not checkpoints:
        raise PipelineError(
            f"no checkpoints (*.pt) in {models_dir}/: run the training stages first (dvc repro)"
        )
    test = load_split(split_dir, "test")
    if len(test) == 0:
        raise PipelineError(f"the test split in {split_dir} is empty")
    torch_device = resolve_device(device)
    # one loader for every model: the test images are read (and moved to the device) once
    loader = BatchLoader(test, batch_size=batch_size, device=torch_device)
    labels = np.asarray(test.labels, dtype=np.int64)

    results: list[ModelResult] = []
    for name, path in checkpoints:
        model_start = time.perf_counter()
        try:
            model, meta = load_checkpoint(path, torch_device)
        except PipelineError:
            raise
        except Exception as error:
            raise PipelineError(
                f"cannot load {path} ({type(error).__name__}: {error}); re-run the stage that "
                "writes it (dvc repro)"
            ) from None
        _check_classes(name, meta, test.classes)
        metrics, predictions = evaluate_on(model, loader)
        val_acc = meta.get("val_acc")
        result = ModelResult(
            name=name,
            path=path,
            kind=type(model).__name__,
            val_acc=None if val_acc is None else float(val_acc),
            metrics=metrics,
            predictions=predictions,
            meta=meta,
            seconds=time.perf_counter() - model_start,
        )
        results.append(result)
        del model
        if progress:
            print(
                f"evaluate_test: {name}: test acc {metrics.test_acc:.4f}, macro-F1 "
                f"{metrics.macro_f1:.4f}, loss {metrics.loss:.4f} "
                f"({len(labels)} images, {result.seconds:.1f}s)"
            )

    best = select_best(results)
    out_dir = Path(out_dir)
    _write_dvclive(out_dir, results, test.classes, labels)
    figures = out_dir / FIGURES_DIR
    for result in results:
        plot_confusion(
            result.metrics.confusion,
            test.classes,
            figures / f"confusion_{result.name}.png",
            title=f"{result.name}: test accuracy {result.metrics.test_acc:.1%} "
            f"({len(labels)} images)",
        )
    val_text = "n/a" if best.val_acc is None else f"{best.val_acc:.1%}"
    grid = plot_prediction_grid(
        test.images,
        labels,
        best.predictions,
        test.classes,
        figures / GRID_FILE,
        per_class=grid_per_class,
        title=f"Test predictions of {best.name}",
        subtitle=f"chosen by validation accuracy ({val_text}, "
        + (f"the best of {len(results)} models" if len(results) > 1 else "the only model")
        + f"); test accuracy {best.metrics.test_acc:.1%}",
    )
    seconds = time.perf_counter() - started
    evaluation = EvaluationResult(
        results=results,
        best=best,
        grid=grid,
        classes=list(test.classes),
        test_images=len(labels),
        seconds=seconds,
    )
    (out_dir / DETAILS_FILE).write_text(json.dumps(details(evaluation), indent=2) + "\n")
    if progress:
        print(
            f"evaluate_test: {len(results)} models on {len(labels)} test images in {seconds:.1f}s "
            f"on {torch_device.type}; best by val acc: {best.name} (val {val_text}, "
            f"test {best.metrics.test_acc:.1%}) -> {out_dir}/"
        )
    return evaluation


def _write_dvclive(
    out_dir: Path, results: list[ModelResult], classes: list[str], labels: np.ndarray
) -> None:
    """metrics.json keyed by model and one confusion-matrix plot per model, through dvclive."""
    from dvclive import Live

    true_names = [classes[i] for i in labels]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        live = Live(dir=str(out_dir), dvcyaml=False, save_dvc_exp=False, report=None)
    for result in results:
        live.summary[result.name] = result.metrics.summary()
        live.log_sklearn_plot(
            "confusion_matrix",
            true_names,
            [classes[i] for i in result.predictions],
            name=CONFUSION_PLOT.format(name=result.name),
            title=f"{result.name}: confusion matrix on the test split",
            x_label="true class",
            y_label="predicted class",
        )
    live.make_summary()
    live.end()


def details(evaluation: EvaluationResult) -> dict[str, Any]:
    """What the report needs beyond metrics.json: per-class accuracy, val accuracy, the grid."""
    classes = evaluation.classes
    return {
        "classes": classes,
        "test_images": evaluation.test_images,
        "best_model": evaluation.best.name,
        "selected_by": "val_acc",
        "models": {
            result.name: {
                "checkpoint": result.path.as_posix(),
                "kind": result.kind,
                "val_acc": result.val_acc,
                "params_trainable": result.meta.get("params_trainable"),
                "params_total": result.meta.get("params_total"),
                **result.metrics.summary(),
                "per_class_acc": dict(zip(classes, result.metrics.per_class_acc, strict=True)),
                "confusion": result.metrics.confusion.tolist(),
                "seconds": round(result.seconds, 3),
            }
            for result in evaluation.results
        },
        "grid": {
            "model": evaluation.best.name,
            "file": evaluation.grid.path.as_posix(),
            "cells": [
                [None if cell is None else asdict(cell) for cell in row]
                for row in evaluation.grid.cells
            ],
        },
    }
