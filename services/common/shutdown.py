"""Shutdown that always ends: every part's stop is bounded, and one that hangs is named.

A replica that is told to stop must stop, also when one part's close waits on something that never
comes (a consumer group's coordination, a request to a broker that went away, a task that swallows
its cancellation). ``bounded`` runs one stop in a task of its own and waits for it at most
``timeout_s``; past that it logs, once, the stuck stop's stack and every other pending task's, cancels
it and goes on with the next part. It never awaits the stuck task again: a stop that swallows its
cancellation cannot hold the rest of the shutdown.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 5.0  # one part (a reader stops in well under a second); a replica's whole shutdown stays inside a pod's 30 s grace


def _chain(task: asyncio.Task[object], depth: int = 0) -> list[str]:
    """Where a suspended task waits: its coroutine's whole ``await`` chain (``Task.get_stack`` shows
    only the outermost frame of a suspended coroutine), into the tasks it awaits."""
    lines: list[str] = []
    obj: object = task.get_coro()
    while obj is not None and len(lines) < 40:
        frame = getattr(obj, "cr_frame", None) or getattr(obj, "gi_frame", None) or getattr(obj, "ag_frame", None)
        if frame is not None:
            lines.append(f"{'  ' * depth}  {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}")
        nxt = getattr(obj, "cr_await", None) or getattr(obj, "gi_yieldfrom", None) or getattr(obj, "ag_await", None)
        if nxt is None and isinstance(obj, asyncio.Task) and depth < 3:
            return [*lines, f"{'  ' * depth}  awaits task {obj.get_name()}:", *_chain(obj, depth + 1)]
        obj = nxt
    waiting = getattr(task, "_fut_waiter", None)
    if waiting is not None:
        lines.append(f"{'  ' * depth}  waits for {waiting!r}"[:300])
    return lines


def _stacks(stuck: asyncio.Task[object]) -> str:
    out = io.StringIO()
    out.write(f"{stuck.get_name()}:\n" + "\n".join(_chain(stuck)) + "\n")
    others = [t for t in asyncio.all_tasks() if t is not stuck and not t.done() and t is not asyncio.current_task()]
    out.write(f"{len(others)} other pending tasks:\n")
    for task in others[:60]:
        out.write(f"- {task.get_name()}:\n" + "\n".join(_chain(task)[-6:]) + "\n")
    return out.getvalue()


async def bounded(name: str, stop: Callable[[], Awaitable[object]], timeout_s: float | None = None) -> None:
    """Run ``stop()``; give up on it after ``timeout_s`` (``STOP_TIMEOUT_S``; logged with the stacks),
    never raise for it but for our own cancellation (which cancels it too)."""
    timeout_s = STOP_TIMEOUT_S if timeout_s is None else timeout_s
    started = time.monotonic()

    async def run() -> object:
        return await stop()

    task: asyncio.Task[object] = asyncio.create_task(run(), name=f"stop-{name}")
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        log.warning("%s did not stop within %g s; going on without it. Stacks:\n%s", name, timeout_s, _stacks(task))
        task.cancel()
        return
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.warning("%s failed to stop cleanly: %s: %s", name, type(exc).__name__, exc)
    elapsed = time.monotonic() - started
    if elapsed > timeout_s / 4:
        log.info("%s took %.1f s to stop", name, elapsed)
