"""The trimmer hands a finished burst's memory back to the system, and leaves steady load alone.

The RSS scenarios run in a fresh interpreter: in the test process, earlier tests' freed memory would
absorb the burst (no growth) and their live objects would hide its end."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import pytest

from services.common import memory

needs_glibc = pytest.mark.skipif(memory._malloc_trim() is None or memory.rss_bytes() == 0, reason="needs glibc and /proc")

_BURST = """
import os
from services.common import memory

def burst():
    # The shape of a burst of streams: many small and middle-sized objects, spread over the heap.
    return [[{"k": os.urandom(40), "v": list(range(20)), "b": b"x" * (100 + 37 * (i % 200))} for i in range(400)] for _ in range(300)]
"""


def _run(body: str) -> None:
    code = _BURST + textwrap.dedent(body)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


@needs_glibc
def test_a_finished_burst_is_trimmed_and_its_memory_returns() -> None:
    _run("""
        trimmer = memory.Trimmer(slack_mb=1024)  # growth alone does not trigger: only the burst's end
        before = memory.rss_bytes()
        keep = [{"id": i} for i in range(2000)]  # long-lived objects allocated in between pin pages
        held = burst()
        assert not trimmer.check()  # the burst is live: nothing to give back
        peak = memory.rss_bytes()
        assert peak - before > 100 * 2**20, (before, peak)
        del held
        assert trimmer.check()
        after = memory.rss_bytes()
        assert after - before < (peak - before) / 2, (before, peak, after)
        assert trimmer.trims == 1
        assert not trimmer.check()  # nothing changed since: no second trim
        assert keep
    """)


@needs_glibc
def test_a_quiet_service_collects_the_cycles_a_burst_left_and_gives_their_memory_back() -> None:
    _run("""
        import gc
        gc.set_threshold(20_000, 10, 10)  # a service's young threshold (heap.py)
        trimmer = memory.Trimmer(slack_mb=1024)
        before = memory.rss_bytes()

        class Conn:  # a closed connection's protocol and its parser, holding each other
            def __init__(self, i):
                self.parser = [self, b"x" * (200 + i % 300), list(range(30))]

        conns = [Conn(i) for i in range(150_000)]
        gc.collect()  # they outlive the young generations, as a WebSocket does
        trimmer.check()
        del conns  # closed: garbage, but only a full collection finds it
        peak = memory.rss_bytes()
        assert peak - before > 50 * 2**20, (before, peak)
        # Quiet since the last check: a full collection frees the cycles, and the drop it shows is a
        # burst's end, so the same check trims.
        assert trimmer.check()
        after = memory.rss_bytes()
        assert after - before < (peak - before) / 2, (before, peak, after)
    """)


@needs_glibc
def test_growth_past_the_slack_trims_once_then_the_new_level_is_the_baseline() -> None:
    _run("""
        trimmer = memory.Trimmer(slack_mb=32)
        held = burst()
        assert trimmer.check()
        assert not trimmer.check()
        assert trimmer.trims == 1 and held
    """)


def test_the_loop_survives_a_failing_trim_and_stops() -> None:
    calls = 0

    def failing() -> None:
        nonlocal calls
        calls += 1
        raise OSError("no")

    async def main() -> None:
        trimmer = memory.Trimmer(interval_s=0.001, slack_mb=-1, trim=failing)  # every check trims, and fails
        trimmer.start()
        while calls < 3:
            await asyncio.sleep(0.01)
        await trimmer.stop()

    asyncio.run(main())
    assert calls >= 3
