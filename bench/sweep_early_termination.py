"""The default sweep with and without early termination (hyperband), on the embedded data.

    python bench/sweep_early_termination.py [--work /tmp/naturalist-sweep-bench] [--set KEY=VALUE]

Runs the sweep of params.yaml twice with the same seed and run_cap, each in a fresh Optuna
storage: once as configured (hyperband on by default) and once with ``early_terminate: null``.
Reports, for each, the epochs trained, the wall time and the best val accuracy, and the ratios.
Target: early termination trains at most 50 % of the epochs for a best val accuracy within
1 point. Every trial is a real training run (runs.train_scratch), so this takes minutes.

The embedded dataset is generated once into ``--work`` from params.yaml's data section.
``--set sweep.run_cap=20`` (repeatable) changes a params key for both runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from naturalist import synthetic
from naturalist.params import Params, load_params, parse_params
from naturalist.split import split_dataset
from naturalist.sweep import run_sweep

REPO = Path(__file__).resolve().parents[1]


def embedded_data(params: Params, work: Path) -> Path:
    """The default embedded dataset, split and decoded (generated once, then reused)."""
    split = work / "data" / "split"
    if (split / "manifest.json").is_file():
        return split
    options = params.data.synthetic
    raw = work / "data" / "raw"
    shutil.rmtree(raw, ignore_errors=True)
    synthetic.generate(
        raw,
        seed=params.seed,
        train_per_class=options.train_per_class,
        test_per_class=options.test_per_class,
        min_side=options.min_side,
        max_side=options.max_side,
    )
    split_dataset(
        raw,
        split,
        image_size=params.data.image_size,
        val_fraction=params.data.val_fraction,
        seed=params.seed,
        progress=False,
    )
    return split


def with_overrides(params: Params, sets: list[str]) -> Params:
    raw = params.model_dump(exclude_unset=True)
    raw["wandb"] = {**raw.get("wandb", {}), "mode": "disabled"}  # no W&B runs in a benchmark
    for item in sets:
        key, _, value = item.partition("=")
        *path, last = key.split(".")
        node = raw
        for part in path:
            node = node.setdefault(part, {})
        node[last] = yaml.safe_load(value)
    return parse_params(raw)


def run_variant(name: str, params: Params, split: Path, work: Path) -> dict[str, Any]:
    folder = work / name
    shutil.rmtree(folder, ignore_errors=True)  # a fresh study: nothing resumed
    started = time.perf_counter()
    summary = run_sweep(
        params,
        split_dir=split,
        results_dir=folder / "results",
        model_path=folder / "sweep_best.pt",
        sweep_dir=folder / ".sweep",
        progress=False,
    )
    seconds = time.perf_counter() - started
    records = summary.records
    return {
        "variant": name,
        "trials": len(records),
        "complete": sum(r.state == "complete" for r in records),
        "pruned": sum(r.state == "pruned" for r in records),
        "failed": sum(r.state == "failed" for r in records),
        "epochs": sum(r.epochs for r in records),
        "seconds": round(seconds, 1),
        "best_val_acc": summary.best.best_val_acc,
        "best_trial": summary.best.number,
        "best_params": summary.best.params,
        "curves": {r.number: [round(v, 4) for v in r.val_acc] for r in records},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/naturalist-sweep-bench"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--only",
        choices=("early", "full"),
        help="run one variant (default: both); the other's saved results are shown when they "
        "came from the same config",
    )
    args = parser.parse_args()
    base = with_overrides(load_params(REPO / "params.yaml"), args.set)
    if base.sweep.early_terminate is None:
        raise SystemExit("the sweep has no early_terminate to compare against")
    split = embedded_data(base, args.work)
    variants = {
        "early": base,
        "full": with_overrides(base, ["sweep.early_terminate=null"]),
    }
    identity = {  # what both runs must share to be compared
        "seed": base.seed,
        "model": base.model.model_dump(),
        "train": base.train.model_dump(),
        "sweep": {k: v for k, v in base.sweep.model_dump().items() if k != "early_terminate"},
    }
    results = []
    for name, params in variants.items():
        saved = args.work / f"results-{name}.json"
        if args.only in (None, name):
            result = {**run_variant(name, params, split, args.work), "identity": identity}
            saved.write_text(json.dumps(result, indent=2) + "\n")
            results.append(result)
        elif saved.is_file() and json.loads(saved.read_text())["identity"] == identity:
            results.append(json.loads(saved.read_text()))  # the same config, run earlier

    sweep, epochs = base.sweep, base.train.epochs
    early = sweep.early_terminate
    print(
        f"\nsweep: {sweep.method}, run_cap {sweep.run_cap}, up to {epochs} epochs per trial, "
        f"seed {base.seed}; early termination = hyperband (min_iter {early.min_iter}, "
        f"eta {early.eta})\n"
    )
    results.sort(key=lambda r: r["variant"] != "early")
    print("| variant | trials (complete / pruned / failed) | epochs | wall time | best val acc |")
    print("|---|---|---|---|---|")
    labels = {"early": "early termination", "full": "no early termination"}
    for r in results:
        print(
            f"| {labels[r['variant']]} | {r['trials']} ({r['complete']} / {r['pruned']} / "
            f"{r['failed']}) | {r['epochs']} | {r['seconds']:.0f} s | {r['best_val_acc']:.4f} |"
        )
    if len(results) == 2:
        et, full = results
        epoch_ratio = et["epochs"] / full["epochs"]
        gap = (full["best_val_acc"] - et["best_val_acc"]) * 100
        print(
            f"\nepochs ratio {epoch_ratio:.0%} (target <= 50 %), wall-time ratio "
            f"{et['seconds'] / full['seconds']:.0%}, best val acc {gap:+.2f} points behind "
            f"(target <= 1): {'met' if epoch_ratio <= 0.5 and gap <= 1.0 else 'NOT met'}"
        )
    print(f"details: {args.work}/results-*.json")


if __name__ == "__main__":
    main()
