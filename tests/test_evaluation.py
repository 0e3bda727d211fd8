"""Test metrics, confusion matrices and the prediction grid, on real models and real files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from naturalist.data import SplitArrays, load_split
from naturalist.evaluation import (
    compute_metrics,
    confusion_matrix,
    discover_models,
    evaluate_model,
    evaluate_models,
    grid_figure_size,
    plot_prediction_grid,
    scores_from_confusion,
)
from naturalist.models import ScratchCNN, save_checkpoint
from naturalist.params import ParamsError, parse_params

CLASSES = [f"class_{i}" for i in range(10)]
CPU = torch.device("cpu")


def balanced_split(per_class: int = 5, size: int = 32) -> SplitArrays:
    """Images whose brightness encodes their class (label * 20), labels 0..9 interleaved."""
    labels = np.tile(np.arange(10), per_class)
    images = np.repeat(labels * 20, size * size * 3).reshape(-1, size, size, 3).astype(np.uint8)
    return SplitArrays(images=images, labels=labels, classes=CLASSES)


class ConstantModel(nn.Module):
    """Always the same logits: class ``winner`` gets ``margin``, every other class 0."""

    def __init__(self, winner: int = 3, margin: float = 5.0) -> None:
        super().__init__()
        self.logits = torch.zeros(10)
        self.logits[winner] = margin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], 10).clone()


class PerfectModel(nn.Module):
    """Reads the class off the brightness that ``balanced_split`` encodes it in."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        label = (x.mean(dim=(1, 2, 3)) * 255 / 20).round().long()
        return nn.functional.one_hot(label, 10).float() * 10


def test_a_model_that_always_predicts_one_class_scores_ten_percent() -> None:
    metrics, predictions = evaluate_model(
        ConstantModel(winner=3, margin=5.0), balanced_split(), batch_size=7, device=CPU
    )
    assert metrics.test_acc == 0.1
    assert set(predictions.tolist()) == {3}
    # F1 of the predicted class: TP 5, FP 45, FN 0 -> 10 / 55; the other nine classes score 0
    assert metrics.macro_f1 == pytest.approx((10 / 55) / 10)
    assert metrics.per_class_acc == [0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    # cross-entropy by hand: -log softmax of the true class, averaged over the balanced set
    norm = math.exp(5.0) + 9
    expected_loss = (-math.log(math.exp(5.0) / norm) + 9 * -math.log(1 / norm)) / 10
    assert metrics.loss == pytest.approx(expected_loss, rel=1e-6)
    assert metrics.confusion[:, 3].tolist() == [5] * 10
    assert metrics.confusion.sum() == 50
    assert set(metrics.summary()) == {"test_acc", "macro_f1", "loss"}


def test_a_perfect_model_scores_one_hundred_percent() -> None:
    metrics, _ = evaluate_model(PerfectModel(), balanced_split(), batch_size=256, device=CPU)
    assert metrics.test_acc == 1.0
    assert metrics.macro_f1 == 1.0
    assert metrics.per_class_acc == [1.0] * 10
    assert np.array_equal(metrics.confusion, np.eye(10, dtype=np.int64) * 5)
    assert metrics.loss < 1e-3


def test_macro_f1_on_a_hand_computed_case() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    predictions = np.array([0, 1, 1, 1, 2, 0])
    confusion = confusion_matrix(labels, predictions, 3)
    assert confusion.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    accuracy, macro_f1, per_class = scores_from_confusion(confusion)
    # class 0: TP 1, FP 1, FN 1 -> 2/4; class 1: TP 2, FP 1, FN 0 -> 4/5; class 2: TP 1, FN 1 -> 2/3
    assert accuracy == pytest.approx(4 / 6)
    assert macro_f1 == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert per_class == [0.5, 1.0, 0.5]
    metrics = compute_metrics(
        nn.functional.one_hot(torch.from_numpy(predictions), 3).float(), torch.from_numpy(labels)
    )
    assert metrics.macro_f1 == pytest.approx(macro_f1)


def test_a_class_without_test_images_has_no_accuracy_and_is_left_out_of_macro_f1() -> None:
    confusion = confusion_matrix(np.array([0, 0, 1]), np.array([0, 0, 1]), 3)
    accuracy, macro_f1, per_class = scores_from_confusion(confusion)
    assert (accuracy, macro_f1, per_class) == (1.0, 1.0, [1.0, 1.0, None])


def test_batch_size_does_not_change_the_metrics() -> None:
    torch.manual_seed(0)
    model = ScratchCNN(
        filters=[4] * 5,
        kernel_sizes=[3] * 5,
        activation="ReLU",
        batch_norm=True,
        dropout=0.0,
        dense_units=8,
        image_size=32,
    ).eval()
    split = balanced_split(per_class=3)
    one, _ = evaluate_model(model, split, batch_size=1, device=CPU)
    many, _ = evaluate_model(model, split, batch_size=256, device=CPU)
    assert one.test_acc == many.test_acc
    assert np.array_equal(one.confusion, many.confusion)
    assert one.loss == pytest.approx(many.loss, rel=1e-5)


def test_the_prediction_grid_has_the_promised_size_and_labels(tmp_path: Path) -> None:
    split = balanced_split(per_class=4)
    predictions = split.labels.copy()
    predictions[split.labels == 2] = 7  # every class_2 image is predicted as class_7
    result = plot_prediction_grid(
        split.images, split.labels, predictions, CLASSES, tmp_path / "grid.png", per_class=3
    )
    with Image.open(result.path) as image:
        assert image.size == result.size == grid_figure_size(10, 3)
        assert image.size[1] > image.size[0]  # 10 rows, 3 columns
    assert result.drawn_row_labels == CLASSES
    assert len(result.cells) == 10 and all(len(row) == 3 for row in result.cells)
    for label, (row, titles) in enumerate(zip(result.cells, result.drawn_titles, strict=True)):
        for cell, title in zip(row, titles, strict=True):
            assert cell is not None
            assert cell.true == CLASSES[label]
            assert split.labels[cell.index] == label
            expected = "class_7" if label == 2 else CLASSES[label]
            assert cell.predicted == expected
            assert title == ("✗ class_7" if label == 2 else f"✓ {CLASSES[label]}")


def test_the_grid_leaves_a_cell_empty_when_a_class_has_too_few_images(tmp_path: Path) -> None:
    split = balanced_split(per_class=2)
    result = plot_prediction_grid(
        split.images, split.labels, split.labels, CLASSES, tmp_path / "grid.png", per_class=3
    )
    assert all(row[2] is None and row[0] is not None for row in result.cells)
    assert Image.open(result.path).size == grid_figure_size(10, 3)


def scratch_checkpoint(path: Path, *, val_acc: float, constant_class: int | None = None) -> None:
    torch.manual_seed(len(path.name))
    config = {
        "filters": [4] * 5,
        "kernel_sizes": [3] * 5,
        "activation": "ReLU",
        "batch_norm": True,
        "dropout": 0.0,
        "dense_units": 8,
        "image_size": 32,
        "num_classes": 10,
    }
    model = ScratchCNN(**config)
    if constant_class is not None:  # the output layer ignores its input: one class, always
        output = model.head[-1]
        with torch.no_grad():
            output.weight.zero_()
            output.bias.zero_()
            output.bias[constant_class] = 1.0
    save_checkpoint(path, model, kind="scratch_cnn", config=config, meta={"val_acc": val_acc})


def test_evaluate_models_writes_metrics_per_model_and_picks_the_best_by_val_acc(
    small_split: Path, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    # the constant model has the best *validation* accuracy on record, so it is the one shown,
    # although a random network may well do better on the test set
    scratch_checkpoint(models / "scratch.pt", val_acc=0.2)
    scratch_checkpoint(models / "finetune_80.pt", val_acc=0.3)
    scratch_checkpoint(models / "finetune_70.pt", val_acc=0.9, constant_class=4)
    scratch_checkpoint(models / "sweep_best.pt", val_acc=0.5)
    assert [name for name, _ in discover_models(models)] == [
        "scratch",
        "sweep_best",
        "finetune_70",
        "finetune_80",
    ]
    out = tmp_path / "results"
    result = evaluate_models(models, small_split, out, batch_size=16, device="cpu", progress=False)
    test = load_split(small_split, "test")
    classes = test.classes

    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["scratch", "sweep_best", "finetune_70", "finetune_80"]
    for values in metrics.values():
        assert set(values) == {"test_acc", "macro_f1", "loss"}
        assert 0.0 <= values["test_acc"] <= 1.0
    assert metrics["finetune_70"]["test_acc"] == pytest.approx(0.1)  # 10 test images per class

    details = json.loads((out / "details.json").read_text())
    assert details["best_model"] == result.best.name == "finetune_70"
    assert details["selected_by"] == "val_acc"
    assert details["classes"] == classes
    assert details["test_images"] == len(test) == 100
    per_class = details["models"]["finetune_70"]["per_class_acc"]
    assert per_class == {name: (1.0 if i == 4 else 0.0) for i, name in enumerate(classes)}
    assert details["models"]["sweep_best"]["val_acc"] == 0.5

    # dvclive confusion plots: one row per test image, named classes, as `dvc plots` reads them
    for name in metrics:
        rows = json.loads((out / f"plots/sklearn/confusion_{name}.json").read_text())
        assert len(rows) == 100
        assert {row["actual"] for row in rows} == set(classes)
        assert Image.open(out / f"figures/confusion_{name}.png").format == "PNG"
    constant_rows = json.loads((out / "plots/sklearn/confusion_finetune_70.json").read_text())
    assert {row["predicted"] for row in constant_rows} == {classes[4]}

    # the grid shows the val-best model's predictions: the constant class in every cell
    assert Image.open(out / "figures/prediction_grid.png").size == grid_figure_size(10, 3)
    cells = [cell for row in details["grid"]["cells"] for cell in row]
    assert len(cells) == 30
    assert {cell["predicted"] for cell in cells} == {classes[4]}
    assert [row[0]["true"] for row in details["grid"]["cells"]] == classes


def test_no_models_is_a_one_line_error(small_split: Path, tmp_path: Path) -> None:
    from naturalist.errors import PipelineError

    (tmp_path / "models").mkdir()
    with pytest.raises(PipelineError, match=r"no checkpoints \(\*\.pt\) in .*models/"):
        evaluate_models(tmp_path / "models", small_split, tmp_path / "out", progress=False)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"evaluate": {"grid_per_class": 0}}, "evaluate.grid_per_class: 0 must be >= 1"),
        ({"evaluate": {"device": "tpu"}}, "evaluate.device: 'tpu' is not one of auto, cpu"),
        ({"evaluate": {"batchsize": 8}}, "unknown key 'evaluate.batchsize'"),
    ],
)
def test_bad_evaluate_params_stop_with_one_line(raw: dict, expected: str) -> None:
    with pytest.raises(ParamsError) as caught:
        parse_params(raw)
    assert expected in str(caught.value)
