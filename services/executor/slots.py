"""Execution slots handed out by lane priority.

While a slot is free anyone takes it. When all are taken, a freed slot goes to the waiter of the
highest-priority lane (critical, then standard, then batch), first come first served within a lane:
under saturation critical work starts before earlier standard work, and batch work yields.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools

from schemas.topics import PRIORITIES, Priority

RANK: dict[Priority, int] = {p: i for i, p in enumerate(PRIORITIES)}


class PrioritySlots:
    def __init__(self, slots: int) -> None:
        self._free = slots
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    @property
    def free(self) -> int:
        return self._free

    async def acquire(self, priority: Priority = "standard") -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (RANK[priority], next(self._order), waiter))
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # it was handed a slot just as it was cancelled: pass it on
            raise

    def release(self) -> None:
        while self._waiters:
            _, _, waiter = heapq.heappop(self._waiters)
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1
