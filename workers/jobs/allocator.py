"""glibc malloc settings for a long-lived worker process, so its memory levels off between jobs.

Why: glibc serves an allocation of at least ``M_MMAP_THRESHOLD`` (128 KiB at start) with its own
``mmap``, given back to the system when freed. But it raises that threshold each time such a block
is freed (up to 32 MiB on 64-bit) and the trim threshold with it. A worker frees big blocks all the
time (decoded frames, model activations, tensors of the tracker state), so after its first frame
nearly every tensor buffer comes from malloc's arenas instead (one per thread, up to 8 per core:
the decode, render and encoder threads of every chunk, and the streams of a threads pool). Freed,
they stay there: RSS grew by ~100 MiB a job while what malloc had in use stayed flat (measured: in
use 178 MiB after each quiet moment, held free 279 -> 423 MiB over three jobs, 3 blocks mmapped;
docs/performance.md, "Worker memory").

Setting the thresholds explicitly turns glibc's adjustment off: big buffers keep their own mmap and
go back to the system when freed. Elsewhere than glibc (macOS, musl) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

log = logging.getLogger(__name__)

# mallopt parameters (glibc <malloc.h>)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

# glibc's own starting values, kept for good: allocations this big or bigger get their own mmap, and
# free memory this big at the top of a heap is given back.
MMAP_THRESHOLD = 128 * 1024
TRIM_THRESHOLD = 128 * 1024


def _glibc() -> ctypes.CDLL | None:
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def pin_malloc_thresholds() -> bool:
    """Fix glibc's mmap and trim thresholds in this process and the processes it forks from now on
    (a prefork pool's children inherit them). Returns whether they were set. An operator's own
    setting (``MALLOC_MMAP_THRESHOLD_``, ``GLIBC_TUNABLES``) is left as it is."""
    libc = _glibc()
    if libc is None or "MALLOC_MMAP_THRESHOLD_" in os.environ or "mmap_threshold" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    done = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not done:
        log.warning("could not fix glibc's malloc thresholds: worker memory may grow from job to job")
    return done
