"""A throwaway git + DVC copy of this repository, for tests that run the real pipeline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Small enough that a stage takes seconds on 2 cores, large enough to learn something.
TINY_PARAMS: dict[str, Any] = {
    "data": {
        "image_size": 32,
        "synthetic": {"train_per_class": 12, "test_per_class": 4, "min_side": 40, "max_side": 80},
    },
    "model": {"filters": [8, 8, 8, 8, 8], "dense_units": 16},
    "train": {"epochs": 2, "batch_size": 32},
    "wandb": {"mode": "disabled"},
}


def deep_update(base: dict, changes: dict) -> dict:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = value
    return base


class PipelineRepo:
    """The repository's tracked files copied into ``root``, committed in a fresh git repo."""

    def __init__(self, root: Path, params: dict[str, Any]) -> None:
        self.root = root
        files = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\0")
        for name in filter(None, files):
            source = REPO / name
            if source.is_file():
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, root / name)
        for generated in ("dvc.lock", "results", "models"):  # start from a clean slate
            target = root / generated
            shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(
                missing_ok=True
            )
        self.set_params(params)
        self.git("init", "-q")
        self.git("add", "-A")
        self.git("commit", "-qm", "baseline")

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "GIT_AUTHOR_NAME": "test",
            "GIT_AUTHOR_EMAIL": "test@example.com",
            "GIT_COMMITTER_NAME": "test",
            "GIT_COMMITTER_EMAIL": "test@example.com",
            "WANDB_MODE": "disabled",
            "DVC_NO_ANALYTICS": "1",
        }

    def set_params(self, changes: dict[str, Any]) -> None:
        path = self.root / "params.yaml"
        params = deep_update(yaml.safe_load(path.read_text()), json.loads(json.dumps(changes)))
        path.write_text(yaml.safe_dump(params, sort_keys=False))

    def git(self, *args: str) -> str:
        return self.run("git", *args)

    def dvc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run_process([str(BIN / "dvc"), *args], check=check)

    def run(self, *args: str) -> str:
        return self.run_process(list(args)).stdout

    def run_process(
        self, args: list[str], check: bool = True, timeout: float = 900
    ) -> subprocess.CompletedProcess:
        done = subprocess.run(
            args, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
            )
        return done

    def exp_show(self) -> list[dict[str, Any]]:
        return json.loads(self.dvc("exp", "show", "--json").stdout)
