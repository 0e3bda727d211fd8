"""The sweep's outputs, written from one record per trial whichever engine ran them.

``results/sweep/``: ``leaderboard.csv`` and ``.json`` (every trial: state, val acc per epoch
reached, params, duration), ``best_params.yaml`` (paste into params.yaml), ``metrics.json`` (the
summary ``dvc exp show`` lists), ``plots/*.png`` and ``trials/trial_NNN/`` (each trial's dvclive
folder). The best trial's checkpoint is copied to the model path unchanged.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from naturalist.fsutil import replacing_directory
from naturalist.params import Params, SweepParams
from naturalist.sweep_plots import write_plots

STATES = ("complete", "pruned", "failed", "interrupted")
LEADERBOARD = "leaderboard"
BEST_PARAMS = "best_params.yaml"
METRICS = "metrics.json"


@dataclass
class TrialRecord:
    """One finished trial. ``val_acc`` holds the val accuracy of every epoch it trained."""

    number: int
    state: str  # complete | pruned | failed | interrupted
    params: dict[str, Any]
    val_acc: list[float] = field(default_factory=list)
    seconds: float | None = None
    best_epoch: int | None = None
    error: str = ""
    retry_of: int | None = None

    @property
    def epochs(self) -> int:
        return len(self.val_acc)

    @property
    def best_val_acc(self) -> float | None:
        return max(self.val_acc) if self.val_acc else None

    @property
    def best_at(self) -> int | None:
        """The epoch of the best val accuracy (1-based)."""
        if self.best_epoch is not None:
            return self.best_epoch
        if not self.val_acc:
            return None
        return self.val_acc.index(max(self.val_acc)) + 1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> TrialRecord:
        return cls(**raw)


def ranked(records: list[TrialRecord]) -> list[TrialRecord]:
    """Complete trials by val acc, then pruned ones by the best val acc they reached, then the
    failed and interrupted ones."""

    def key(record: TrialRecord) -> tuple[int, float, int]:
        best = record.best_val_acc
        return (STATES.index(record.state), -(best if best is not None else -1.0), record.number)

    return sorted(records, key=key)


def best_record(records: list[TrialRecord]) -> TrialRecord | None:
    """The complete trial with the highest val acc (the earlier one on a tie)."""
    complete = [r for r in records if r.state == "complete" and r.val_acc]
    if not complete:
        return None
    return max(complete, key=lambda r: (r.best_val_acc, -r.number))


def _cell(value: Any) -> Any:
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def leaderboard_rows(records: list[TrialRecord], names: list[str]) -> list[dict[str, Any]]:
    """The leaderboard as rows: rank, trial, state, val acc, ..., params, val acc per epoch."""
    most = max((r.epochs for r in records), default=0)
    rows = []
    for rank, record in enumerate(ranked(records), start=1):
        best = record.best_val_acc
        row: dict[str, Any] = {
            "rank": rank,
            "trial": record.number,
            "state": record.state,
            "val_acc": round(best, 6) if best is not None else None,
            "best_epoch": record.best_at,
            "epochs": record.epochs,
            "seconds": round(record.seconds, 2) if record.seconds is not None else None,
        }
        row.update({name: record.params.get(name) for name in names})
        row.update(
            {
                f"val_acc_epoch_{e + 1}": round(record.val_acc[e], 6) if e < record.epochs else None
                for e in range(most)
            }
        )
        row["retry_of"] = record.retry_of
        row["error"] = record.error
        rows.append(row)
    return rows


def write_leaderboard(
    records: list[TrialRecord], names: list[str], folder: Path, study_name: str
) -> None:
    rows = leaderboard_rows(records, names)
    columns = list(rows[0]) if rows else ["rank", "trial", "state", "val_acc", *names]
    with (folder / f"{LEADERBOARD}.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else _cell(v) for k, v in row.items()})
    trials = []
    for row, record in zip(rows, ranked(records), strict=True):
        entry = {k: v for k, v in row.items() if not k.startswith("val_acc_epoch_")}
        entry["params"] = {name: entry.pop(name) for name in names}
        entry["val_acc_per_epoch"] = [round(v, 6) for v in record.val_acc]
        trials.append(entry)
    (folder / f"{LEADERBOARD}.json").write_text(
        json.dumps({"study": study_name, "trials": trials}, indent=2) + "\n"
    )


def summary_metrics(records: list[TrialRecord]) -> dict[str, Any]:
    """The figures ``dvc exp show`` lists for the sweep."""
    counts = Counter(r.state for r in records)
    best = best_record(records)
    return {
        "best_val_acc": best.best_val_acc if best else None,
        "best_trial": best.number if best else None,
        "best_epoch": best.best_at if best else None,
        "trials_complete": counts["complete"],
        "trials_pruned": counts["pruned"],
        "trials_failed": counts["failed"],
        "trials_interrupted": counts["interrupted"],
        "epochs_trained": sum(r.epochs for r in records),
        "seconds_trained": round(sum(r.seconds or 0.0 for r in records), 1),
    }


def _cli_value(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    text = text.removesuffix("...").strip().replace(" ", "")
    return f"'{text}'" if any(c in text for c in "[]{},") else text


def best_params_yaml(best: TrialRecord, best_params: Params, sweep: SweepParams, study: str) -> str:
    """The best trial's model and train sections, ready to paste over params.yaml's."""
    varied = [
        name
        for name, p in sweep.parameters.items()
        if p.kind not in ("categorical", "constant") or len(p.choices) > 1
    ]
    flags = " ".join(f"-S {name}={_cli_value(best.params[name])}" for name in varied)
    header = (
        f"# Best trial of sweep {study}: trial {best.number}, val acc {best.best_val_acc:.4f} "
        f"at epoch {best.best_at} of {best.epochs}.\n"
        f"# Paste these sections over params.yaml's (swept: {', '.join(sweep.parameters)}),\n"
        f"# or try them as an experiment:\n#   dvc exp run {flags}\n"
    )
    sections = {
        "model": best_params.model.model_dump(),
        "train": best_params.train.model_dump(),
    }
    return header + yaml.dump(sections, Dumper=_ParamsDumper, sort_keys=False)


class _ParamsDumper(yaml.SafeDumper):
    """params.yaml's style: block mappings, lists on one line."""


_ParamsDumper.add_representer(
    list,
    lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True),
)


def _copy_file(source: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    shutil.copyfile(source, tmp)
    tmp.replace(dest)


def write_results(
    records: list[TrialRecord],
    sweep: SweepParams,
    *,
    results_dir: Path,
    study_name: str,
    epochs: int,
    best_params: Params | None = None,
    best_checkpoint: Path | None = None,
    model_path: Path | None = None,
    trial_dirs: dict[int, Path] | None = None,
) -> None:
    """Write every output; ``results_dir`` is replaced whole, so it is never half-written."""
    names = list(sweep.parameters)
    with replacing_directory(results_dir) as folder:
        write_leaderboard(records, names, folder, study_name)
        (folder / METRICS).write_text(json.dumps(summary_metrics(records), indent=2) + "\n")
        write_plots(records, sweep, folder / "plots", epochs=epochs)
        for number, source in sorted((trial_dirs or {}).items()):
            if source.is_dir():
                shutil.copytree(source, folder / "trials" / f"trial_{number:03d}")
        best = best_record(records)
        if best is not None and best_params is not None:
            (folder / BEST_PARAMS).write_text(
                best_params_yaml(best, best_params, sweep, study_name)
            )
    if best_checkpoint is not None and model_path is not None:
        _copy_file(best_checkpoint, model_path)
