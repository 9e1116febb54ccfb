"""`agentstream replay`: an execution or a session through the API, or a topic range straight from Kafka."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import orjson
import websockets
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from httpx_sse import SSEError, aconnect_sse

from services.common.errors import AgentstreamError
from services.common.kafka import client_options, partitions_of, start_client
from services.common.settings import KafkaSettings

TERMINAL = {"execution.completed", "execution.failed", "execution.cancelled"}


class ReplayError(AgentstreamError):
    retriable = False


async def execution_events(url: str, api_key: str, execution_id: str, *, cursor: int | None = None) -> AsyncIterator[dict[str, Any]]:
    """Every event of one execution after ``cursor`` (SSE), ending with its terminal event."""
    headers = {"Authorization": f"Bearer {api_key}"}
    if cursor is not None:
        headers["Last-Event-ID"] = str(cursor)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(10, read=None)) as client:
        async with aconnect_sse(client, "GET", f"/v1/executions/{execution_id}/events", headers=headers) as source:
            response = source.response
            if response.status_code != 200:
                body = orjson.loads(await response.aread() or b"{}")
                raise ReplayError(f"{response.status_code}: {body.get('error', response.reason_phrase)}")
            last_id = ""
            try:
                async for sse in source.aiter_sse():
                    # Execution events carry their cursor as the id; a control event (``end``, ``error``)
                    # carries none, and SSE then repeats the last id, so an unchanged id is no event of ours.
                    if not sse.id or sse.id == last_id or not sse.data:
                        continue
                    last_id = sse.id
                    event = orjson.loads(sse.data)
                    yield {"execution_id": execution_id, "cursor": int(sse.id), "event": event}
                    if event["type"] in TERMINAL:
                        return
            except SSEError as exc:  # not an event stream (e.g. a proxy's HTML page)
                raise ReplayError(str(exc)) from exc


async def session_events(url: str, api_key: str, session_id: str, *, idle_s: float = 2.0) -> AsyncIterator[dict[str, Any]]:
    """Every event of every execution of a session; ends when all are finished and nothing came for ``idle_s``."""
    ws_url = url.replace("http", "ws", 1) + "/v1/stream"
    async with websockets.connect(ws_url, additional_headers={"Authorization": f"Bearer {api_key}"}) as ws:
        await ws.send(orjson.dumps({"type": "subscribe", "session_id": session_id}).decode())
        open_executions: set[str] = set()
        while True:
            try:
                raw = await asyncio.wait_for(ws.recv(), idle_s)
            except TimeoutError:
                if not open_executions:
                    return
                continue
            frame = orjson.loads(raw)
            if frame["type"] == "subscribed":
                open_executions.update(frame.get("executions", ()))
            elif frame["type"] == "session.execution":
                open_executions.add(frame["execution_id"])
            elif frame["type"] == "end":  # ended without a terminal event to send (e.g. cancelled while queued)
                open_executions.discard(frame["execution_id"])
            elif frame["type"] == "error":
                raise ReplayError(frame["error"])
            for item in frame.get("events", ()):
                if item["event"]["type"] in TERMINAL:
                    open_executions.discard(item["execution_id"])
                yield item


async def topic_records(
    *,
    kafka: KafkaSettings,
    topic: str,
    group_id: str | None,
    from_beginning: bool,
    from_time: datetime | None,
    limit: int | None,
    idle_s: float = 3.0,
) -> AsyncIterator[dict[str, Any]]:
    """Records of a topic, read with a consumer group of your own (offsets are committed, so a rerun goes on
    where the last one stopped) or without one. Ends after ``limit`` records or ``idle_s`` without any."""
    consumer = AIOKafkaConsumer(
        **client_options(kafka),
        group_id=group_id,
        enable_auto_commit=False,  # commit exactly what was handed out, below
        auto_offset_reset="earliest" if from_beginning or from_time else "latest",
    )
    await start_client(consumer, kafka)
    try:
        tps = await partitions_of(consumer, topic, wait_s=3.0)
        if not tps:
            raise ReplayError(f"topic {topic!r} does not exist on {kafka.bootstrap}")
        if group_id is None:
            consumer.assign(tps)
            if from_beginning:
                await consumer.seek_to_beginning(*tps)
        else:
            assigned = _Assigned()
            consumer.subscribe([topic], listener=assigned)
            await asyncio.wait_for(assigned.event.wait(), 30)
        if from_time is not None:
            wanted = {tp: int(from_time.timestamp() * 1000) for tp in consumer.assignment()}
            for tp, found in (await consumer.offsets_for_times(wanted)).items():
                if found is None:
                    await consumer.seek_to_end(tp)
                else:
                    consumer.seek(tp, found.offset)
        count = 0
        done: dict[TopicPartition, int] = {}
        while limit is None or count < limit:
            batches = await consumer.getmany(timeout_ms=int(idle_s * 1000), max_records=500)
            if not batches:
                return
            for records in batches.values():
                for record in records:
                    yield {
                        "topic": record.topic,
                        "partition": record.partition,
                        "offset": record.offset,
                        "timestamp": record.timestamp,
                        "key": record.key.decode(errors="replace") if record.key else None,
                        "headers": {k: v.decode(errors="replace") for k, v in record.headers or ()},
                        "value": _value(record.value),
                    }
                    count += 1
                    done[TopicPartition(record.topic, record.partition)] = record.offset + 1
                    if limit is not None and count >= limit:
                        return
    finally:
        if group_id is not None and done:
            await consumer.commit(done)
        await consumer.stop()


class _Assigned(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka ships no type hints
    def __init__(self) -> None:
        self.event = asyncio.Event()

    async def on_partitions_revoked(self, revoked: object) -> None:
        pass

    async def on_partitions_assigned(self, assigned: object) -> None:
        self.event.set()


def _value(raw: bytes | None) -> Any:
    if raw is None:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode(errors="replace")


def write_json_line(item: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(item).decode() + "\n")
    sys.stdout.flush()
