"""The sweep: config translation, validation, and real sweeps on a tiny generated dataset
(real Optuna storage, real training loop, real dvclive folders, real checkpoints)."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch
import yaml
from helpers import run_sweep_in
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from naturalist import sweep as sweep_module
from naturalist.errors import PipelineError
from naturalist.models import load_checkpoint
from naturalist.params import Params, ParamsError, parse_params
from naturalist.sweep import (
    SweepContext,
    default_storage,
    records_from_study,
    study_name,
    wandb_trial,
)
from naturalist.sweep_space import (
    apply_overrides,
    decode_params,
    grid_size,
    make_pruner,
    make_sampler,
    optuna_distribution,
    wandb_parameter,
    wandb_sweep_config,
)

TINY_MODEL = {"filters": [4, 4, 4, 4, 4], "dense_units": 8}


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from threads, and threads that spin-wait on a busy 2-core
    machine make them many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_params(sweep: dict[str, Any], *, epochs: int = 2, **sections: Any) -> Params:
    """Tiny params; no early termination unless ``sweep`` asks for it."""
    raw = {
        "wandb": {"mode": "disabled"},
        "model": dict(TINY_MODEL),
        "train": {"epochs": epochs, "batch_size": 32},
        "sweep": {"early_terminate": None, **sweep},
    }
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return parse_params(raw)


def load_study(tmp: Path, params: Params, split_dir: Path) -> optuna.Study:
    return optuna.load_study(
        study_name=study_name(params, split_dir), storage=default_storage(tmp / ".sweep")
    )


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def count_trainings(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every training a sweep starts, as the dotted values it trained with."""
    calls: list[dict[str, Any]] = []
    real = sweep_module.train_scratch

    def spy(params: Params, splits: Any, **kwargs: Any) -> Any:
        calls.append({"model.activation": params.model.activation, "train.lr": params.train.lr})
        return real(params, splits, **kwargs)

    monkeypatch.setattr(sweep_module, "train_scratch", spy)
    return calls


# --------------------------------------------------------------------------------------------
# Translation of every parameter form and method


FORMS = [
    (
        "model.activation",
        {"values": ["ReLU", "GELU"]},
        CategoricalDistribution(["ReLU", "GELU"]),
        {"values": ["ReLU", "GELU"]},
    ),
    (
        "model.kernel_sizes",
        {"values": [[3, 3, 3, 3, 3], [5, 5, 3, 3, 3]]},
        CategoricalDistribution(["[3,3,3,3,3]", "[5,5,3,3,3]"]),
        {"values": [[3, 3, 3, 3, 3], [5, 5, 3, 3, 3]]},
    ),
    ("model.dropout", {"value": 0.3}, CategoricalDistribution([0.3]), {"value": 0.3}),
    (
        "model.dense_units",
        {"min": 64, "max": 256},
        IntDistribution(64, 256),
        {"distribution": "int_uniform", "min": 64, "max": 256},
    ),
    (
        "model.dropout",
        {"min": 0.0, "max": 0.5, "distribution": "uniform"},
        FloatDistribution(0.0, 0.5),
        {"distribution": "uniform", "min": 0.0, "max": 0.5},
    ),
    (
        "model.dropout",
        {"min": 0.1, "max": 0.5, "q": 0.1, "distribution": "q_uniform"},
        FloatDistribution(0.1, 0.5, step=0.1),
        {"distribution": "q_uniform", "min": 0.1, "max": 0.5, "q": 0.1},
    ),
    (
        "model.dense_units",
        {"min": 64, "max": 256, "q": 64},
        IntDistribution(64, 256, step=64),
        {"distribution": "q_uniform", "min": 64, "max": 256, "q": 64},
    ),
    (
        "train.lr",
        {"min": 0.0001, "max": 0.01, "distribution": "log_uniform_values"},
        FloatDistribution(0.0001, 0.01, log=True),
        {"distribution": "log_uniform_values", "min": 0.0001, "max": 0.01},
    ),
    (
        "train.lr",
        {"min": -9.0, "max": -5.0, "distribution": "log_uniform"},
        FloatDistribution(math.exp(-9.0), math.exp(-5.0), log=True),
        {"distribution": "log_uniform", "min": -9.0, "max": -5.0},
    ),
]


@pytest.mark.parametrize(("name", "spec", "optuna_form", "wandb_form"), FORMS)
def test_every_parameter_form_translates(name, spec, optuna_form, wandb_form):
    params = make_params({"method": "random", "parameters": {name: spec}})
    parameter = params.sweep.parameters[name]
    assert optuna_distribution(parameter) == optuna_form
    assert wandb_parameter(parameter) == wandb_form


@pytest.mark.parametrize(
    ("method", "sampler"),
    [
        ("grid", optuna.samplers.GridSampler),
        ("random", optuna.samplers.RandomSampler),
        ("bayes", optuna.samplers.TPESampler),
    ],
)
def test_methods_translate_to_samplers(method, sampler):
    params = make_params(
        {
            "method": method,
            "parameters": {
                "model.activation": {"values": ["ReLU", "GELU"]},
                "model.filters": {"values": [[4, 4, 4, 4, 4], [8, 8, 8, 8, 8]]},
            },
        }
    )
    made = make_sampler(params.sweep, seed=7)
    assert type(made) is sampler
    if method == "grid":
        assert made._search_space == {
            "model.activation": ["ReLU", "GELU"],
            "model.filters": ["[4,4,4,4,4]", "[8,8,8,8,8]"],
        }


def test_hyperband_translates_to_the_hyperband_pruner():
    params = make_params(
        {"early_terminate": {"type": "hyperband", "min_iter": 2, "eta": 4}}, epochs=9
    )
    pruner = make_pruner(params.sweep, params.train.epochs)
    assert isinstance(pruner, optuna.pruners.HyperbandPruner)
    assert (pruner._min_resource, pruner._max_resource, pruner._reduction_factor) == (2, 9, 4)
    assert isinstance(make_pruner(params.sweep, 2), optuna.pruners.NopPruner)  # min_iter >= epochs
    params = make_params({"early_terminate": None})
    assert isinstance(make_pruner(params.sweep, 2), optuna.pruners.NopPruner)


def test_wandb_sweep_config_of_the_default_space():
    sweep = parse_params({}).sweep
    config = wandb_sweep_config(sweep, name="sweep-abc")
    assert config == {
        "name": "sweep-abc",
        "method": "random",
        "metric": {"name": "val/acc", "goal": "maximize"},
        "run_cap": sweep.run_cap,
        "early_terminate": {
            "type": "hyperband",
            "min_iter": sweep.early_terminate.min_iter,
            "eta": sweep.early_terminate.eta,
        },
        "parameters": {
            "model.kernel_sizes": {"values": [[3, 3, 3, 3, 3], [3, 5, 5, 7, 7], [7, 7, 5, 5, 3]]},
            "model.dropout": {"values": [0.2, 0.3]},
            "model.activation": {"values": ["ReLU", "GELU", "SiLU", "Mish"]},
            "model.batch_norm": {"values": [True, False]},
            "model.filters": {
                "values": [
                    [32, 32, 32, 32, 32],
                    [128, 128, 64, 64, 32],
                    [32, 64, 128, 256, 512],
                ]
            },
            "model.augment": {"values": [False]},
            "model.dense_units": {"values": [128, 256]},
        },
    }
    assert grid_size(sweep) == 3 * 2 * 4 * 2 * 3 * 1 * 2
    yaml.safe_dump(config)  # plain data, as wandb.sweep and a sweep.yaml want it


def test_params_yaml_sweep_section_is_the_default():
    """params.yaml spells out the same sweep the code defaults to."""
    written = yaml.safe_load(Path(__file__).parents[1].joinpath("params.yaml").read_text())
    assert parse_params({"sweep": written["sweep"]}).sweep == parse_params({}).sweep


def test_trial_values_become_validated_params():
    params = make_params(
        {
            "method": "random",
            "parameters": {
                "model.filters": {"values": [[4, 4, 4, 4, 4], [8, 8, 8, 8, 8]]},
                "model.dense_units": {"min": 8, "max": 64, "q": 8},
            },
        }
    )
    values = decode_params(params.sweep, {"model.filters": "[8,8,8,8,8]", "model.dense_units": 24})
    assert values == {"model.filters": [8, 8, 8, 8, 8], "model.dense_units": 24}
    # a W&B run hands back floats for q_uniform: they become the integers the key takes
    assert decode_params(params.sweep, {"model.filters": [4] * 5, "model.dense_units": 24.0}) == {
        "model.filters": [4] * 5,
        "model.dense_units": 24,
    }
    trial_params = apply_overrides(params, values)
    assert trial_params.model.filters == [8, 8, 8, 8, 8]
    assert trial_params.model.dense_units == 24
    assert trial_params.train == params.train
    with pytest.raises(ParamsError, match=r"model.activation: 'Swish' is not one of"):
        apply_overrides(params, {"model.activation": "Swish"})


# --------------------------------------------------------------------------------------------
# Invalid configs: one clear line each


INVALID = [
    ({"method": "hyperopt"}, "sweep.method: 'hyperopt' is not one of grid, random, bayes"),
    (
        {"parameters": {"model.activaton": {"values": ["ReLU"]}}},
        "sweep.parameters: 'model.activaton' is not a model.* or train.* key "
        "(did you mean 'model.activation'?)",
    ),
    (
        {"parameters": {"seed": {"values": [1, 2]}}},
        "sweep.parameters: 'seed' is not a model.* or train.* key",
    ),
    (
        {"parameters": {"model.activation": {"values": ["ReLU", "Swish"]}}},
        "sweep.parameters.model.activation: 'Swish' is not one of ReLU, GELU, SiLU, Mish",
    ),
    (
        {"parameters": {"model.filters": {"values": [[32, 32]]}}},
        "sweep.parameters.model.filters: [32, 32] must be a list of exactly 5 values",
    ),
    (
        {"parameters": {"train.lr": {"values": []}}},
        "sweep.parameters.train.lr: values is empty: list at least one value",
    ),
    (
        {"parameters": {"train.lr": {"values": [0.1, 0.1]}}},
        "sweep.parameters.train.lr: values lists a value more than once: [0.1, 0.1]",
    ),
    (
        {"parameters": {"model.dropout": {"min": 0.5, "max": 0.1}}},
        "sweep.parameters.model.dropout: min (0.5) must be below max (0.1)",
    ),
    (
        {"parameters": {"model.dropout": {"min": 0.1, "max": 1.0}}},
        "sweep.parameters.model.dropout: max 1.0 must be < 1.0",
    ),
    (
        {"parameters": {"train.lr": {"min": 0.001}}},
        "sweep.parameters.train.lr: uniform needs both min and max",
    ),
    (
        {"parameters": {"train.lr": {"min": "a", "max": 0.1}}},
        "sweep.parameters.train.lr.min: 'a' must be a number",
    ),
    (
        {"parameters": {"train.lr": {"values": [0.1], "min": 0.0, "max": 0.1}}},
        "sweep.parameters.train.lr: categorical takes only values (a non-empty list)",
    ),
    (
        {
            "parameters": {
                "train.lr": {"min": 0.0, "max": 0.1, "distribution": "log_uniform_values"}
            }
        },
        "sweep.parameters.train.lr: log_uniform_values needs min > 0, got 0.0",
    ),
    (
        {"parameters": {"train.lr": {"min": 0.001, "max": 0.1, "distribution": "normal"}}},
        "sweep.parameters.train.lr: distribution 'normal' has no Optuna counterpart; use one of "
        "categorical, constant, int_uniform, uniform, q_uniform, log_uniform_values, log_uniform",
    ),
    (
        {"parameters": {"train.lr": {"min": 0.001, "max": 0.1, "distribution": "gaussian"}}},
        "sweep.parameters.train.lr: distribution 'gaussian' is not one of categorical",
    ),
    (
        {"parameters": {"model.dense_units": {"min": 64, "max": 512, "distribution": "uniform"}}},
        "sweep.parameters.model.dense_units: distribution uniform draws numbers with decimals "
        "but model.dense_units takes integers",
    ),
    (
        {"parameters": {"model.dense_units": {"min": 64, "max": 500, "q": 32}}},
        "sweep.parameters.model.dense_units: max - min (500 - 64) must be a multiple of q (32)",
    ),
    (
        {
            "parameters": {
                "model.dense_units": {"min": 8.5, "max": 64, "distribution": "int_uniform"}
            }
        },
        "sweep.parameters.model.dense_units: int_uniform needs integer min and max",
    ),
    (
        {"parameters": {"train.lr": {"values": [0.1], "probabilities": [1.0]}}},
        "unknown key 'sweep.parameters.train.lr.probabilities'",
    ),
    ({"parameters": {}}, "sweep.parameters: is empty: give at least one model.* or train.* key"),
    (
        {"method": "grid", "parameters": {"train.lr": {"min": 0.001, "max": 0.1}}},
        "sweep.parameters.train.lr: method grid needs a list of values",
    ),
    ({"run_cap": None}, "sweep.run_cap: null runs the whole grid, so it needs method grid"),
    ({"run_cap": 0}, "sweep.run_cap: 0 must be > 0"),
    ({"metric": {"name": "val/loss"}}, "sweep.metric.name: 'val/loss' is not supported"),
    ({"metric": {"goal": "minimize"}}, "sweep.metric.goal: 'minimize' must be maximize"),
    (
        {"early_terminate": {"type": "hyperband", "max_iter": 27, "s": 2}},
        "sweep.early_terminate: give min_iter and eta; max_iter and s are not supported",
    ),
    (
        {"early_terminate": {"type": "envelope"}},
        "sweep.early_terminate.type: 'envelope' is not one of hyperband",
    ),
    (
        {"early_terminate": {"type": "hyperband", "eta": 1}},
        "sweep.early_terminate.eta: 1 must be >= 2",
    ),
    (
        {"parameters": {"train.epochs": {"values": [1, 2]}}},
        "sweep.parameters: train.epochs cannot be swept with early_terminate",
    ),
    ({"engine": "wandb"}, "sweep.engine: 'wandb' needs wandb.mode: online and a W&B login"),
    ({"engine": "ray"}, "sweep.engine: 'ray' is not one of optuna, wandb"),
    ({"storage": "optuna.db"}, "sweep.storage: 'optuna.db' is not a storage URL"),
    ({"run_caps": 3}, "unknown key 'sweep.run_caps' (did you mean 'run_cap'?)"),
]


@pytest.mark.parametrize(("sweep", "message"), INVALID)
def test_invalid_sweep_configs_are_rejected_in_one_line(sweep, message):
    raw = {"model": TINY_MODEL, "train": {"epochs": 10}, "sweep": sweep}
    with pytest.raises(ParamsError) as caught:
        parse_params(raw)
    text = str(caught.value)
    assert "\n" not in text
    assert text.startswith("params.yaml: ")
    assert message in text


# --------------------------------------------------------------------------------------------
# Real sweeps on the tiny data


GRID = {
    "method": "grid",
    "run_cap": None,
    "early_terminate": None,
    "parameters": {
        "model.activation": {"values": ["ReLU", "GELU"]},
        "train.lr": {"values": [0.01, 0.003]},
        "model.batch_norm": {"values": [True]},
    },
}


def test_grid_sweep_writes_every_output(tmp_path: Path, split_dir: Path):
    params = make_params(GRID)
    summary = run_sweep_in(tmp_path, params, split_dir)
    results = tmp_path / "results" / "sweep"

    rows = read_csv(results / "leaderboard.csv")
    assert len(rows) == 4  # the whole grid, each point once
    points = {(r["model.activation"], float(r["train.lr"])) for r in rows}
    assert points == {("ReLU", 0.01), ("ReLU", 0.003), ("GELU", 0.01), ("GELU", 0.003)}
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4"]
    assert {r["state"] for r in rows} == {"complete"}
    accs = [float(r["val_acc"]) for r in rows]
    assert accs == sorted(accs, reverse=True)
    for row in rows:
        per_epoch = [float(row["val_acc_epoch_1"]), float(row["val_acc_epoch_2"])]
        assert float(row["val_acc"]) == pytest.approx(max(per_epoch))
        assert row["epochs"] == "2" and float(row["seconds"]) > 0
        assert row["model.batch_norm"] == "True" and row["error"] == ""

    board = json.loads((results / "leaderboard.json").read_text())
    assert board["study"] == summary.study_name
    first = board["trials"][0]
    assert first["trial"] == int(rows[0]["trial"]) and first["state"] == "complete"
    assert len(first["val_acc_per_epoch"]) == 2
    assert set(first["params"]) == {"model.activation", "train.lr", "model.batch_norm"}

    metrics = json.loads((results / "metrics.json").read_text())
    assert metrics["best_val_acc"] == pytest.approx(accs[0])
    assert metrics["best_trial"] == int(rows[0]["trial"]) == summary.best.number
    assert (metrics["trials_complete"], metrics["trials_pruned"], metrics["trials_failed"]) == (
        4,
        0,
        0,
    )
    assert metrics["epochs_trained"] == 8

    # the best params paste over params.yaml and reproduce the best trial's values
    best = yaml.safe_load((results / "best_params.yaml").read_text())
    pasted = parse_params({**params.model_dump(exclude_unset=True), **best})
    assert pasted.model.activation == rows[0]["model.activation"]
    assert pasted.train.lr == float(rows[0]["train.lr"])
    assert pasted.model.filters == TINY_MODEL["filters"]
    assert "dvc exp run -S model.activation=" in (results / "best_params.yaml").read_text()

    # the best checkpoint is the best trial's, in the models.save_checkpoint format
    model, meta = load_checkpoint(tmp_path / "models" / "sweep_best.pt")
    assert meta["val_acc"] == pytest.approx(accs[0])
    assert meta["run"].endswith(f"trial-{rows[0]['trial']}")
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)

    for name in ("parallel_coordinates", "param_importances", "val_acc_curves"):
        assert (results / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for row in rows:  # each trial's dvclive folder, under the one results folder
        live = results / "trials" / f"trial_{int(row['trial']):03d}"
        assert json.loads((live / "metrics.json").read_text())["epochs_trained"] == 2
        curve = (live / "plots" / "metrics" / "val" / "acc.tsv").read_text().splitlines()
        assert len(curve) == 1 + 2  # header and one line per epoch
    # only the best trial's checkpoint is kept outside the outputs
    kept = sorted(p.parent.name for p in (tmp_path / ".sweep").rglob("model.pt"))
    assert kept == [f"trial_{summary.best.number:03d}"]


def test_raising_run_cap_resumes_without_rerunning(
    tmp_path: Path, split_dir: Path, count_trainings: list[dict[str, Any]]
):
    space = {
        "model.activation": {"values": ["ReLU", "GELU", "SiLU", "Mish"]},
        "train.lr": {"min": 0.001, "max": 0.01, "distribution": "log_uniform_values"},
    }
    first = make_params(
        {"method": "random", "run_cap": 2, "early_terminate": None, "parameters": space}
    )
    run_sweep_in(tmp_path, first, split_dir)
    assert len(count_trainings) == 2
    before = {t.number: t for t in load_study(tmp_path, first, split_dir).trials}

    more = make_params(
        {"method": "random", "run_cap": 4, "early_terminate": None, "parameters": space}
    )
    assert study_name(more, split_dir) == study_name(first, split_dir)  # run_cap is not identity
    summary = run_sweep_in(tmp_path, more, split_dir)
    assert len(count_trainings) == 4  # two new trainings, the first two were kept
    after = {t.number: t for t in load_study(tmp_path, more, split_dir).trials}
    assert sorted(after) == [0, 1, 2, 3]
    for number, trial in before.items():
        assert after[number].datetime_start == trial.datetime_start
        assert after[number].params == trial.params
    assert len(summary.records) == 4
    rows = read_csv(tmp_path / "results" / "sweep" / "leaderboard.csv")
    assert sorted(int(r["trial"]) for r in rows) == [0, 1, 2, 3]

    changed = make_params(
        {"method": "random", "run_cap": 4, "early_terminate": None, "parameters": space},
        train={"batch_size": 16},
    )
    assert study_name(changed, split_dir) != study_name(first, split_dir)


KILLER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from naturalist.errors import run_stage
    from naturalist.params import parse_params
    from naturalist.sweep import interrupt_on_sigterm, run_sweep

    params = parse_params(json.loads(sys.argv[1]))

    def main():
        with interrupt_on_sigterm():
            run_sweep(params, split_dir=Path(sys.argv[2]), results_dir=Path("results/sweep"),
                      model_path=Path("models/sweep_best.pt"), sweep_dir=Path(".sweep"),
                      progress=False)

    run_stage(main)
    """
)


RESUMABLE = {
    "method": "random",
    "run_cap": 3,
    "early_terminate": None,
    "parameters": {"model.activation": {"values": ["ReLU", "GELU", "SiLU", "Mish"]}},
}


def check_resumed(tmp_path: Path, params: Params, split_dir: Path, stopped: list) -> None:
    """After the re-run: trial 0 kept, trial 1 interrupted and retried, run_cap reached."""
    trials = load_study(tmp_path, params, split_dir).trials
    assert trials[0].datetime_start == stopped[0].datetime_start  # kept, not re-run
    states = [sweep_module.trial_state(t) for t in trials]
    assert states == ["complete", "interrupted", "complete", "complete"]
    retry = trials[2]
    assert retry.user_attrs["retry_of"] == 1 and retry.params == stopped[1].params
    rows = read_csv(tmp_path / "results" / "sweep" / "leaderboard.csv")
    assert [r["state"] for r in rows] == ["complete"] * 3 + ["interrupted"]
    assert rows[-1]["trial"] == "1" and int(rows[-1]["epochs"]) >= 1
    metrics = json.loads((tmp_path / "results" / "sweep" / "metrics.json").read_text())
    assert (metrics["trials_complete"], metrics["trials_interrupted"]) == (3, 1)


def test_a_killed_sweep_resumes_and_keeps_its_finished_trials(
    tmp_path: Path, split_dir: Path, count_trainings: list[dict[str, Any]]
):
    """kill -9 in the middle of trial 1, as a lost machine or an OOM killer would."""
    params = make_params(RESUMABLE, epochs=5)  # 4 epochs of margin between seeing and killing
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-c", KILLER, json.dumps(params.model_dump(mode="json")), str(split_dir)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    db = tmp_path / ".sweep" / "optuna.db"
    name, storage = study_name(params, split_dir), None
    deadline = time.monotonic() + 300  # generous: a busy 2-core machine starts torch slowly
    try:
        while True:  # stop it once trial 0 is finished and trial 1 has trained an epoch
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the sweep never reached its second trial"
            trials = []
            with contextlib.suppress(Exception):  # the study is still being created
                storage = storage or (
                    optuna.storages.RDBStorage(f"sqlite:///{db}") if db.is_file() else None
                )
                trials = optuna.load_study(study_name=name, storage=storage).trials
            if len(trials) == 2 and trials[1].intermediate_values:
                break
            time.sleep(0.1)
        process.kill()
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    stopped = load_study(tmp_path, params, split_dir).trials
    assert [t.state.name for t in stopped] == ["COMPLETE", "RUNNING"]  # as kill -9 leaves it

    run_sweep_in(tmp_path, params, split_dir)  # the re-run, in this process
    check_resumed(tmp_path, params, split_dir, stopped)
    # it trained the interrupted trial's params again, then the one trial still missing
    assert len(count_trainings) == 2
    assert count_trainings[0]["model.activation"] == stopped[1].params["model.activation"]


def test_an_interrupted_trial_is_retried_on_the_next_run(
    tmp_path: Path, split_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    """Ctrl-C (or SIGTERM, see below) in trial 1: the trial is recorded as interrupted."""
    params = make_params(RESUMABLE, epochs=2)
    real = sweep_module.train_scratch
    calls = []

    def interrupt_second(params: Params, splits: Any, **kwargs: Any) -> Any:
        calls.append(params.model.activation)
        if len(calls) == 2:
            report = kwargs["on_epoch"]

            def stop(metrics: Any) -> None:
                report(metrics)
                raise KeyboardInterrupt

            kwargs["on_epoch"] = stop
        return real(params, splits, **kwargs)

    monkeypatch.setattr(sweep_module, "train_scratch", interrupt_second)
    with pytest.raises(KeyboardInterrupt):
        run_sweep_in(tmp_path, params, split_dir)
    stopped = load_study(tmp_path, params, split_dir).trials
    assert [t.state.name for t in stopped] == ["COMPLETE", "FAIL"]
    assert stopped[1].user_attrs == {"interrupted": True}
    run_sweep_in(tmp_path, params, split_dir)
    check_resumed(tmp_path, params, split_dir, stopped)
    assert calls[2:] == [stopped[1].params["model.activation"], calls[3]] and len(calls) == 4


def test_sigterm_interrupts_like_ctrl_c():
    with pytest.raises(KeyboardInterrupt), sweep_module.interrupt_on_sigterm():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def write_brightness_split(folder: Path, per_class: tuple[int, int] = (16, 4)) -> Path:
    """A split folder in the split stage's format whose 10 classes differ in brightness: a
    CNN learns it within two epochs, while the drawn shapes need many more."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, count in zip(("train", "val", "test"), (*per_class, 1), strict=True):
        labels = np.repeat(np.arange(10), count)
        level = (labels * 25 + 10).astype(np.float64)[:, None, None, None]
        noise = rng.normal(0, 6, (len(labels), 32, 32, 3))
        np.save(folder / f"{name}_images.npy", np.clip(level + noise, 0, 255).astype(np.uint8))
        np.save(folder / f"{name}_labels.npy", labels.astype(np.int64))
    (folder / "manifest.json").write_text(
        json.dumps({"classes": [f"level_{k}" for k in range(10)]})
    )
    return folder


def test_hyperband_prunes_trials_behind_at_a_rung(tmp_path: Path):
    """One bracket (3 epochs, min_iter 2, eta 2: the only cut is at epoch 2). A trial that
    learns goes first; trials that cannot learn (a vanishing lr) are cut at epoch 2."""
    split_dir = write_brightness_split(tmp_path / "split")
    lrs = [0.003, 1e-9, 2e-9, 3e-9]
    params = make_params(
        {
            "method": "random",
            "run_cap": 4,
            "early_terminate": {"type": "hyperband", "min_iter": 2, "eta": 2},
            "parameters": {"train.lr": {"values": lrs}},
        },
        epochs=3,
        train={"batch_size": 8},
    )
    (tmp_path / ".sweep").mkdir()
    study = optuna.create_study(
        study_name=study_name(params, split_dir),
        storage=default_storage(tmp_path / ".sweep"),
        direction="maximize",
    )
    for lr in lrs:  # the order the trials run in
        study.enqueue_trial({"train.lr": lr})
    summary = run_sweep_in(tmp_path, params, split_dir)
    learner = next(r for r in summary.records if r.params["train.lr"] == 0.003)
    assert learner.state == "complete" and learner.epochs == 3
    pruned = [r for r in summary.records if r.state == "pruned"]
    # trials 1 and 2 trail the learner at the cut; trial 3 ties the others (ties go on)
    assert [r.number for r in pruned] == [1, 2], [(r.params, r.val_acc) for r in summary.records]
    assert all(r.epochs == 2 and r.best_val_acc < learner.val_acc[1] for r in pruned)
    rows = read_csv(tmp_path / "results" / "sweep" / "leaderboard.csv")
    assert [r["state"] for r in rows] == ["complete", "complete", "pruned", "pruned"]
    assert all(r["val_acc_epoch_3"] == "" for r in rows if r["state"] == "pruned")
    metrics = json.loads((tmp_path / "results" / "sweep" / "metrics.json").read_text())
    assert (metrics["trials_complete"], metrics["trials_pruned"]) == (2, 2)
    assert metrics["epochs_trained"] == 3 + 2 + 2 + 3


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="needs a machine without MPS")
def test_a_crashing_trial_is_failed_and_the_sweep_goes_on(
    tmp_path: Path, split_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    """Two real failures: a device that is not there (before training) and an out-of-memory
    error raised by the training loop after its first epoch."""
    real = sweep_module.train_scratch

    def out_of_memory_in_gelu(params: Params, splits: Any, **kwargs: Any) -> Any:
        if params.model.activation == "GELU":
            report = kwargs["on_epoch"]

            def crash(metrics: Any) -> None:
                report(metrics)
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

            kwargs["on_epoch"] = crash
        return real(params, splits, **kwargs)

    monkeypatch.setattr(sweep_module, "train_scratch", out_of_memory_in_gelu)
    params = make_params(
        {
            "method": "grid",
            "run_cap": None,
            "early_terminate": None,
            "parameters": {
                "train.device": {"values": ["cpu", "mps"]},
                "model.activation": {"values": ["ReLU", "GELU"]},
            },
        }
    )
    summary = run_sweep_in(tmp_path, params, split_dir)
    rows = read_csv(tmp_path / "results" / "sweep" / "leaderboard.csv")
    assert [r["state"] for r in rows] == ["complete", "failed", "failed", "failed"]
    assert rows[0]["train.device"] == "cpu" and rows[0]["model.activation"] == "ReLU"
    errors = {(r["train.device"], r["model.activation"]): r["error"] for r in rows[1:]}
    assert "mps" in errors[("mps", "ReLU")] and errors[("mps", "ReLU")].startswith("PipelineError")
    assert errors[("cpu", "GELU")] == "OutOfMemoryError: CUDA out of memory (simulated)"
    oom = next(r for r in rows if r["train.device"] == "cpu" and r["model.activation"] == "GELU")
    assert oom["epochs"] == "1" and oom["val_acc_epoch_1"] != ""
    assert summary.best.params == {"train.device": "cpu", "model.activation": "ReLU"}
    metrics = json.loads((tmp_path / "results" / "sweep" / "metrics.json").read_text())
    assert (metrics["trials_complete"], metrics["trials_failed"]) == (1, 3)
    assert (tmp_path / "models" / "sweep_best.pt").is_file()


def test_a_sweep_without_a_complete_trial_stops_with_the_first_error(
    tmp_path: Path, split_dir: Path
):
    params = make_params(
        {
            "method": "grid",
            "run_cap": None,
            "early_terminate": None,
            "parameters": {"train.device": {"values": ["mps"]}},
        }
    )
    if torch.backends.mps.is_available():
        pytest.skip("needs a machine without MPS")
    with pytest.raises(PipelineError, match=r"none of 1 trials completed \(first error: "):
        run_sweep_in(tmp_path, params, split_dir)
    rows = read_csv(tmp_path / "results" / "sweep" / "leaderboard.csv")
    assert [r["state"] for r in rows] == ["failed"]
    assert not (tmp_path / "models" / "sweep_best.pt").exists()


# --------------------------------------------------------------------------------------------
# The W&B engine: no login and no server here, so only what runs without them


def test_wandb_engine_needs_a_login(
    tmp_path: Path, split_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    netrc = tmp_path / "netrc"
    netrc.write_text("")
    monkeypatch.setenv("NETRC", str(netrc))
    params = make_params({"engine": "wandb"}, wandb={"mode": "online"})
    with pytest.raises(PipelineError, match=r"sweep.engine: wandb needs a W&B login"):
        run_sweep_in(tmp_path, params, split_dir)


def test_wandb_trial_function_runs_an_agent_style_run_offline(
    tmp_path: Path, split_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    """What wandb.agent does per run, minus the server: it writes the sweep's values to a
    config file named by WANDB_SWEEP_PARAM_PATH, and the trial function's wandb.init reads it."""
    from wandb.sdk.lib import config_util

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    param_file = tmp_path / "sweep-params.yaml"
    config_util.save_config_file_from_dict(
        str(param_file),
        {"model.activation": {"value": "GELU"}, "model.kernel_sizes": {"value": [5, 5, 3, 3, 3]}},
    )
    monkeypatch.setenv("WANDB_SWEEP_PARAM_PATH", str(param_file))
    params = make_params(
        {
            "parameters": {
                "model.activation": {"values": ["ReLU", "GELU"]},
                "model.kernel_sizes": {"values": [[3, 3, 3, 3, 3], [5, 5, 3, 3, 3]]},
            }
        },
        wandb={"mode": "online"},
    )
    context = SweepContext.create(params, split_dir, sweep_dir=tmp_path / ".sweep", progress=False)
    wandb_trial(context, tmp_path / "records")
    record = json.loads((tmp_path / "records" / "trial_000.json").read_text())
    assert record["state"] == "complete", record
    assert record["params"] == {"model.activation": "GELU", "model.kernel_sizes": [5, 5, 3, 3, 3]}
    assert len(record["val_acc"]) == 2
    _, meta = load_checkpoint(context.checkpoint(0))
    assert meta["val_acc"] == pytest.approx(max(record["val_acc"]))


def test_records_skip_unfinished_trials(tmp_path: Path, split_dir: Path):
    params = make_params({"method": "random", "parameters": {"train.lr": {"values": [0.01]}}})
    study = optuna.create_study(storage=default_storage(tmp_path), direction="maximize")
    study.enqueue_trial({"train.lr": 0.01})
    assert records_from_study(study, params.sweep) == []


def test_plots_and_importances_of_a_mostly_pruned_sweep(tmp_path: Path):
    """Under hyperband most trials stop at the first cut: importances then compare every trial
    at that epoch instead of waiting for 5 complete ones."""
    from naturalist.sweep_plots import importances, write_plots
    from naturalist.sweep_report import TrialRecord

    params = make_params(
        {
            "early_terminate": {"type": "hyperband", "min_iter": 2, "eta": 3},
            "parameters": {
                "model.activation": {"values": ["ReLU", "GELU"]},
                "train.lr": {"min": 0.0001, "max": 0.01, "distribution": "log_uniform_values"},
            },
        },
        epochs=4,
    )
    records = [
        TrialRecord(
            0, "complete", {"model.activation": "GELU", "train.lr": 0.003}, [0.2, 0.5, 0.6, 0.7]
        )
    ]
    for n in range(1, 7):
        activation = "GELU" if n % 2 else "ReLU"
        curve = [0.1, 0.3 if activation == "GELU" else 0.1]
        records.append(
            TrialRecord(n, "pruned", {"model.activation": activation, "train.lr": 0.001 * n}, curve)
        )
    records.append(
        TrialRecord(7, "failed", {"model.activation": "ReLU", "train.lr": 0.001}, [0.1], error="E")
    )
    result, what = importances(records, params.sweep)
    assert what == "best val acc by epoch 2 (the first cut) of 7 trials"
    assert set(result) == {"model.activation", "train.lr"}
    assert result["model.activation"] > result["train.lr"]  # activation alone decides here
    few, what = importances(records[:3], params.sweep)
    assert few.startswith("importances need at least 5 trials") and "3 trials" in what
    write_plots(records, params.sweep, tmp_path, epochs=4)
    for name in ("parallel_coordinates", "param_importances", "val_acc_curves"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
