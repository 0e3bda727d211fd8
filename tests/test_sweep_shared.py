"""Sweeps across machines: workers sharing one Optuna study in a real PostgreSQL server started
on 127.0.0.1 (tests/postgres_server.py), real worker processes (`python -m naturalist.sweep
worker`), the real training loop on a tiny generated dataset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
import yaml
from helpers import run_sweep_in
from postgres_server import PASSWORD, find_bin_dir, running_postgres

from naturalist.errors import PipelineError
from naturalist.params import STORAGE_ENV, Params, ParamsError, parse_params
from naturalist.sweep import (
    default_storage,
    masked,
    open_study,
    resolve_storage,
    run_worker,
    storage_url,
    study_name,
    trial_state,
)

TINY_MODEL = {"filters": [4, 4, 4, 4, 4], "dense_units": 8}
GRID = {
    "method": "grid",
    "run_cap": None,
    "parameters": {
        "model.activation": {"values": ["ReLU", "GELU", "SiLU", "Mish"]},
        "model.dropout": {"values": [0.2, 0.3]},
    },
}


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL server; yields its URL without the password (PGPASSWORD has it)."""
    if find_bin_dir() is None:
        pytest.skip("PostgreSQL is not installed (.ci/run installs Debian's postgresql package)")
    with running_postgres() as url:
        yield url.replace(f":{PASSWORD}@", "@")


def make_params(sweep: dict[str, Any], *, storage: str | None, epochs: int, seed: int) -> Params:
    return parse_params(
        {
            "seed": seed,  # one study per test: the seed is part of the study's name
            "wandb": {"mode": "disabled"},
            "model": dict(TINY_MODEL),
            "train": {"epochs": epochs, "batch_size": 32},
            "sweep": {
                "early_terminate": None,
                "storage": storage,
                "heartbeat_interval": 1,
                "grace_period": 3,
                **sweep,
            },
        }
    )


def start_worker(folder: Path, params: Params, split_dir: Path) -> subprocess.Popen[str]:
    """A worker process in its own folder (its own .sweep/, as on another machine)."""
    folder.mkdir(parents=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json")))
    env = {**os.environ, "PGPASSWORD": PASSWORD, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop(STORAGE_ENV, None)
    command = [sys.executable, "-m", "naturalist.sweep", "worker", "--no-progress"]
    return subprocess.Popen(
        [*command, "--split-dir", str(split_dir), "--wait", "120"],
        cwd=folder,
        env=env,
        stdout=(folder / "worker.log").open("w"),
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for_line(folder: Path, text: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 180  # torch imports slowly on a busy machine
    log = folder / "worker.log"
    while text not in log.read_text():
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)


def stop(processes: list[subprocess.Popen[str]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


# --------------------------------------------------------------------------------------------
# Storage URLs and credentials (no server needed)


@pytest.mark.parametrize(
    ("url", "opened"),
    [
        ("postgresql://sweeper@db:5432/sweeps", "postgresql+psycopg://sweeper@db:5432/sweeps"),
        ("postgres://sweeper@db/sweeps", "postgresql+psycopg://sweeper@db/sweeps"),
        ("postgresql+psycopg2://sweeper@db/sweeps", "postgresql+psycopg2://sweeper@db/sweeps"),
        ("sqlite:///.sweep/optuna.db", "sqlite:///.sweep/optuna.db"),
    ],
)
def test_storage_urls_translate_to_the_installed_driver(url: str, opened: str):
    assert storage_url(url) == opened


def test_printed_urls_mask_the_password():
    assert masked("postgresql://sweeper:hunter2@db:5432/sweeps") == (
        "postgresql://sweeper:***@db:5432/sweeps"
    )
    assert masked("postgresql://sweeper@db/sweeps") == "postgresql://sweeper@db/sweeps"


def test_a_password_in_params_yaml_is_rejected_in_one_line():
    with pytest.raises(ParamsError) as caught:
        parse_params({"sweep": {"storage": "postgresql://sweeper:hunter2@db:5432/sweeps"}})
    message = str(caught.value)
    assert "hunter2" not in message and "\n" not in message
    assert "sweep.storage: 'postgresql://sweeper:***@db:5432/sweeps' holds a password" in message
    assert "PGPASSWORD" in message and STORAGE_ENV in message


def test_grace_period_must_outlast_the_heartbeat():
    with pytest.raises(ParamsError, match=r"sweep\.grace_period: 5 must be longer than"):
        parse_params({"sweep": {"heartbeat_interval": 5, "grace_period": 5}})


def test_storage_comes_from_the_command_line_then_the_environment_then_params(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv(STORAGE_ENV, raising=False)
    params = parse_params({"sweep": {"storage": "postgresql://from-params@db/s"}})
    assert resolve_storage(parse_params({}), tmp_path) == default_storage(tmp_path)
    assert resolve_storage(params, tmp_path) == "postgresql://from-params@db/s"
    monkeypatch.setenv(STORAGE_ENV, "postgresql://env:pw@db/s")  # the environment may hold one
    assert resolve_storage(params, tmp_path) == "postgresql://env:pw@db/s"
    assert resolve_storage(params, tmp_path, "postgresql://cli@db/s") == "postgresql://cli@db/s"
    monkeypatch.setenv(STORAGE_ENV, "db.example.org")
    with pytest.raises(PipelineError, match=f"{STORAGE_ENV}: 'db.example.org' is not a storage"):
        resolve_storage(params, tmp_path)


def test_an_unreachable_server_is_reported_without_its_password(tmp_path: Path):
    url = "postgresql://sweeper:hunter2@127.0.0.1:1/sweeps"  # nothing listens on port 1
    with pytest.raises(PipelineError) as caught:
        open_study(parse_params({}), url, "sweep-x")
    assert "hunter2" not in str(caught.value)
    assert "postgresql://sweeper:***@127.0.0.1:1/sweeps" in str(caught.value)


def test_a_worker_needs_shared_storage(tmp_path: Path, split_dir: Path):
    with pytest.raises(PipelineError, match="is a file on this machine"):
        run_worker(parse_params({}), split_dir=split_dir, sweep_dir=tmp_path / ".sweep")


# --------------------------------------------------------------------------------------------
# Against a real PostgreSQL server


def test_two_workers_and_the_stage_share_a_grid_sweep(
    tmp_path: Path, split_dir: Path, postgres: str, monkeypatch: pytest.MonkeyPatch
):
    """8 grid points over 2 worker processes and the stage: each point run exactly once."""
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    monkeypatch.delenv(STORAGE_ENV, raising=False)
    params = make_params(GRID, storage=postgres, epochs=1, seed=1)
    workers = [start_worker(tmp_path / f"machine{i}", params, split_dir) for i in (1, 2)]
    try:
        for i, worker in enumerate(workers, 1):  # both are up and waiting for the study
            wait_for_line(tmp_path / f"machine{i}", "waiting for study", worker)
        summary = run_sweep_in(tmp_path / "main", params, split_dir)
        for worker in workers:
            assert worker.wait(timeout=120) == 0
    finally:
        stop(workers)
    logs = [(tmp_path / f"machine{i}" / "worker.log").read_text() for i in (1, 2)]
    assert all("PASSWORD" not in log and PASSWORD not in log for log in logs)

    study = optuna.load_study(
        study_name=study_name(params, split_dir), storage=storage_url(postgres)
    )
    trials = study.get_trials()
    assert [trial_state(t) for t in trials] == ["complete"] * 8  # none lost, none extra
    points = {(t.params["model.activation"], t.params["model.dropout"]) for t in trials}
    assert len(points) == 8  # the whole grid, no point twice
    ran_by = {t.user_attrs["worker"] for t in trials}
    assert len(ran_by) >= 2, ran_by  # trials were spread over processes

    rows = json.loads((tmp_path / "main" / "results" / "sweep" / "leaderboard.json").read_text())
    assert len(rows["trials"] if isinstance(rows, dict) else rows) == 8
    best = summary.best
    assert best.best_val_acc == max(t.value for t in trials)
    main_model = tmp_path / "main" / "models" / "sweep_best.pt"
    assert main_model.is_file()
    # The best trial's checkpoint came from this machine's run of it, or was retrained here from
    # its params: either way the same weights as the process that ran it (CPU, same seed)
    owner_checkpoints = [
        folder / ".sweep" / summary.study_name / f"trial_{best.number:03d}" / "model.pt"
        for folder in (tmp_path / "machine1", tmp_path / "machine2", tmp_path / "main")
    ]
    original = [path for path in owner_checkpoints if path.is_file()]
    assert original, "the best trial's checkpoint is nowhere"
    ours = torch.load(main_model, weights_only=True)["state_dict"]
    theirs = torch.load(original[0], weights_only=True)["state_dict"]
    assert all(torch.equal(ours[key], theirs[key]) for key in theirs)


def test_a_worker_killed_mid_trial_does_not_stall_the_sweep(
    tmp_path: Path,
    split_dir: Path,
    postgres: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    """kill -9 a worker in the middle of its trial: the heartbeat check fails the trial, one
    retry with the same values runs, and the stage still finishes run_cap trials."""
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    monkeypatch.delenv(STORAGE_ENV, raising=False)
    sweep = {
        "method": "random",
        "run_cap": 3,
        "parameters": {"model.activation": {"values": ["ReLU", "GELU", "SiLU", "Mish"]}},
    }
    params = make_params(sweep, storage=postgres, epochs=12, seed=2)
    name = study_name(params, split_dir)
    study = open_study(params, postgres, name)  # as the stage would create it
    victim = start_worker(tmp_path / "lost_machine", params, split_dir)
    try:
        deadline = time.monotonic() + 90
        while True:  # kill it once its trial has trained an epoch
            assert victim.poll() is None, (tmp_path / "lost_machine" / "worker.log").read_text()
            assert time.monotonic() < deadline, "the worker never started a trial"
            trials = study.get_trials()
            if trials and trials[0].intermediate_values:
                assert trials[0].state.name == "RUNNING"
                break
            time.sleep(0.05)
        victim.kill()
        victim.wait(timeout=30)
    finally:
        stop([victim])
    lost = study.get_trials()[0]

    started = time.monotonic()
    params = make_params(sweep, storage=postgres, epochs=12, seed=2)
    run_sweep_in(tmp_path / "main", params, split_dir)
    seconds = time.monotonic() - started
    assert "trial 0 lost its worker" in capsys.readouterr().out

    trials = study.get_trials()
    states = [trial_state(t) for t in trials]
    assert states.count("complete") == 3 and states.count("interrupted") == 1, states
    assert trial_state(trials[0]) == "interrupted"
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retries) == 1 and retries[0].params == lost.params
    assert retries[0].state.name == "COMPLETE"
    metrics = json.loads((tmp_path / "main" / "results" / "sweep" / "metrics.json").read_text())
    assert (metrics["trials_complete"], metrics["trials_interrupted"]) == (3, 1)
    print(f"stage finished in {seconds:.1f}s after the kill")
