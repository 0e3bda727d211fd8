"""evaluate_test, the report and the offline plots page, after a real small pipeline run.

One temporary git + DVC copy of the repository runs the whole pipeline on tiny params; the tests
then read what a user would: `dvc dag`, `dvc exp show`, report.md and its images, dvc_plots/.
"""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path

import pytest
from PIL import Image
from pipeline_repo import TINY_PARAMS, PipelineRepo, deep_update

from naturalist.params import Params

pytestmark = pytest.mark.slow

# What TINY_PARAMS does not already make small: used only for sections it leaves out.
SMALL_SECTIONS = {
    "finetune": {"epochs": 1, "image_size": 32, "batch_size": 32},
    "sweep": {
        "method": "random",
        "run_cap": 2,
        "early_terminate": None,
        "parameters": {"model.activation": {"values": ["ReLU", "GELU"]}},
    },
    "evaluate": {"batch_size": 64},
}


def report_params() -> dict:
    params = copy.deepcopy(TINY_PARAMS)
    extra = {
        section: values
        for section, values in SMALL_SECTIONS.items()
        if section not in params and section in Params.model_fields
    }
    return deep_update(params, extra)


def stages_run(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def build_report(repo: PipelineRepo, *args: str) -> str:
    done = repo.run_process([sys.executable, "-m", "naturalist.reporting", *args])
    assert "report: wrote report.md" in done.stdout
    return (repo.root / "report.md").read_text()


def images_of(repo: PipelineRepo, report: str) -> dict[str, Path]:
    """Every image the report embeds, by file name; each must exist and be a PNG."""
    found = {}
    for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report):
        path = repo.root / target
        assert path.is_file(), f"report.md embeds a missing image: {target}"
        assert target.startswith("report_images/")
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert min(image.size) >= 200
        found[path.name] = path
    return found


def section(report: str, heading: str) -> str:
    """The text of one '## ' or '### ' section of the report."""
    start = report.index(heading)
    rest = report[start + len(heading) :]
    following = re.search(r"\n#{2,3} ", rest)
    return rest[: following.start()] if following else rest


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> PipelineRepo:
    repo = PipelineRepo(tmp_path_factory.mktemp("report"), report_params())
    repo.git("branch", "-M", "main")
    repo.dvc("repro")
    return repo


def model_names(repo: PipelineRepo) -> set[str]:
    return {path.stem for path in (repo.root / "models").glob("*.pt")}


def test_every_training_stage_feeds_evaluate_test(repo: PipelineRepo) -> None:
    stages = [line.split()[0] for line in repo.dvc("stage", "list").stdout.splitlines()]
    training = [s for s in stages if s == "train_scratch" or s.startswith(("sweep", "finetune"))]
    assert "train_scratch" in training
    mermaid = repo.dvc("dag", "--mermaid", "evaluate_test").stdout
    ids = dict(re.findall(r'(node\d+)\["([^"]+)"\]', mermaid))
    edges = {(ids[a], ids[b]) for a, b in re.findall(r"(node\d+)-->(node\d+)", mermaid)}
    for stage in training:
        assert (stage, "evaluate_test") in edges, f"{stage} does not feed evaluate_test"
    assert ("split", "evaluate_test") in edges


def test_exp_show_lists_test_metrics_for_every_model(repo: PipelineRepo) -> None:
    names = model_names(repo)
    assert "scratch" in names
    workspace = repo.exp_show()[0]
    metrics = workspace["data"]["metrics"]["results/evaluate/metrics.json"]["data"]
    assert set(metrics) == names
    for values in metrics.values():
        assert set(values) == {"test_acc", "macro_f1", "loss"}
        assert 0.0 <= values["test_acc"] <= 1.0
    table = repo.dvc("exp", "show", "--no-pager", "--md").stdout
    for name in names:
        assert f"{name}.test_acc" in table


def test_the_report_says_in_one_line_that_main_has_no_metrics_yet(repo: PipelineRepo) -> None:
    report = build_report(repo)
    assert report.startswith("# Experiment report: `main` @ ")
    assert "_`main` has no metrics yet: commit `dvc.lock` and the metrics files" in report
    assert "## Test metrics" in report
    images = images_of(repo, report)
    assert {"training_curves.png", "prediction_grid.png", "confusion_scratch.png"} <= set(images)


def test_the_report_diffs_params_and_metrics_against_main(repo: PipelineRepo) -> None:
    repo.git("add", "-A")
    repo.git("commit", "-qm", "baseline run")
    repo.git("checkout", "-qb", "gelu")
    repo.set_params({"model": {"activation": "GELU"}})
    ran = stages_run(repo.dvc("repro").stdout)
    assert "train_scratch" in ran and "evaluate_test" in ran
    assert "download" not in ran and "split" not in ran
    repo.git("add", "-A")
    repo.git("commit", "-qm", "GELU")

    report = build_report(repo)
    assert report.startswith("# Experiment report: `gelu` @ ")
    names = model_names(repo)

    params = section(report, "## Params that differ from `main`")
    assert "| Path        | Param            | main   | workspace   |" in params
    assert re.search(r"\| params\.yaml \| model\.activation \| ReLU +\| GELU +\|", params)

    table = section(report, "## Test metrics")
    for name in names:
        assert re.search(rf"\| (\*\*)?{name}(\*\* ★)? \| [\d.]+% \| [\d.]+% \| ", table), name
    assert table.count("★") == 2  # the best row, and the sentence that explains the star

    diff = section(report, "### Metrics that differ from `main`")
    assert "| Path" in diff and "| Metric" in diff and "| main" in diff and "| Change" in diff
    assert re.search(r"\| results/evaluate/metrics\.json +\| scratch\.loss +\| [\d.]+ ", diff)
    assert "has no metrics yet" not in report

    summary = report.splitlines()[2]
    details = json.loads((repo.root / "results/evaluate/details.json").read_text())
    best = details["best_model"]
    assert f"Best by validation accuracy: **{best}**" in summary
    assert "on `main` it scored" in summary or "the same test accuracy as on `main`" in summary

    images = images_of(repo, report)
    assert {"training_curves.png", "prediction_grid.png"} <= set(images)
    assert {f"confusion_{name}.png" for name in names} <= set(images)
    assert f"## Confusion matrix of {best}" in report
    assert f"## Test predictions of {best}" in report

    per_class = section(report, "## Per-class test accuracy")
    for class_name in details["classes"]:
        assert f"| {class_name} |" in per_class

    sweep = section(report, "## Sweep: top 10 trials")
    if (repo.root / "results/sweep/leaderboard.json").is_file():
        rows = [line for line in sweep.splitlines() if re.match(r"\| +\d+ \|", line)]
        assert 1 <= len(rows) <= 10
        assert "| rank | trial | state | val acc | epochs | time |" in sweep
        assert "](report_images/sweep_" in sweep  # its plots
    else:
        assert "No sweep leaderboard in this run" in sweep


def test_an_unknown_base_is_one_line_not_a_failure(repo: PipelineRepo) -> None:
    report = build_report(repo, "--base", "no-such-branch")
    assert "_No baseline: `no-such-branch` is not a revision of this repository._" in report
    assert "## Test metrics" in report


def test_the_report_needs_a_run_first(tmp_path: Path) -> None:
    from naturalist.errors import PipelineError
    from naturalist.reporting import build_report as build

    with pytest.raises(PipelineError, match=r"metrics\.json not found: run the pipeline first"):
        build(tmp_path)


def test_plots_page_loads_vega_from_disk_not_a_cdn(repo: PipelineRepo) -> None:
    done = repo.run_process([sys.executable, "-m", "naturalist.offline_plots", "show"])
    assert "dvc_plots/index.html" in done.stdout
    page = (repo.root / "dvc_plots/index.html").read_text()
    assert '<script src="vega-bundle.js"></script>' in page
    assert not re.search(r"<script[^>]+src=\"https?://", page)
    assert "confusion_scratch" in page and "train_scratch" in page
    bundle = (repo.root / "dvc_plots/vega-bundle.js").read_text()
    assert "window.vegaEmbed" in bundle and len(bundle) > 500_000
