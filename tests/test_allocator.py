"""keep_freed_memory: a freed large block stays in the process (glibc), for reuse."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Allocates and frees 256 MiB (bytearray zero-fills it, so the pages are touched) and prints how
# much of it the process still holds afterwards, in MiB.
HELD_AFTER_FREE = """
import os, sys
from naturalist.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
elif sys.argv[1] == "opted-out":
    assert not keep_freed_memory()
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
before = rss()
block = bytearray(256 * 2**20)
del block
print((rss() - before) // 2**20)
"""


def held_after_free(mode: str, env: dict[str, str] | None = None) -> int:
    done = subprocess.run(
        [sys.executable, "-c", HELD_AFTER_FREE, mode],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **(env or {})},
    )
    return int(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_freed_block_is_kept_only_after_keep_freed_memory() -> None:
    assert held_after_free("glibc") < 16  # glibc unmaps a block this large on free
    assert held_after_free("keep") >= 250  # kept in the heap for the next allocation


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_environment_variable_opts_out() -> None:
    assert held_after_free("opted-out", {"NATURALIST_KEEP_FREED_MEMORY": "0"}) < 16
