"""Dead-letter records: a bounded copy of the original, with why and where it came from in headers.

``park()`` is the one way to send to the DLQ. The copy is bounded so that it can always be sent:
the original may be as large as the broker allows (1 MiB by default), and a copy of it plus our
headers would not be (an invalid ~1 MB record used to yield a DLQ copy that could not be sent). The
value is cut to ``MAX_VALUE_BYTES`` (``dlq.value_size`` says the original size, ``dlq.truncated``
that it was cut), the key to ``MAX_KEY_BYTES``, each original header value to ``MAX_HEADER_BYTES``.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import quote

from aiokafka import ConsumerRecord

from schemas.topics import Topics
from services.common.kafka import snapshot_headers
from services.common.observability.metrics import DLQ_FAILURES, DLQ_RECORDS

log = logging.getLogger(__name__)

MAX_VALUE_BYTES = 256 * 1024  # well under the producer's and broker's 1 MiB, with every header added
MAX_KEY_BYTES = 1024
MAX_HEADER_BYTES = 4096
MAX_HEADERS = 64
MAX_REASON_BYTES = 4000
SEND_TIMEOUT_S = 10.0  # a reader parks and moves on: it must not wait on a broker that is down

Headers = list[tuple[str, bytes]]


class Publisher(Protocol):
    """What park() needs of a producer: ``AIOKafkaProducer``, or ``sources.MemoryProducer`` in tests."""

    async def send_and_wait(
        self, topic: str, value: bytes | None = None, key: bytes | None = None, *, headers: Headers | None = None
    ) -> Any: ...


def dlq_copy(record: ConsumerRecord[bytes, bytes], reason: str, *, consumer: str) -> tuple[bytes | None, bytes | None, Headers]:
    """The (key, value, headers) of a record's DLQ copy, bounded in size."""
    value = record.value
    key = record.key
    headers: Headers = [(name, (v or b"")[:MAX_HEADER_BYTES]) for name, v in list(record.headers or ())[:MAX_HEADERS]]
    headers += [
        ("dlq.reason", reason.encode(errors="replace")[:MAX_REASON_BYTES]),
        ("dlq.consumer", consumer.encode(errors="replace")[:MAX_HEADER_BYTES]),
        ("dlq.topic", record.topic.encode()),
        ("dlq.partition", str(record.partition).encode()),
        ("dlq.offset", str(record.offset).encode()),
    ]
    if value is not None:
        headers.append(("dlq.value_size", str(len(value)).encode()))
        if len(value) > MAX_VALUE_BYTES:
            value = value[:MAX_VALUE_BYTES]
            headers.append(("dlq.truncated", b"value"))
    if not any(name == "ce_specversion" for name, _ in headers):
        # A copy of one of our records keeps that event's CloudEvents attributes (it is the same event,
        # parked); a foreign record gets its own. Its ``type`` header, if any, stays the original's.
        subject = (record.key or b"")[:MAX_KEY_BYTES].decode(errors="replace")
        ce = snapshot_headers("dlq.record", service=f"dlq/{quote(consumer, safe='')}", subject=subject, time=datetime.now(UTC))
        headers += [(name, value) for name, value in ce if name != "type"]
    if key is not None and len(key) > MAX_KEY_BYTES:
        headers.append(("dlq.key_size", str(len(key)).encode()))
        key = key[:MAX_KEY_BYTES]
    return key, value, headers


async def park(producer: Publisher | None, topics: Topics, record: ConsumerRecord[bytes, bytes], reason: str, *, consumer: str) -> bool:
    """What every reader does with a record it cannot use: DLQ a bounded copy (or, with no producer,
    log it) and go on. ``consumer`` names the reader that gave up on it: readers without a group
    (status views, bridge tails, control tails) each report their own copy. Never raises (short of
    cancellation) and never waits more than ``SEND_TIMEOUT_S``: a reader must not stall on a record
    it is throwing away. Returns whether the copy reached the DLQ."""
    where = f"{record.topic}:{record.partition}@{record.offset}"
    if producer is None:
        log.warning("%s: skipping %s: %s", consumer, where, reason)
        return False
    try:
        key, value, headers = dlq_copy(record, reason, consumer=consumer)
        async with asyncio.timeout(SEND_TIMEOUT_S):
            await producer.send_and_wait(topics.dlq, value=value, key=key, headers=headers)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        DLQ_FAILURES.labels(topic=record.topic).inc()
        log.warning("%s: could not park %s in the DLQ (%s): %s: %s", consumer, where, reason, type(exc).__name__, exc)
        return False
    DLQ_RECORDS.labels(topic=record.topic).inc()
    log.warning("%s: record %s sent to the DLQ: %s", consumer, where, reason)
    return True
