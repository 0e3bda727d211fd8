"""Fixtures shared by the test suite (helpers themselves live in tests/helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from helpers import FileServer, running_server


@pytest.fixture
def http_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FileServer]:
    """A real HTTP server on 127.0.0.1; ``http_server.serve(path)`` returns the file's URL."""
    # A proxy configured in the environment must not intercept requests to the local server.
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    yield from running_server()
