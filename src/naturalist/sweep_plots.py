"""The sweep's plots, as PNG: parallel coordinates of params against val accuracy, param
importances, and every trial's val accuracy per epoch (where hyperband cut trials short).

Drawn with matplotlib's object API (no pyplot, no display needed). Importances come from
Optuna's PED-ANOVA evaluator, which needs neither scikit-learn nor SciPy.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from naturalist.params import SweepParameter, SweepParams
from naturalist.sweep_space import encode_choice, optuna_distribution

if TYPE_CHECKING:
    from naturalist.sweep_report import TrialRecord

IMPORTANCE_QUANTILE = 0.25  # importance = how much a param decides reaching the top quarter
MIN_TRIALS_FOR_IMPORTANCE = 5


def label(value: Any) -> str:
    """A short axis label: ``32-64-128-256-512`` for lists, ``true`` for booleans."""
    if isinstance(value, list):
        return "-".join(label(v) for v in value)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def varied(sweep: SweepParams) -> list[str]:
    """The swept keys that take more than one value."""
    return [
        name
        for name, p in sweep.parameters.items()
        if p.kind not in ("categorical", "constant") or len(p.choices) > 1
    ]


def _blank(path: Path, title: str, message: str) -> None:
    figure = Figure(figsize=(6, 3))
    ax = figure.subplots()
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    figure.savefig(path, dpi=100)


class _Axis:
    """Maps one param's values to [0, 1] and names its ticks."""

    def __init__(self, parameter: SweepParameter) -> None:
        self.categorical = parameter.kind in ("categorical", "constant")
        if self.categorical:
            self.choices = [encode_choice(v) for v in parameter.choices]
            self.labels = [label(v) for v in parameter.choices]
            return
        assert parameter.min is not None and parameter.max is not None
        low, high = float(parameter.min), float(parameter.max)
        if parameter.kind == "log_uniform":
            low, high = math.exp(low), math.exp(high)
        self.log = parameter.kind in ("log_uniform", "log_uniform_values")
        self.low, self.high = (math.log(low), math.log(high)) if self.log else (low, high)

    def position(self, value: Any) -> float:
        if self.categorical:
            if len(self.choices) == 1:
                return 0.5
            return self.choices.index(encode_choice(value)) / (len(self.choices) - 1)
        x = math.log(value) if self.log else float(value)
        return (x - self.low) / (self.high - self.low)

    def ticks(self) -> list[tuple[float, str]]:
        if self.categorical:
            return [
                (self.position(c), text) for c, text in zip(self.choices, self.labels, strict=True)
            ]
        out = []
        for fraction in (0.0, 0.5, 1.0):
            x = self.low + fraction * (self.high - self.low)
            out.append((fraction, label(math.exp(x) if self.log else x)))
        return out


def parallel_coordinates(records: list[TrialRecord], sweep: SweepParams, path: Path) -> None:
    """One line per trial through its params to its val accuracy: complete trials coloured by
    it, pruned trials in grey at the val accuracy they reached before the cut."""
    title = "Sweep: params against val accuracy"
    shown = [r for r in records if r.state in ("complete", "pruned") and r.val_acc]
    if not shown:
        _blank(path, title, "no complete or pruned trial to show")
        return
    complete = sorted((r for r in shown if r.state == "complete"), key=lambda r: r.best_val_acc)
    pruned = [r for r in shown if r.state == "pruned"]
    names = varied(sweep) or list(sweep.parameters)
    axes = [_Axis(sweep.parameters[name]) for name in names]
    accs = [r.best_val_acc for r in shown]
    low, high = min(accs), max(accs)
    if high - low < 1e-9:
        low, high = low - 0.01, high + 0.01
    span = Normalize(low, high)  # positions on the val acc axis
    scale = [r.best_val_acc for r in complete] or accs  # colours spread over complete trials
    colour = Normalize(min(scale), max(max(scale), min(scale) + 0.01))
    cmap = colormaps["viridis"]

    figure = Figure(figsize=(2.0 * (len(names) + 1) + 1.5, 5.5), layout="constrained")
    ax = figure.subplots()
    xs = list(range(len(names) + 1))

    def ys(record: TrialRecord) -> list[float]:
        out = [axis.position(record.params[name]) for axis, name in zip(axes, names, strict=True)]
        return [*out, span(record.best_val_acc)]

    for record in pruned:
        ax.plot(xs, ys(record), color="0.7", linewidth=1.0, linestyle="--", zorder=1.5)
    for record in complete:
        best = record is complete[-1]
        ax.plot(
            xs,
            ys(record),
            color=cmap(colour(record.best_val_acc)),
            linewidth=3.0 if best else 1.4,
            alpha=1.0 if best else 0.8,
            zorder=3 if best else 2,
        )
    for x, axis in enumerate(axes):
        ax.axvline(x, color="black", linewidth=0.8, zorder=1)
        for y, text in axis.ticks():
            ax.text(
                x + 0.04,
                y,
                text,
                fontsize=8,
                va="center",
                ha="left",
                zorder=4,
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.7, "pad": 1},
            )
    ax.axvline(len(names), color="black", linewidth=0.8, zorder=1)
    for fraction in (0.0, 0.5, 1.0):
        value = low + fraction * (high - low)
        ax.text(len(names) + 0.04, fraction, f"{value:.3f}", fontsize=8, va="center", ha="left")
    ax.set_xticks(xs, [*names, "val acc"], rotation=15, ha="right", fontsize=9)
    ax.set_yticks([])
    ax.set_xlim(-0.1, len(names) + 0.6)
    ax.set_ylim(-0.05, 1.05)
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    if complete:
        figure.colorbar(
            ScalarMappable(norm=colour, cmap=cmap), ax=ax, label="best val acc", shrink=0.8
        )
    ax.set_title(
        f"{title}: {_count(len(complete), 'complete trial')} in colour (the best bold)"
        + (
            f", {_count(len(pruned), 'pruned trial')} in grey at the val acc they reached"
            if pruned
            else ""
        )
    )
    figure.savefig(path, dpi=100)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def importance_basis(
    records: list[TrialRecord], sweep: SweepParams
) -> tuple[list[tuple[TrialRecord, float]], str]:
    """The trials and values to rank: complete trials by their best val accuracy; or, when too
    few completed under early termination, every trial that reached the first cut, by its best
    val accuracy up to that epoch (all of them trained that long)."""
    complete = [(r, r.best_val_acc) for r in records if r.state == "complete" and r.val_acc]
    early = sweep.early_terminate
    if len(complete) >= MIN_TRIALS_FOR_IMPORTANCE or early is None:
        return complete, f"best val acc of {_count(len(complete), 'complete trial')}"
    cut = early.min_iter
    reached = [
        (r, max(r.val_acc[:cut]))
        for r in records
        if r.state in ("complete", "pruned") and r.epochs >= cut
    ]
    return (
        reached,
        f"best val acc by epoch {cut} (the first cut) of {_count(len(reached), 'trial')}",
    )


def importances(
    records: list[TrialRecord], sweep: SweepParams
) -> tuple[dict[str, float] | str, str]:
    """PED-ANOVA importance of each varied param for reaching the top quarter, and what was
    ranked; or the reason there are none."""
    import optuna
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

    names = varied(sweep)
    basis, what = importance_basis(records, sweep)
    if not names:
        return "no param takes more than one value", what
    if len(basis) < MIN_TRIALS_FOR_IMPORTANCE:
        return (
            f"importances need at least {MIN_TRIALS_FOR_IMPORTANCE} trials to compare "
            f"(this sweep has {what})"
        ), what
    distributions = {name: optuna_distribution(sweep.parameters[name]) for name in names}
    study = optuna.create_study(direction="maximize")
    for record, value in basis:
        study.add_trial(
            optuna.trial.create_trial(
                params={name: encode_choice(record.params[name]) for name in names},
                distributions=distributions,
                value=value,
            )
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            evaluator = PedAnovaImportanceEvaluator(target_quantile=IMPORTANCE_QUANTILE)
            return dict(get_param_importances(study, evaluator=evaluator, normalize=True)), what
    except Exception as error:  # a plot never stops the stage
        return f"importances could not be computed ({type(error).__name__}: {error})", what


def param_importances(records: list[TrialRecord], sweep: SweepParams, path: Path) -> None:
    title = "Sweep: param importance"
    result, what = importances(records, sweep)
    if isinstance(result, str):
        _blank(path, title, result)
        return
    items = sorted(result.items(), key=lambda item: item[1])
    figure = Figure(figsize=(7.5, 1.0 + 0.5 * len(items)), layout="constrained")
    ax = figure.subplots()
    bars = ax.barh([name for name, _ in items], [value for _, value in items], color="#3b75af")
    ax.bar_label(bars, labels=[f"{value:.2f}" for _, value in items], padding=3, fontsize=8)
    ax.set_xlim(0, max(1e-9, max(v for _, v in items)) * 1.15)
    ax.set_xlabel("importance (PED-ANOVA, normalised to sum to 1)")
    ax.set_title(
        f"{title} for reaching the top {IMPORTANCE_QUANTILE:.0%}\nranked by: {what}", fontsize=10
    )
    figure.savefig(path, dpi=100)


def val_acc_curves(records: list[TrialRecord], sweep: SweepParams, epochs: int, path: Path) -> None:
    """Every trial's val accuracy per epoch: complete ones in colour, pruned ones grey."""
    figure = Figure(figsize=(8, 5), layout="constrained")
    ax = figure.subplots()
    complete = [r for r in records if r.state == "complete" and r.val_acc]
    accs = [r.best_val_acc for r in complete] or [0.0, 1.0]
    norm = Normalize(min(accs), max(accs) if max(accs) > min(accs) else min(accs) + 0.01)
    cmap = colormaps["viridis"]
    for record in records:
        if not record.val_acc:
            continue
        xs = list(range(1, record.epochs + 1))
        if record.state == "complete":
            ax.plot(
                xs, record.val_acc, color=cmap(norm(record.best_val_acc)), linewidth=1.6, zorder=3
            )
        elif record.state == "pruned":
            ax.plot(xs, record.val_acc, color="0.6", linewidth=1.0, zorder=2)
            ax.plot(xs[-1], record.val_acc[-1], "x", color="0.35", zorder=2)
        else:
            ax.plot(xs, record.val_acc, color="tab:red", linestyle=":", marker=".", linewidth=1.0)
    early = sweep.early_terminate
    if early is not None:
        rung = early.min_iter
        while rung < epochs:
            ax.axvline(rung, color="0.8", linestyle="--", linewidth=0.8, zorder=1)
            rung *= early.eta
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("val acc")
    ax.set_xlim(0.8, max(epochs, 1) + 0.2)
    handles = [
        Line2D([], [], color=cmap(0.8), label="complete (colour = best val acc)"),
        Line2D([], [], color="0.6", marker="x", label="pruned (x = last epoch)"),
        Line2D([], [], color="tab:red", linestyle=":", marker=".", label="failed / interrupted"),
    ]
    if early is not None:
        handles.append(Line2D([], [], color="0.8", linestyle="--", label="hyperband rungs"))
    ax.legend(handles=handles, loc="lower right", fontsize=8)
    ax.set_title(f"Sweep: val accuracy per epoch, {_count(len(records), 'trial')}")
    ax.grid(alpha=0.3)
    figure.savefig(path, dpi=100)


def write_plots(
    records: list[TrialRecord], sweep: SweepParams, folder: Path, *, epochs: int
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    parallel_coordinates(records, sweep, folder / "parallel_coordinates.png")
    param_importances(records, sweep, folder / "param_importances.png")
    val_acc_curves(records, sweep, epochs, folder / "val_acc_curves.png")
