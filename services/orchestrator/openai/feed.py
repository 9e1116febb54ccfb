"""One execution's events from the bridge, as parsed ``(cursor, event)`` pairs for the door's mappers.

A :class:`Feed` is a bridge sink like the WebSocket and SSE ones (bounded in bytes, cut off when the
client falls behind); the fan-out loop only queues bytes, and the JSON is parsed in the client's own
response task. The subscription is the bridge's: catch-up from the execution's first event (or after
a cursor), deduplicated by offset, older attempts fenced, then the live tail.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from schemas.events import TERMINAL_TYPES
from services.common.errors import Gone, NotFound
from services.orchestrator.bridge import Bridge
from services.orchestrator.sinks import EventItem, Sink


@dataclass(frozen=True, slots=True)
class Item:
    cursor: int
    event: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Ended:
    """The subscription finished without a terminal event to deliver, or failed (``error``)."""

    status: str | None
    error: str | None = None


class Feed(Sink):
    def __init__(self, *, max_bytes: int, heartbeat_s: float, bridge: Bridge) -> None:
        super().__init__(max_bytes=max_bytes)
        self._heartbeat = heartbeat_s
        self._bridge = bridge

    def close(self) -> None:
        self._bridge.detach(self)

    def push_event(self, execution_id_json: bytes, offset: int, type_: str, value: bytes) -> None:
        self.push_shared(EventItem(execution_id_json, offset, type_, value))

    def push_shared(self, item: EventItem) -> None:
        self.push(item, len(item.value))

    async def so_far(self, execution_id: str, *, timeout: float) -> list[Item | Ended]:
        """What the execution has emitted until now, without waiting for more (a poll of a running one).

        The bridge queues every caught-up record before it turns the subscription live, so once it
        is live (or done) the queue holds everything so far."""
        with contextlib.suppress(TimeoutError):  # a catch-up that takes longer: what it has so far
            async with asyncio.timeout(timeout):
                while True:
                    sub = self.subscriptions.get(execution_id)
                    if sub is None or not sub.catching_up:
                        break
                    await asyncio.sleep(0.01)
        out: list[Item | Ended] = []
        for raw in await self.take(0):
            parsed = _parse(raw)
            if parsed is not None:
                out.append(parsed)
        return out

    async def items(self) -> AsyncIterator[Item | Ended | None]:
        """Events in order until the terminal one (or an end); None when idle for a heartbeat."""
        while not self.closed.is_set():
            batch = await self.take(self._heartbeat)
            if not batch:
                yield None
                continue
            for raw in batch:
                item = _parse(raw)
                if item is None:
                    continue
                yield item
                if isinstance(item, Ended) or item.event.get("type") in TERMINAL_TYPES:
                    return
        yield Ended(None, self.close_reason or "the stream was closed")


def _parse(raw: bytes | EventItem) -> Item | Ended | None:
    if isinstance(raw, EventItem):
        return Item(raw.offset, orjson.loads(raw.value))
    message = orjson.loads(raw[1:])  # a control message (the only bytes this sink queues)
    if message.get("type") in ("end", "error"):
        return Ended(message.get("status"), message.get("error") if message.get("type") == "error" else None)
    return None


async def follow(bridge: Bridge, tenant_id: str, execution_id: str, *, max_bytes: int, heartbeat_s: float) -> Feed:
    """Subscribe to one of the tenant's executions from its first event; 404 for anyone else's.

    The caller reads ``feed.items()`` and must ``feed.close()`` when done (a ``finally``)."""
    status = bridge.status.get(execution_id)
    if status is None or status.tenant_id != tenant_id:
        raise NotFound("response not found", detail={"code": "not_found"})
    try:
        await bridge.check_retained(status)
    except Gone as exc:
        raise Gone(str(exc), detail={"code": "gone"}) from exc
    feed = Feed(max_bytes=max_bytes, heartbeat_s=heartbeat_s, bridge=bridge)
    feed.tenant_id = tenant_id
    bridge.attach(feed)
    bridge.subscribe(feed, status, cursor=None)
    return feed
