"""Memory a burst leaves behind goes back to the system once the burst is over.

Measured in the bench: after 500 streams the orchestrator's RSS went from 148 to ~250 MiB and stayed
there for the three minutes after, though the streams' objects were gone. The allocator keeps the
freed pages (glibc's heap, and pymalloc arenas' neighbours in it); ``malloc_trim(0)`` hands them back
(a synthetic burst of the same shape: 684 MiB freed to 684, trimmed to 122).

``Trimmer`` checks twice a minute, reading two counters (no collection, no walk): it trims when
Python's live blocks fell by a quarter, or by a million, since their high-water mark (a burst ended) or the RSS grew by
``slack_mb`` (a trim then costs about a millisecond per 100 MiB; steady load triggers neither, so the
token path never pays for it).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import os
import sys
from collections.abc import Callable

log = logging.getLogger(__name__)

# Live blocks a burst's end frees at least to count as one, however big the heap around it (a quarter
# of a large heap may be more than a burst ever was): a million small objects, ~50-100 MiB.
_BURST_BLOCKS = 1_000_000

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """Resident set size of this process (Linux ``/proc/self/statm``; 0 where there is none)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def _malloc_trim() -> Callable[[], None] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim  # glibc only (musl and macOS have none)
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int

    def release() -> None:
        trim(0)

    return release


class Trimmer:
    def __init__(
        self, *, interval_s: float = 30.0, slack_mb: float = 32.0, drop: float = 0.25, trim: Callable[[], None] | None = None
    ) -> None:
        self.interval_s = interval_s
        self.slack = int(slack_mb * 2**20)
        self.drop = drop
        self.trims = 0
        self._trim = trim or _malloc_trim()
        self._rss = rss_bytes()
        self._blocks = sys.getallocatedblocks()
        self._seen = self._collected = self._blocks  # the live blocks at the last check, after the last full collection
        self._task: asyncio.Task[None] | None = None

    def check(self) -> bool:
        """Trim if a burst ended or the RSS grew past the slack since the last trim; True if it trimmed."""
        if self._trim is None:
            return False
        blocks = sys.getallocatedblocks()
        quiet = abs(blocks - self._seen) <= max(blocks // 50, 20_000)
        self._seen = blocks
        if quiet and abs(blocks - self._collected) > max(blocks // 50, 20_000):
            # Quiet again after a change: a full collection. What a burst leaves in cycles that outlived
            # the young generations (a closed WebSocket's protocol and its parser hold each other) is
            # otherwise freed only by the next full collection, which a quiet service (the young
            # threshold is 20,000 allocations: heap.py) may not make for hours.
            gc.collect()
            blocks = self._seen = self._collected = sys.getallocatedblocks()
        rss = rss_bytes()
        ended = self._blocks - blocks >= min(self._blocks * self.drop, _BURST_BLOCKS)
        if not ended and rss - self._rss <= self.slack:
            self._blocks = max(self._blocks, blocks)  # the high-water mark a later drop is measured from
            return False
        before = rss
        gc.collect(1)  # the young generations: cheap (the start-up heap is frozen), frees what cycles held
        self._trim()
        self.trims += 1
        self._rss = rss_bytes()
        self._blocks = sys.getallocatedblocks()
        log.debug("memory trimmed: RSS %.0f -> %.0f MiB", before / 2**20, self._rss / 2**20)
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                self.check()
            except Exception:  # a failed trim must not end the loop (nor the service)
                log.warning("memory trim failed", exc_info=True)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="memory-trimmer")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
