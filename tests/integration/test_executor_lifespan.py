"""The executor's start and stop on the real broker: a start that fails late unwinds exactly what it
had started (producer, views, control tail, job client, the lanes opened so far, the claims ticker),
so no task and no Kafka client outlives it."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.abc import ConsumerRebalanceListener

from services.common.settings import KafkaSettings
from services.common.sources import RecordSource
from services.executor.app import Executor
from services.executor.lanes import group_opener
from tests.fakes.openai_server import FakeOpenAI
from tests.integration.executor_harness import executor_settings

pytestmark = pytest.mark.kafka


def _open_clients() -> set[int]:
    found: set[int] = set()
    for o in gc.get_objects():
        try:
            if isinstance(o, AIOKafkaProducer | AIOKafkaConsumer) and o._closed is False:
                found.add(id(o))
        except ReferenceError:  # the collector also holds weak proxies; one whose referent is gone raises on any look
            continue
    return found


@contextlib.asynccontextmanager
async def _nothing_left() -> AsyncIterator[None]:
    """No task started inside is still running after it, and no Kafka client opened inside is still open."""
    tasks, clients = asyncio.all_tasks(), _open_clients()
    yield
    left: list[str] = []
    for _ in range(100):  # cancelled tasks finish within a few loop turns; a loaded machine may need more
        left = [t.get_name() for t in asyncio.all_tasks() - tasks if not t.done()]
        if not left:
            break
        await asyncio.sleep(0.05)
    assert left == [], f"still running after a failed start: {left}"
    assert _open_clients() - clients == set(), "a Kafka client is still open after a failed start"


class LaneRefused(Exception):
    pass


async def test_a_start_that_fails_opening_a_lane_stops_what_it_started(kafka_settings: KafkaSettings) -> None:
    # The first lane joins the group on the broker; the second cannot open: by then the producer, the
    # views, the control tail, the job client, the claims ticker and the first lane's reader run.
    settings_kw = {"consumer_group": f"{kafka_settings.topic_prefix}executor"}
    async with FakeOpenAI() as fake:
        settings = executor_settings(kafka_settings, fake, **settings_kw)
        broker = group_opener(settings.kafka, group=settings.consumer_group, client_id="lifespan", session_timeout_ms=6000)
        opened: list[str] = []

        async def open_lane(lane: str, listener: ConsumerRebalanceListener) -> RecordSource:
            if opened:
                raise LaneRefused(lane)
            opened.append(lane)
            return await broker(lane, listener)

        async with _nothing_left():
            with pytest.raises(LaneRefused):
                async with Executor(settings, lane_opener=open_lane):
                    pass
        assert len(opened) == 1


async def test_a_start_whose_metrics_port_is_taken_unwinds_by_itself(kafka_settings: KafkaSettings) -> None:
    # The metrics server binds last, after every lane joined; start() alone (no stop()) must undo it all.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        async with FakeOpenAI() as fake:
            executor = Executor(executor_settings(kafka_settings, fake, metrics_port=port))
            async with _nothing_left():
                with pytest.raises(OSError):
                    await executor.start()
            await executor.stop()  # idempotent after a failed start
