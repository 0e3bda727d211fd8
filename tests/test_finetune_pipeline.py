"""finetune@N with real DVC in a temporary git copy of this repository (slow: runs the stages)."""

from __future__ import annotations

import copy
import json
import socket
from pathlib import Path

import pytest
import torch
from pipeline_repo import TINY_PARAMS, PipelineRepo, deep_update

pytestmark = pytest.mark.slow

LEVELS = [70, 80, 90]
PARAMS = deep_update(
    copy.deepcopy(TINY_PARAMS),
    {"finetune": {"freeze": LEVELS, "image_size": 32, "epochs": 1, "batch_size": 32}},
)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> PipelineRepo:
    return PipelineRepo(tmp_path_factory.mktemp("finetune_pipeline"), PARAMS)


def stages_run(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def finetune_metrics(repo: PipelineRepo, level: int) -> dict:
    workspace = repo.exp_show()[0]["data"]["metrics"]
    return workspace[f"results/finetune/{level}/metrics.json"]["data"]


def test_repro_runs_one_stage_per_level_and_exp_show_lists_them(repo: PipelineRepo) -> None:
    ran = stages_run(repo.dvc("repro", "finetune").stdout)
    assert ran == ["download", "split"] + [f"finetune@{n}" for n in LEVELS]
    trainable = set()
    for level in LEVELS:
        metrics = finetune_metrics(repo, level)
        assert 0.0 <= metrics["best/val_acc"] <= 1.0
        assert metrics["params_total"] == 3_383_818 and metrics["freeze"] == level
        trainable.add(metrics["params_trainable"])
        assert (repo.root / "models" / f"finetune_{level}.pt").is_file()
    assert len(trainable) == 3
    assert stages_run(repo.dvc("repro", "finetune").stdout) == []


def test_adding_a_level_adds_a_stage_and_reruns_no_other(repo: PipelineRepo) -> None:
    repo.git("add", "-A")
    repo.git("commit", "-qm", "three levels")
    repo.set_params({"finetune": {"freeze": [*LEVELS, 95]}})
    assert stages_run(repo.dvc("repro", "finetune").stdout) == ["finetune@95"]
    # (dvc exp show lists it once its metrics.json is added to the top of dvc.yaml, see README)
    summary = json.loads((repo.root / "results/finetune/95/metrics.json").read_text())
    assert summary["layers_frozen"] == 47  # round(0.95 * 49)


def test_resnet50_needs_its_weight_file_and_runs_once_it_is_in_place(
    repo: PipelineRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with socket.socket() as probe:  # downloads go to a closed local port: refused at once
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, dead)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    repo.set_params({"finetune": {"backbone": "resnet50"}})

    failed = repo.dvc("repro", "finetune@90", check=False)
    assert failed.returncode != 0
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1
    assert "resnet50-11ad3fa6.pth" in errors[0] and str(checkpoints) in errors[0]
    assert "https://download.pytorch.org/models/resnet50-11ad3fa6.pth" in errors[0]

    from torchvision.models import resnet50

    checkpoints.mkdir(parents=True, exist_ok=True)
    torch.save(resnet50().state_dict(), checkpoints / "resnet50-11ad3fa6.pth")
    assert stages_run(repo.dvc("repro", "finetune@90").stdout) == ["finetune@90"]
    metrics = finetune_metrics(repo, 90)
    assert (metrics["params_total"], metrics["layers_frozen"]) == (23_528_522, 48)
