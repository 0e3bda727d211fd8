"""Fixtures shared by the test suite (helpers themselves live in tests/helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import FileServer, make_synthetic_split, running_server

from naturalist import synthetic


@pytest.fixture
def http_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FileServer]:
    """A real HTTP server on 127.0.0.1; ``http_server.serve(path)`` returns the file's URL."""
    # A proxy configured in the environment must not intercept requests to the local server.
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    yield from running_server()


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset in the nature_12K layout (20 train and 6 test images per class)."""
    root = tmp_path_factory.mktemp("raw")
    synthetic.generate(root, seed=7, train_per_class=20, test_per_class=6, min_side=48, max_side=96)
    return root


@pytest.fixture(scope="session")
def small_split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Split arrays at 32 px of a synthetic set large enough to learn from (60 per class)."""
    return make_synthetic_split(
        tmp_path_factory.mktemp("learnable"),
        seed=3,
        train_per_class=60,
        test_per_class=10,
        min_side=48,
        max_side=96,
    )


@pytest.fixture(scope="session")
def split_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Sweep-sized split: 30 train images per class (24 train + 6 val) at 32 px."""
    return make_synthetic_split(
        tmp_path_factory.mktemp("sweepdata"),
        seed=0,
        train_per_class=30,
        test_per_class=1,
        min_side=32,
        max_side=48,
    )
