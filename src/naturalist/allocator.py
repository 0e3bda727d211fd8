"""Keep freed memory in the process, so that a training step reuses its buffers.

glibc's malloc hands every block above its mmap threshold (32 MiB at most) to the kernel on free
and maps fresh, zero-filled pages on the next allocation. A CNN's first-block activations are that
large (64 images x 32 channels x 64 x 64 floats is 32 MiB), so each step pays page faults for
every big activation and gradient: on the 2-core CPU here, over a third of the default model's step
(bench/training_step.py measures it). Serving every block from malloc's heap and never trimming it
makes the second step reuse the first step's pages. This is what jemalloc or tcmalloc preloaded
would do, without a preload. The price is memory: the process keeps its peak heap, holes
included, until it exits (training at 224 px: 5.4 GiB against 3.6 GiB, bench/peak_memory.py).
Set NATURALIST_KEEP_FREED_MEMORY=0 to keep glibc's defaults; the results are the same either way.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

OPT_OUT = "NATURALIST_KEEP_FREED_MEMORY"  # "0" = leave glibc's settings alone
# mallopt parameters, from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


@functools.cache
def keep_freed_memory() -> bool:
    """Serve large blocks from the heap and never give it back (glibc only); True if applied.

    Process-wide and done once; elsewhere (macOS, Windows, musl) it does nothing.
    """
    if not sys.platform.startswith("linux") or os.environ.get(OPT_OUT) == "0":
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
