"""A training step of every model in the sweep space, with glibc's allocator and with ours.

    python bench/training_step.py [--rounds 2] [--repeats 5] [--profile]

Times a training step (forward, backward, Adam; batch ``train.batch_size`` at ``data.image_size``,
channels_last, as ``training.fit`` runs it on the CPU) of the default scratch CNN and of each
``model.filters`` x ``model.kernel_sizes`` point of params.yaml's sweep space, one after another
in one process, as a sweep runs its trials. Each round runs that process twice: with glibc's
default malloc settings (the baseline) and with ``allocator.keep_freed_memory`` (what ``fit``
does); the best of the rounds counts, which damps a shared machine's noise. Prints both, the
speed-up, and each model's cost relative to the default one. ``--profile`` adds the torch
profiler's table of the operators that dominate the default model's step, for both settings.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from common import print_table
from torch import nn
from torch.profiler import ProfilerActivity, profile

from naturalist.allocator import keep_freed_memory
from naturalist.models import ScratchCNN, scratch_config
from naturalist.params import Params, load_params

REPO = Path(__file__).resolve().parents[1]


def training_step(params: Params, config: dict) -> Callable[[], None]:
    """One training step of ScratchCNN(**config) on a fixed random batch, as ``training.fit``
    runs it on the CPU."""
    torch.manual_seed(0)
    model = ScratchCNN(**config).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=params.train.lr)
    size, batch = params.data.image_size, params.train.batch_size
    images = torch.rand(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch,))

    def step() -> None:
        loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def step_seconds(step: Callable[[], None], repeats: int) -> float:
    """Mean seconds of ``step`` after one warm-up call."""
    step()
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - started) / repeats


def profile_table(step: Callable[[], None], repeats: int) -> str:
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10)


def models_to_time(params: Params) -> list[tuple[str, str, dict]]:
    """(filters, kernel_sizes, ScratchCNN kwargs): the default model, then the sweep space's."""
    space = params.sweep.parameters
    base = scratch_config(params.model, params.data.image_size, 10)
    return [("default model", "", base)] + [
        (str(f), str(k), {**base, "filters": f, "kernel_sizes": k})
        for f, k in itertools.product(
            space["model.filters"].values or [params.model.filters],
            space["model.kernel_sizes"].values or [params.model.kernel_sizes],
        )
    ]


def child(allocator: str, repeats: int, profile_default: bool) -> None:
    """Time every model in this process and print the seconds per step as JSON."""
    if allocator == "kept" and not keep_freed_memory():
        raise SystemExit(
            "keep_freed_memory did not apply (it needs glibc on Linux, and "
            "NATURALIST_KEEP_FREED_MEMORY not set to 0): nothing to compare"
        )
    params = load_params(REPO / "params.yaml")
    models = models_to_time(params)
    if profile_default:
        print(profile_table(training_step(params, models[0][2]), repeats), file=sys.stderr)
    seconds = [step_seconds(training_step(params, config), repeats) for *_, config in models]
    print(json.dumps(seconds))


def run_child(allocator: str, args: argparse.Namespace, profile_default: bool) -> list[float]:
    command = [sys.executable, __file__, "--child", allocator, "--repeats", str(args.repeats)]
    done = subprocess.run(
        command + (["--profile"] if profile_default else []),
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:  # the child's last line says why (a traceback or a SystemExit)
        raise SystemExit((done.stderr.strip().splitlines() or ["the timing process failed"])[-1])
    if profile_default:
        print(f"\ndefault model, {allocator} allocator:\n{done.stderr}")
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="process pairs; the best counts")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per model")
    parser.add_argument("--profile", action="store_true", help="profile the default model's step")
    parser.add_argument("--child", choices=("glibc", "kept"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.repeats, args.profile)
        return
    params = load_params(REPO / "params.yaml")
    models = models_to_time(params)
    runs: dict[str, list[list[float]]] = {"glibc": [], "kept": []}
    for round_ in range(args.rounds):
        for allocator in runs:
            runs[allocator].append(run_child(allocator, args, args.profile and round_ == 0))
    glibc, kept = ([min(times) for times in zip(*runs[a], strict=True)] for a in runs)
    per_class = params.data.synthetic.train_per_class
    train_images = 10 * round(per_class * (1 - params.data.val_fraction))
    steps_per_epoch = math.ceil(train_images / params.train.batch_size)

    print(
        f"batch {params.train.batch_size} at {params.data.image_size} px, "
        f"{torch.get_num_threads()} threads, best of {args.rounds} rounds; an epoch of the "
        f"embedded data is {steps_per_epoch} steps\n"
    )
    rows: list[list[object]] = [
        [
            filters,
            kernels,
            f"{before * 1000:.0f}",
            f"{after * 1000:.0f}",
            f"{before / after:.2f}x",
            f"{after / kept[0]:.1f}x",
            f"{after * steps_per_epoch:.1f}",
        ]
        for (filters, kernels, _), before, after in zip(models, glibc, kept, strict=True)
    ]
    print_table(
        ["filters", "kernel_sizes", "glibc ms", "kept ms", "speed-up", "vs default", "s/epoch"],
        rows,
    )
    speedups = [b / a for b, a in zip(glibc, kept, strict=True)]
    print(
        f"\nspeed-up of a step from keeping freed memory: {min(speedups):.2f}x to "
        f"{max(speedups):.2f}x; all models in sequence: {sum(glibc) / sum(kept):.2f}x; the sweep "
        f"space's mean step costs {sum(kept[1:]) / len(kept[1:]) / kept[0]:.1f}x the default's"
    )


if __name__ == "__main__":
    main()
