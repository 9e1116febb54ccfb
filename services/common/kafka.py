"""Producer factory, topic creation, record encoding and headers: the Kafka plumbing both services use."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaConnectionError,
    OutOfOrderSequenceNumber,
    TopicAlreadyExistsError,
    UnknownProducerId,
)
from aiokafka.producer.transaction_manager import NO_PRODUCER_EPOCH, NO_PRODUCER_ID, PidAndEpoch
from pydantic import BaseModel

from services.common.errors import KafkaUnavailable
from services.common.settings import KafkaSettings

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]


def encode(model: BaseModel) -> bytes:
    return model.model_dump_json().encode()


def event_headers(*, type_: str, tenant_id: str, attempt: int = 1, traceparent: str | None = None) -> Headers:
    # Type and attempt travel in headers so the bridge can fence and route without parsing values.
    headers: Headers = [("type", type_.encode()), ("tenant_id", tenant_id.encode()), ("attempt", str(attempt).encode())]
    if traceparent:
        headers.append(("traceparent", traceparent.encode()))
    return headers


def header(headers: Sequence[tuple[str, bytes]] | None, name: str) -> str | None:
    for key, value in headers or ():
        if key == name:
            return value.decode(errors="replace")
    return None


async def partitions_of(consumer: AIOKafkaConsumer, topic: str, *, wait_s: float = 10.0) -> list[TopicPartition]:
    """The topic's partitions, refreshing metadata until they are known (a topic may be brand new)."""
    deadline = asyncio.get_running_loop().time() + wait_s
    while True:
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            return [TopicPartition(topic, p) for p in sorted(partitions)]
        if asyncio.get_running_loop().time() > deadline:
            return []
        await consumer._client.force_metadata_update()
        await asyncio.sleep(0.05)


class Producer(AIOKafkaProducer):  # type: ignore[misc]
    """The idempotent producer, able to start a new idempotent session after a sequence error.

    When a broker restarts while batches are in flight, some of them fail after their sequence
    numbers were taken; from then on the broker answers every batch of that partition with
    OutOfOrderSequenceNumber, and aiokafka (unlike the Java client) never recovers: the service would
    refuse all work until restarted (seen in tests/reliability/test_broker_restart.py). On such an
    error we drop the producer id and the sequence numbers; aiokafka's sender asks the broker for a
    new id before its next request (Sender._maybe_wait_for_pid), and later sends go through. The send
    that failed still fails, so its caller answers 503 or runs the execution again.
    """

    async def send(self, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = await super().send(*args, **kwargs)
        future.add_done_callback(self._after_send)
        return future

    def _after_send(self, future: asyncio.Future[Any]) -> None:
        if future.cancelled() or not isinstance(future.exception(), _SEQUENCE_ERRORS):
            return
        txn = self._txn_manager
        if txn is None or txn.transactional_id is not None or not txn.has_pid():
            return
        log.warning("producer %s: %s; starting a new idempotent session", self.client._client_id, type(future.exception()).__name__)
        txn._pid_and_epoch = PidAndEpoch(NO_PRODUCER_ID, NO_PRODUCER_EPOCH)
        txn._pid_waiter = asyncio.get_running_loop().create_future()
        txn._sequence_numbers.clear()


_SEQUENCE_ERRORS = (OutOfOrderSequenceNumber, UnknownProducerId, InvalidProducerEpoch)


def make_producer(settings: KafkaSettings, *, client_id: str) -> AIOKafkaProducer:
    return Producer(
        bootstrap_servers=settings.bootstrap,
        client_id=client_id,
        acks="all",
        enable_idempotence=True,
        linger_ms=settings.linger_ms,
        request_timeout_ms=settings.request_timeout_ms,
    )


async def start_client(client: AIOKafkaProducer, settings: KafkaSettings) -> None:
    try:
        await client.start()
    except KafkaConnectionError as exc:
        raise KafkaUnavailable(settings.bootstrap, exc) from exc


async def ensure_topics(settings: KafkaSettings, *, extra: Sequence[str] = ()) -> None:
    """Create the contract's topics (and ``extra`` event-like topics) if missing; idempotent."""
    topics = settings.topics
    n = settings.partitions
    wanted = [NewTopic(name, num_partitions=n, replication_factor=1) for name in (*topics.lanes, topics.events, *extra)]
    wanted += [
        NewTopic(topics.control, num_partitions=1, replication_factor=1),
        NewTopic(
            topics.status,
            num_partitions=n,
            replication_factor=1,
            topic_configs={"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1", "segment.ms": "600000"},
        ),
        NewTopic(topics.jobs_completed, num_partitions=3, replication_factor=1),
        NewTopic(topics.dlq, num_partitions=3, replication_factor=1),
        NewTopic(topics.jobs_requested, num_partitions=3, replication_factor=1),
        NewTopic(topics.jobs_updates, num_partitions=3, replication_factor=1),
        NewTopic(topics.tenants, num_partitions=1, replication_factor=1, topic_configs={"cleanup.policy": "compact"}),
    ]
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap, request_timeout_ms=settings.request_timeout_ms)
    try:
        await admin.start()
    except KafkaConnectionError as exc:
        raise KafkaUnavailable(settings.bootstrap, exc) from exc
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in wanted if t.name not in existing]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass
            await _wait_for_leaders(admin, [t.name for t in missing])
    finally:
        await admin.close()


async def _wait_for_leaders(admin: AIOKafkaAdminClient, names: list[str], timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        described = await admin.describe_topics(names)
        if all(
            not t.get("error_code") and t.get("partitions") and all(p.get("leader", -1) >= 0 for p in t["partitions"]) for t in described
        ):
            return
        await asyncio.sleep(0.1)
    log.warning("topics %s have no leader after %.0fs", names, timeout)
