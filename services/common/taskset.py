"""Background tasks a component starts and owns (a send it does not wait for, a retry later, a loop).

One ``TaskSet`` per component replaces the hand-kept ``set[asyncio.Task]``: it holds a strong
reference to each task until it ends (the event loop keeps only weak ones, so an unreferenced task
can vanish mid-flight), logs the exception of a task that failed (otherwise nobody would read it and
asyncio would only complain at garbage collection), and ``stop()`` lets the tasks finish for a grace
period, then cancels what is left and waits for it, so nothing outlives the component.

Unlike ``asyncio.TaskGroup``, one failing task does not cancel its siblings: these tasks are
independent pieces of work (one callback's retry failing must not stop another's).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any


class TaskSet:
    def __init__(self, name: str, *, log: logging.Logger | None = None) -> None:
        self.name = name
        self._log = log or logging.getLogger(__name__)
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopped = False

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, work: Coroutine[Any, Any, None], *, name: str | None = None) -> asyncio.Task[None] | None:
        """Run ``work`` in the background; None (and ``work`` dropped, with a warning) once stopped: a
        task started then would outlive its component."""
        if self._stopped:
            work.close()  # never awaited otherwise: a RuntimeWarning later
            self._log.warning("%s: stopped; background work %s dropped", self.name, name or getattr(work, "__qualname__", work))
            return None
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._log.error("%s: background task %s failed", self.name, task.get_name(), exc_info=exc)

    async def stop(self, *, grace_s: float | None = 0.0) -> None:
        """No new tasks; wait up to ``grace_s`` for the running ones (None: until they end, for work
        that bounds itself and must not be cut short), cancel the rest and wait for them. Idempotent."""
        self._stopped = True
        if self._tasks and (grace_s is None or grace_s > 0):
            await asyncio.wait(set(self._tasks), timeout=grace_s)
        left = list(self._tasks)
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)
