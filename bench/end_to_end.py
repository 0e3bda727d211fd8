"""Wall time of the whole default pipeline in a fresh clone, per stage, and of a no-op repro.

    python bench/end_to_end.py [--keep /tmp/naturalist-e2e]

Clones this repository (its committed state), runs `make install` (warm pip cache), then every
stage of `dvc repro` one at a time in pipeline order, then `dvc repro` again with nothing changed.
Targets: the pipeline within 5 minutes, the no-op within 2 seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    return time.perf_counter() - started


def stage_order(clone: Path, env: dict[str, str]) -> list[str]:
    """Stage names in dvc.yaml order, which is the pipeline order (foreach stages expanded)."""
    done = subprocess.run(
        [str(clone / ".venv/bin/dvc"), "stage", "list", "--names-only"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.split()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="clone here and keep it (default: a temp dir)")
    args = parser.parse_args()
    clone = args.keep or Path(tempfile.mkdtemp(prefix="naturalist-e2e-"))
    shutil.rmtree(clone, ignore_errors=True)
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    env = {**os.environ, "PATH": f"{clone / '.venv/bin'}{os.pathsep}{os.environ['PATH']}"}

    rows = [("make install (warm pip cache)", timed(["make", "install"], clone, env))]
    for stage in stage_order(clone, env):
        rows.append(
            (
                stage,
                timed([str(clone / ".venv/bin/dvc"), "repro", "--single-item", stage], clone, env),
            )
        )
    pipeline = sum(seconds for _, seconds in rows[1:])
    noop = min(timed([str(clone / ".venv/bin/dvc"), "repro"], clone, env) for _ in range(3))

    width = max(len(name) for name, _ in rows)
    for name, seconds in rows:
        print(f"{name:<{width}}  {seconds:7.1f} s")
    print(
        f"{'pipeline (all stages)':<{width}}  {pipeline:7.1f} s   target 300 s: "
        f"{pipeline / 300:.2f} of budget"
    )
    print(f"{'no-op dvc repro':<{width}}  {noop:7.2f} s   target 2 s: {noop / 2:.2f} of budget")
    print(json.dumps({"stages": dict(rows), "pipeline_s": pipeline, "noop_s": noop}))
    if not args.keep:
        shutil.rmtree(clone, ignore_errors=True)


if __name__ == "__main__":
    main()
