"""Giving back to the operating system the memory that large requests used (glibc; elsewhere a no-op).

glibc keeps what a burst of large requests freed: a block of 30 MiB is below the 32 MiB up to
which glibc raises its mmap threshold each time a mapped block is freed (mallopt(3)), so later ones
land in the heaps of the worker threads' many arenas, where freed blocks stay resident, scattered
among smaller ones (gRPC's message slices). Measured on `lookalike serve`, the server process's
anonymous RSS idle before and after 30 concurrent checks of 30 MiB images (one run each, a shared
2-core machine): as it was 123-141 → 1004-1296 MiB; a fixed 1 MiB threshold alone 87 → 313;
`malloc_trim` once quiet alone 82 → 257; both 52 → 60 (1 MiB) and 51 → 52-85 (8 MiB). A trim after
that burst took 31 ms, after a single check 1.3 ms. A worker process kept ~90 MiB more after such
a burst; with the fixed threshold, ~15 MiB.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3
"""glibc's `mallopt` parameter number (malloc.h)."""
MMAP_THRESHOLD_BYTES = 8 * 1024 * 1024
"""Blocks this large (a large request's bytes) are mapped apart and unmapped when freed. Well above
the arrays a search gathers (2 MiB for 64 000 PDQ candidates), which keep reusing heap memory
instead of paying fresh pages each time."""
QUIET_SECONDS = 1.0
"""A trim follows calls once no call has come or gone for this long."""


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 - present in glibc alone
        return libc
    except (OSError, AttributeError):
        return None


def map_large_blocks_apart() -> None:
    """Fix glibc's mmap threshold (which also stops it rising), so a freed large block goes back at once."""
    libc = _glibc()
    if libc is not None and not libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES):
        log.warning("could not set the mmap threshold; memory freed by large requests may stay resident")


def trim_when_quiet(calls_seen: Callable[[], int], stop: threading.Event) -> None:
    """Until `stop`: once calls came or went and then none did for `QUIET_SECONDS`, hand the free
    pages of every arena back (`malloc_trim`), once. Calls still open (an idle stream) do not hold
    it off, and a steady flow of calls never pays for it: its memory is reused anyway."""
    libc = _glibc()
    if libc is None:
        return
    last = trimmed = calls_seen()
    while not stop.wait(QUIET_SECONDS):
        seen = calls_seen()
        if seen == last and seen != trimmed:
            started = time.perf_counter()
            libc.malloc_trim(0)
            log.debug("freed memory handed back in %.1f ms", (time.perf_counter() - started) * 1000)
            trimmed = seen
        last = seen
