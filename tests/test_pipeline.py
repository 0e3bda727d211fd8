"""The real pipeline with real DVC in a temporary git copy of this repository."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pipeline_repo import TINY_PARAMS, PipelineRepo

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> PipelineRepo:
    return PipelineRepo(tmp_path_factory.mktemp("pipeline"), TINY_PARAMS)


def stages_run(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def test_repro_builds_the_data_stages_then_is_a_no_op(repo: PipelineRepo) -> None:
    first = repo.dvc("repro", "split")
    assert stages_run(first.stdout) == ["download", "split"]
    manifest = json.loads((repo.root / "data/split/manifest.json").read_text())
    assert manifest["totals"] == {"train": 100, "val": 20, "test": 40}
    images = np.load(repo.root / "data/split/train_images.npy", mmap_mode="r")
    assert images.shape == (100, 32, 32, 3)
    again = repo.dvc("repro", "split")
    assert stages_run(again.stdout) == []
    assert "didn't change" in again.stdout or "up to date" in again.stdout


def test_an_activation_experiment_reruns_only_training(repo: PipelineRepo) -> None:
    repo.dvc("repro", "train_scratch")
    repo.git("add", "-A")
    repo.git("commit", "-qm", "baseline run")
    manifest_before = (repo.root / "data/split/manifest.json").stat().st_mtime_ns

    exp = repo.dvc("exp", "run", "-n", "gelu", "-S", "model.activation=GELU", "train_scratch")
    assert stages_run(exp.stdout) == ["train_scratch"]
    assert (repo.root / "data/split/manifest.json").stat().st_mtime_ns == manifest_before

    rows = repo.exp_show()
    found = {}
    for commit in rows:
        for exp_run in [
            commit,
            *[e for exp in commit.get("experiments") or [] for e in exp.get("revs", [])],
        ]:
            data = exp_run.get("data") or {}
            params = data.get("params", {}).get("params.yaml", {}).get("data", {})
            metrics = data.get("metrics", {}).get("results/train_scratch/metrics.json", {})
            if params and metrics:
                found[params["model"]["activation"]] = metrics["data"]["best/val_acc"]
    assert set(found) == {"ReLU", "GELU"}
    assert all(0.0 <= acc <= 1.0 for acc in found.values())


def test_a_bad_param_stops_the_stage_with_one_line(repo: PipelineRepo) -> None:
    done = repo.dvc("exp", "run", "-S", "model.activation=Swish", "train_scratch", check=False)
    assert done.returncode != 0
    assert (
        "error: params.yaml: model.activation: 'Swish' is not one of ReLU, GELU, SiLU, Mish"
        in done.stderr + done.stdout
    )
    # DVC removes a stage's outputs before running it; git and the DVC cache still hold the last
    # good ones, so the usual two commands bring them back
    repo.git("checkout", "--", ".")
    repo.dvc("checkout", "train_scratch")
    assert (repo.root / "models/scratch.pt").is_file()
    assert "Swish" not in (repo.root / "params.yaml").read_text()
    assert stages_run(repo.dvc("repro", "train_scratch").stdout) == []
