"""Dead-letter records: the original key and value, with why and where it came from in headers."""

from __future__ import annotations

import logging

from aiokafka import AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import KafkaError

from schemas.topics import Topics
from services.common.observability.metrics import DLQ_RECORDS

log = logging.getLogger(__name__)


async def send_to_dlq(
    producer: AIOKafkaProducer, topics: Topics, record: ConsumerRecord[bytes, bytes], reason: str, *, consumer: str = ""
) -> None:
    """Park a record that could not be processed. ``consumer`` names the reader that gave up on it:
    readers without a group (status views, bridge tails, control tails) each report their own copy."""
    headers = [
        *(record.headers or ()),
        ("dlq.reason", reason[:4000].encode()),
        ("dlq.consumer", consumer.encode()),
        ("dlq.topic", record.topic.encode()),
        ("dlq.partition", str(record.partition).encode()),
        ("dlq.offset", str(record.offset).encode()),
    ]
    await producer.send_and_wait(topics.dlq, value=record.value, key=record.key, headers=headers)
    DLQ_RECORDS.labels(topic=record.topic).inc()
    log.warning("record %s:%s@%s sent to the DLQ: %s", record.topic, record.partition, record.offset, reason)


async def park(
    producer: AIOKafkaProducer | None, topics: Topics, record: ConsumerRecord[bytes, bytes], reason: str, *, consumer: str
) -> None:
    """What every reader does with a record it cannot use: DLQ it (or, with no producer, log it) and go on.
    Never raises for Kafka trouble: a reader must not stall on a record it is throwing away."""
    if producer is None:
        log.warning("%s: skipping %s:%s@%s: %s", consumer, record.topic, record.partition, record.offset, reason)
        return
    try:
        await send_to_dlq(producer, topics, record, reason, consumer=consumer)
    except KafkaError as exc:
        log.warning("%s: could not park %s:%s@%s in the DLQ (%s): %s", consumer, record.topic, record.partition, record.offset, reason, exc)
