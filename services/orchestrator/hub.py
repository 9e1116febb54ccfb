"""Task updates for a tenant's clients (``/v1/tasks/stream``): job results, timeouts, completions.

In-process: a replica pushes what it applied itself. Each subscriber has a bounded queue; one that
does not keep up loses its oldest updates rather than slowing anyone else down.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any


class TaskHub:
    def __init__(self, *, queue_size: int = 1000) -> None:
        self._subscribers: dict[str, set[asyncio.Queue[dict[str, Any]]]] = collections.defaultdict(set)
        self._queue_size = queue_size

    def subscribe(self, tenant_id: str) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self._queue_size)
        self._subscribers[tenant_id].add(queue)
        return queue

    def unsubscribe(self, tenant_id: str, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._subscribers[tenant_id].discard(queue)
        if not self._subscribers[tenant_id]:
            del self._subscribers[tenant_id]

    def publish(self, tenant_id: str, update: dict[str, Any]) -> None:
        for queue in self._subscribers.get(tenant_id, ()):
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(update)
