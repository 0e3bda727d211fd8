"""The experiment report: ``report.md`` plus its PNG images, readable on its own or as a PR comment.

``make report`` (``python -m naturalist.reporting``) builds it from the results of the last
``dvc repro`` in this workspace and compares them with a baseline revision (``main``, or
``origin/main`` in a CI checkout): the params that differ (``dvc params diff --md``), the test
metrics of every model and their diff (``dvc metrics diff --md``), training curves drawn from the
dvclive ``.tsv`` files, the confusion matrix and prediction grid of the best model by validation
accuracy, per-class accuracy and the sweep's top 10 trials when there is a sweep.

Everything it reads is already on disk; it trains and evaluates nothing. A missing baseline, or a
baseline without metrics yet, is said in one line instead of failing.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from naturalist.errors import PipelineError, run_stage
from naturalist.evaluation import DETAILS_FILE, FIGURES_DIR, GRID_FILE, METRICS_FILE, model_sort_key

RESULTS_DIR = Path("results")
EVALUATE_DIR = RESULTS_DIR / "evaluate"
SWEEP_DIR = RESULTS_DIR / "sweep"
REPORT_FILE = Path("report.md")
IMAGES_DIR = Path("report_images")
DEFAULT_BASES = ("main", "origin/main")
TOP_TRIALS = 10


# --------------------------------------------------------------------------------------------
# git and dvc


def _run(args: Sequence[str], root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    return subprocess.run(list(args), cwd=root, env=env, capture_output=True, text=True)


def git(root: Path, *args: str) -> str | None:
    """stdout of a git command, or None when it fails (no repo, unknown revision...)."""
    done = _run(["git", *args], root)
    return done.stdout.strip() if done.returncode == 0 else None


def dvc(root: Path, *args: str) -> str:
    """stdout of a dvc command run with this interpreter; a failure is a PipelineError."""
    done = _run([sys.executable, "-m", "dvc", *args], root)
    if done.returncode != 0:
        lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        raise PipelineError(f"dvc {' '.join(args)} failed: {lines[-1] if lines else 'no output'}")
    return done.stdout


def resolve_base(root: Path, base: str | None) -> str | None:
    """The baseline revision: ``base`` if given, else main, else origin/main (CI checkouts)."""
    for candidate in [base] if base else DEFAULT_BASES:
        if git(root, "rev-parse", "--verify", "--quiet", f"{candidate}^{{commit}}"):
            return candidate
    return None


def describe_head(root: Path) -> str:
    """``branch @ sha`` of this checkout (the PR branch on GitHub, where HEAD is detached)."""
    sha = git(root, "rev-parse", "--short", "HEAD")
    if sha is None:
        return "this workspace"
    branch = os.environ.get("GITHUB_HEAD_REF") or git(root, "rev-parse", "--abbrev-ref", "HEAD")
    return f"`{branch}` @ `{sha}`" if branch and branch != "HEAD" else f"`{sha}`"


# --------------------------------------------------------------------------------------------
# the sections


@dataclass
class Comparison:
    """The diff against the baseline: Markdown, plus what the summary line needs."""

    params_md: str
    metrics_md: str
    old_test_acc: dict[str, float]  # model -> test accuracy at the baseline


def compare_with_base(root: Path, base: str | None) -> Comparison:
    if base is None:
        line = (
            "_No baseline to compare with: neither `main` nor `origin/main` exists in this "
            "repository._"
        )
        return Comparison(params_md=line, metrics_md=line, old_test_acc={})

    params = json.loads(dvc(root, "params", "diff", base, "--json") or "{}")
    if params:
        params_md = dvc(root, "params", "diff", base, "--md").strip()
    else:
        params_md = f"No params differ from `{base}`."

    # --all: unchanged metrics too, to tell "nothing changed" from "nothing to compare with"
    metrics = json.loads(dvc(root, "metrics", "diff", base, "--all", "--json") or "{}")
    old_values = [v.get("old") for values in metrics.values() for v in values.values()]
    changed = any(
        v.get("old") != v.get("new") for values in metrics.values() for v in values.values()
    )
    evaluate = metrics.get(EVALUATE_DIR.joinpath(METRICS_FILE).as_posix(), {})
    old_test_acc = {
        key.removesuffix(".test_acc"): value["old"]
        for key, value in evaluate.items()
        if key.endswith(".test_acc") and value.get("old") is not None
    }
    if metrics and all(value is None for value in old_values):
        metrics_md = (
            f"_`{base}` has no metrics yet: commit `dvc.lock` and the metrics files of a default "
            "run there to get a diff._"
        )
    elif not changed:
        metrics_md = f"No metric differs from `{base}`."
    else:
        metrics_md = dvc(root, "metrics", "diff", base, "--md", "--precision", "4").strip()
    return Comparison(params_md=params_md, metrics_md=metrics_md, old_test_acc=old_test_acc)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _count(value: int | None) -> str:
    return "–" if value is None else f"{value:,}"


def metrics_table(metrics: dict[str, dict[str, float]], details: dict[str, Any]) -> str:
    best = details.get("best_model")
    rows = [
        "| model | val accuracy | test accuracy | macro-F1 | test loss | trainable params |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in sorted(metrics, key=model_sort_key):
        values = metrics[name]
        info = details.get("models", {}).get(name, {})
        label = f"**{name}** ★" if name == best else name
        rows.append(
            f"| {label} | {_pct(info.get('val_acc'))} | {_pct(values.get('test_acc'))} | "
            f"{values.get('macro_f1', float('nan')):.3f} | {values.get('loss', float('nan')):.3f} "
            f"| {_count(info.get('params_trainable'))} |"
        )
    return "\n".join(rows)


def per_class_table(details: dict[str, Any]) -> str:
    models = sorted(details.get("models", {}), key=model_sort_key)
    if not models:
        return ""
    rows = [
        "| class | " + " | ".join(models) + " |",
        "|---|" + "---:|" * len(models),
    ]
    for class_name in details.get("classes", []):
        cells = [
            _pct(details["models"][name].get("per_class_acc", {}).get(class_name))
            for name in models
        ]
        rows.append(f"| {class_name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _read_tsv(path: Path) -> tuple[list[int], list[float]]:
    steps, values = [], []
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            value_key = next(key for key in row if key not in ("step", "timestamp"))
            steps.append(int(row["step"]) + 1)  # dvclive counts steps from 0; epochs from 1
            values.append(float(row[value_key]))
    return steps, values


def curve_runs(results_dir: Path) -> dict[str, Path]:
    """dvclive metric folders of the training stages, by model name (the sweep's trials aside)."""
    runs: dict[str, Path] = {}
    scratch = results_dir / "train_scratch/plots/metrics"
    if (scratch / "val/acc.tsv").is_file():
        runs["scratch"] = scratch
    sweep_metrics = results_dir / "sweep/metrics.json"
    if sweep_metrics.is_file():
        best_trial = json.loads(sweep_metrics.read_text()).get("best_trial")
        folder = results_dir / f"sweep/trials/trial_{best_trial or 0:03d}/plots/metrics"
        if best_trial is not None and (folder / "val/acc.tsv").is_file():
            runs["sweep_best"] = folder
    for folder in sorted((results_dir / "finetune").glob("*/plots/metrics")):
        if (folder / "val/acc.tsv").is_file():
            runs[f"finetune_{folder.parents[1].name}"] = folder
    return dict(sorted(runs.items(), key=lambda item: model_sort_key(item[0])))


def plot_training_curves(runs: dict[str, Path], path: Path) -> Path | None:
    """Accuracy and loss per epoch, train (dashed) and validation (solid), one colour per run."""
    if not runs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=100)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, folder) in enumerate(runs.items()):
        colour = colours[i % len(colours)]
        for ax, metric in ((acc_ax, "acc"), (loss_ax, "loss")):
            for split, style in (("val", "-"), ("train", "--")):
                tsv = folder / split / f"{metric}.tsv"
                if not tsv.is_file():
                    continue
                steps, values = _read_tsv(tsv)
                ax.plot(
                    steps,
                    values,
                    style,
                    color=colour,
                    marker="o" if split == "val" else None,
                    markersize=3,
                    linewidth=1.8 if split == "val" else 1.2,
                    alpha=1.0 if split == "val" else 0.7,
                    label=f"{name} {split}",
                )
    acc_ax.set_title("accuracy")
    loss_ax.set_title("loss (cross-entropy)")
    for ax in (acc_ax, loss_ax):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    acc_ax.set_ylim(0, 1.02)
    acc_ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    handles, labels = acc_ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(0.83, 0.5), fontsize=8.5)
    fig.suptitle("Training curves (solid: validation, dashed: train)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 0.83, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------
# the sweep's leaderboard


def read_leaderboard(sweep_dir: Path) -> list[dict[str, Any]]:
    """The sweep's trials, best first (``leaderboard.json``, else ``.csv``); [] without one."""
    json_path, csv_path = sweep_dir / "leaderboard.json", sweep_dir / "leaderboard.csv"
    if json_path.is_file():
        data = json.loads(json_path.read_text())
        rows = data.get("trials", []) if isinstance(data, dict) else data
        return [_flatten(row) for row in rows if isinstance(row, dict)]
    if csv_path.is_file():
        with csv_path.open(newline="") as handle:
            return list(csv.DictReader(handle))
    return []


def _flatten(row: dict[str, Any]) -> dict[str, Any]:
    """Lift the ``params`` mapping of a leaderboard.json trial to top-level columns."""
    flat = {key: value for key, value in row.items() if key != "params"}
    flat.update(row.get("params") or {})
    return flat


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ",".join(str(v) for v in value) + "]"
    return str(value).replace("|", "\\|")


_SWEEP_HIDDEN = ("val_acc_per_epoch", "val_acc_epoch_", "error", "retry_of", "study")
_SWEEP_FIXED = ("rank", "trial", "state", "val_acc", "best_epoch", "epochs", "seconds")


def _sweep_cell(row: dict[str, Any], column: str) -> str:
    value = row.get(column)
    if column == "val_acc":
        number = _number(value)
        return "–" if number is None else f"{number:.1%}"
    if column == "epochs":
        best = row.get("best_epoch")
        return f"{_cell(value)} (best {_cell(best)})" if best not in (None, "") else _cell(value)
    if column == "seconds":
        number = _number(value)
        return "–" if number is None else f"{number:.0f} s"
    return _cell(value)


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def sweep_table(sweep_dir: Path, top: int = TOP_TRIALS) -> str | None:
    """The leaderboard's first ``top`` rows as a Markdown table, or None without a leaderboard.

    The leaderboard is already ranked: complete trials by val accuracy, then pruned ones by the
    best val accuracy they reached, then failed ones. Swept params that took one value in every
    trial are left out (they are in params.yaml); ``model.`` is dropped from the other names.
    """
    rows = read_leaderboard(sweep_dir)
    if not rows:
        return None
    if all("rank" in row for row in rows):
        rows.sort(key=lambda row: int(row["rank"]))
    present = list(dict.fromkeys(key for row in rows for key in row))
    params = [
        column
        for column in present
        if column not in _SWEEP_FIXED
        and not column.startswith(_SWEEP_HIDDEN)
        and (len(rows) == 1 or len({_cell(row.get(column)) for row in rows}) > 1)
    ]
    columns = [c for c in _SWEEP_FIXED if c in present and c != "best_epoch"] + params
    names = {"val_acc": "val acc", "epochs": "epochs", "seconds": "time"}
    header = [names.get(c, c.removeprefix("model.")) for c in columns]
    align = ["---:" if c in ("rank", "trial", "val_acc", "seconds") else "---" for c in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    for row in rows[:top]:
        lines.append("| " + " | ".join(_sweep_cell(row, c) for c in columns) + " |")
    return "\n".join(lines)


def sweep_summary(sweep_dir: Path) -> str:
    """One line from the sweep's metrics.json: trials by state and the best val accuracy."""
    path = sweep_dir / "metrics.json"
    if not path.is_file():
        return ""
    metrics = json.loads(path.read_text())
    states = [
        f"{metrics[key]} {key.removeprefix('trials_')}"
        for key in ("trials_complete", "trials_pruned", "trials_failed", "trials_interrupted")
        if metrics.get(key)
    ]
    line = f"{sum(int(metrics.get(k) or 0) for k in metrics if k.startswith('trials_'))} trials"
    if states:
        line += f" ({', '.join(states)})"
    if metrics.get("epochs_trained") is not None:
        line += f", {metrics['epochs_trained']} epochs trained in total"
    if metrics.get("best_val_acc") is not None:
        line += (
            f"; best val accuracy {_pct(metrics['best_val_acc'])} "
            f"(trial {metrics.get('best_trial')}, its checkpoint is `sweep_best`)"
        )
    return line + "."


# --------------------------------------------------------------------------------------------
# the report


def _load_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise PipelineError(f"{path} not found: run the pipeline first (make run, or dvc repro)")
    return json.loads(path.read_text())


def _image(path: Path, alt: str, report_dir: Path) -> str:
    """A Markdown image with a path relative to the report (CML uploads such local images)."""
    return f"![{alt}]({Path(os.path.relpath(path, report_dir)).as_posix()})"


def _per_class_in_grid(details: dict[str, Any]) -> str:
    cells = details.get("grid", {}).get("cells") or [[]]
    count = max(len(row) for row in cells)
    return f"{count} test image{'s' if count != 1 else ''}"


def _dataset_line(root: Path, details: dict[str, Any]) -> str:
    source = "the embedded synthetic shapes"
    try:
        from naturalist.params import load_params

        if load_params(root / "params.yaml").data.source == "inaturalist":
            source = "iNaturalist nature_12K"
    except PipelineError:
        pass
    count = len(details.get("models", {}))
    return (
        f"{count} model{'s' if count != 1 else ''} evaluated on the {details.get('test_images')} "
        f"test images of {source} ({len(details.get('classes', []))} classes)."
    )


def build_report(
    root: Path = Path("."),
    *,
    output: Path = REPORT_FILE,
    images_dir: Path = IMAGES_DIR,
    base: str | None = None,
) -> Path:
    """Write ``output`` (Markdown) and its images under ``images_dir``; return the report path."""
    root = Path(root).resolve()
    output = root / output
    images = root / images_dir
    evaluate_dir = root / EVALUATE_DIR
    metrics = _load_json(evaluate_dir / METRICS_FILE)
    details = _load_json(evaluate_dir / DETAILS_FILE)
    best = details["best_model"]
    best_info = details["models"][best]

    shutil.rmtree(images, ignore_errors=True)
    images.mkdir(parents=True)
    figures = evaluate_dir / FIGURES_DIR
    copied: dict[str, Path] = {}
    for png in sorted(figures.glob("*.png")):
        copied[png.stem] = Path(shutil.copy2(png, images / png.name))
    runs = curve_runs(root / RESULTS_DIR)
    curves = plot_training_curves(runs, images / "training_curves.png")

    resolved = resolve_base(root, base)
    if base and resolved is None:
        comparison = Comparison(
            params_md=f"_No baseline: `{base}` is not a revision of this repository._",
            metrics_md=f"_No baseline: `{base}` is not a revision of this repository._",
            old_test_acc={},
        )
    else:
        comparison = compare_with_base(root, resolved)
    against = f"`{resolved}`" if resolved else "the baseline"
    title = f"# Experiment report: {describe_head(root)}"
    lines: list[str] = [f"{title} vs {against}" if resolved else title, ""]
    summary = (
        f"{_dataset_line(root, details)} Best by validation accuracy: **{best}**, "
        f"{_pct(best_info.get('val_acc'))} on validation and **{_pct(metrics[best]['test_acc'])} "
        f"on test** (macro-F1 {metrics[best]['macro_f1']:.3f})"
    )
    old = comparison.old_test_acc.get(best)
    if old is not None and resolved:
        delta = (metrics[best]["test_acc"] - old) * 100
        if abs(delta) < 0.05:
            summary += f"; the same test accuracy as on {against}"
        else:
            summary += f"; on {against} it scored {_pct(old)} ({delta:+.1f} points)"
    lines += [summary + ".", ""]

    lines += [f"## Params that differ from {against}", "", comparison.params_md, ""]

    lines += [
        "## Test metrics",
        "",
        metrics_table(metrics, details),
        "",
        "★ the best model by **validation** accuracy (recorded in its checkpoint): the test set "
        "chooses nothing. Test loss is the mean cross-entropy; macro-F1 the unweighted mean of "
        "the per-class F1 scores.",
        "",
        f"### Metrics that differ from {against}",
        "",
        comparison.metrics_md,
        "",
    ]

    if curves is not None:
        lines += [
            "## Training curves",
            "",
            _image(curves, "training curves", output.parent),
            "",
            "Validation is measured after each epoch; the train figures are averages over the "
            "epoch while the weights change"
            + (
                ", and the fine-tunes' train loss includes their label smoothing."
                if any(name.startswith("finetune") for name in runs)
                else "."
            ),
            "",
        ]

    confusion_best = copied.get(f"confusion_{best}")
    if confusion_best is not None:
        lines += [
            f"## Confusion matrix of {best}",
            "",
            _image(confusion_best, f"confusion matrix of {best}", output.parent),
            "",
        ]
        others = [
            name
            for name in sorted(details["models"], key=model_sort_key)
            if name != best and f"confusion_{name}" in copied
        ]
        if others:
            lines += ["<details><summary>Confusion matrices of the other models</summary>", ""]
            for name in others:
                lines += [
                    _image(
                        copied[f"confusion_{name}"], f"confusion matrix of {name}", output.parent
                    )
                ]
                lines += [""]
            lines += ["</details>", ""]

    grid = copied.get(Path(GRID_FILE).stem)
    if grid is not None:
        lines += [
            f"## Test predictions of {best}",
            "",
            f"{_per_class_in_grid(details)} per class, the first of each class in the test split; "
            "each row is a true class, the label above each image is the prediction (green ✓ "
            "right, red ✗ wrong).",
            "",
            _image(grid, f"test predictions of {best}", output.parent),
            "",
        ]

    lines += ["## Per-class test accuracy", "", per_class_table(details), ""]

    lines += [f"## Sweep: top {TOP_TRIALS} trials", ""]
    sweep_dir = root / SWEEP_DIR
    table = sweep_table(sweep_dir)
    if table is None:
        lines += ["_No sweep leaderboard in this run (`results/sweep/`)._", ""]
    else:
        summary_line = sweep_summary(sweep_dir)
        lines += [summary_line, ""] if summary_line else []
        lines += [
            table,
            "",
            "Ranked by validation accuracy: complete trials first, then pruned ones by the best "
            "val accuracy they reached. The whole leaderboard is `results/sweep/leaderboard.csv`; "
            "`results/sweep/best_params.yaml` holds the winner's params, ready to paste.",
            "",
        ]
        for png in sorted((sweep_dir / "plots").glob("*.png")):
            copy = Path(shutil.copy2(png, images / f"sweep_{png.name}"))
            lines += [_image(copy, f"sweep: {png.stem.replace('_', ' ')}", output.parent), ""]

    lines += [
        "---",
        "_Built by `make report` from `results/` of this workspace"
        + (f" against {against}. " if resolved else ". ")
        + "Reproduce with `make run && make report`; compare interactively with "
        "`dvc exp show` and `dvc plots diff`._",
        "",
    ]
    output.write_text("\n".join(lines))
    return output


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m naturalist.reporting",
        description="Write report.md (and report_images/) from the results of the last run.",
    )
    parser.add_argument(
        "--base",
        default=os.environ.get("REPORT_BASE") or None,
        help="revision to compare with (default: main, else origin/main)",
    )
    parser.add_argument("--output", type=Path, default=REPORT_FILE, help="default: report.md")
    parser.add_argument(
        "--images", type=Path, default=IMAGES_DIR, help="folder of its images (report_images)"
    )
    args = parser.parse_args(argv)
    path = build_report(Path("."), output=args.output, images_dir=args.images, base=args.base)
    print(f"report: wrote {os.path.relpath(path)} and its images in {args.images}/")


if __name__ == "__main__":
    run_stage(main)
