"""Cost per record of consuming the lanes: FastStream used idiomatically vs our ``Reader``.

``python -m bench.readers [--records 20000] [--bootstrap 127.0.0.1:9092]``: writes ``records``
``execution.requested`` values (~500 bytes) to a fresh 3-partition topic once, then reads all of
them in a new consumer group each way, and prints CPU and wall time per record, counted from the
first record handled to the last (group joins excluded):

* ``faststream-model``: a FastStream subscriber whose handler takes ``ExecutionRequested`` (FastStream
  decodes the JSON and validates it through its own pydantic signature model), its default
  ``AckPolicy.ACK_FIRST`` (auto-commit: at most once), the broker configured as the executor's;
* ``faststream-model-ack``: the same with ``AckPolicy.ACK`` (commit after each message: at least
  once, what a lane needs);
* ``faststream-raw``: the default subscriber taking ``KafkaMessage`` and validating the bytes itself
  (what ``services/executor/app.py`` does today, there with manual watermark commits);
* ``reader``: ``services.common.reader.Reader`` over ``open_group``, validating with
  ``ExecutionRequested.model_validate_json``, committing after each batch;
* ``aiokafka-floor``: a bare ``getmany`` loop that only counts, for the floor;
* ``validate-only``: ``ExecutionRequested.model_validate_json`` over the same values, no Kafka.

``faststream-model-ack`` reads the first ``ACK_RECORDS`` only: a commit round trip per message
makes it ~100x slower, and the per-record figure is the same.

Bounded: one topic, ``records`` records, at most ``--timeout`` seconds a way; the topic is deleted after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage

from schemas.events import ExecutionRequested
from schemas.topics import Topics
from services.common.kafka import encode
from services.common.reader import Reader
from services.common.settings import KafkaSettings
from services.common.sources import KafkaSource, Record, open_group

ACK_RECORDS = 2000


class Meter:
    def __init__(self, total: int) -> None:
        self.total = total
        self.count = 0
        self.cpu0 = self.wall0 = 0.0
        self.cpu = self.wall = 0.0
        self.done = asyncio.Event()

    def tick(self) -> None:
        if self.count == 0:
            self.cpu0, self.wall0 = time.process_time(), time.perf_counter()
        self.count += 1
        if self.count == self.total:
            self.cpu, self.wall = time.process_time() - self.cpu0, time.perf_counter() - self.wall0
            self.done.set()

    def result(self) -> dict[str, float]:
        n = max(1, self.total - 1)  # the clock starts at the first record
        return {"records": self.total, "cpu_us_per_record": self.cpu / n * 1e6, "wall_us_per_record": self.wall / n * 1e6}


async def _fill(bootstrap: str, topic: str, records: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5)
    await producer.start()
    try:
        futures = []
        for i in range(records):
            request = _request(i)
            futures.append(await producer.send(topic, encode(request), key=request.tenant_id.encode()))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def _drop(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()


async def _faststream(bootstrap: str, topic: str, meter: Meter, *, model: bool, ack: AckPolicy = AckPolicy.ACK_FIRST) -> None:
    broker = KafkaBroker(bootstrap, client_id="bench-faststream", log_level=logging.DEBUG)  # as the executor's
    group = f"bench-fs-{uuid.uuid4().hex[:6]}"
    subscriber = broker.subscriber(topic, group_id=group, auto_offset_reset="earliest", ack_policy=ack, max_poll_records=50)
    if model:

        async def handle_model(body: ExecutionRequested) -> None:
            meter.tick()

        subscriber(handle_model)
    else:

        async def handle_raw(msg: KafkaMessage) -> None:
            record: Record = msg.raw_message
            ExecutionRequested.model_validate_json(record.value or b"")
            meter.tick()

        subscriber(handle_raw)
    await broker.start()
    try:
        await meter.done.wait()
    finally:
        await broker.stop()


async def _reader(bootstrap: str, topic: str, meter: Meter) -> None:
    settings = KafkaSettings(bootstrap=bootstrap)
    source = await open_group(settings, topic, group=f"bench-reader-{uuid.uuid4().hex[:6]}", client_id="bench-reader")

    def handle(record: Record) -> None:
        ExecutionRequested.model_validate_json(record.value or b"")
        meter.tick()

    reader = Reader("bench-reader", source, handle, topics=Topics(prefix="bench."), dlq=None, max_records=500)
    reader.start()
    try:
        await meter.done.wait()
    finally:
        await reader.stop()


async def _floor(bootstrap: str, topic: str, meter: Meter) -> None:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=f"bench-floor-{uuid.uuid4().hex[:6]}", auto_offset_reset="earliest"
    )
    await consumer.start()
    source = KafkaSource(consumer, group=True)
    try:
        while not meter.done.is_set():
            for records in (await source.fetch(max_records=500, timeout_ms=200)).values():
                for _ in records:
                    meter.tick()
    finally:
        await source.close()


async def main(bootstrap: str, records: int, timeout: float) -> dict[str, Any]:
    topic = f"bench-readers-{uuid.uuid4().hex[:8]}"
    await _fill(bootstrap, topic, records)
    ways: dict[str, Callable[[Meter], Awaitable[None]]] = {
        "aiokafka-floor": lambda m: _floor(bootstrap, topic, m),
        "faststream-model": lambda m: _faststream(bootstrap, topic, m, model=True),
        "reader": lambda m: _reader(bootstrap, topic, m),
        "faststream-raw": lambda m: _faststream(bootstrap, topic, m, model=False),
        "faststream-model-ack": lambda m: _faststream(bootstrap, topic, m, model=True, ack=AckPolicy.ACK),
    }
    results: dict[str, Any] = {"validate-only": _validate_only(records)}
    try:
        for name, way in ways.items():
            meter = Meter(min(records, ACK_RECORDS) if name.endswith("-ack") else records)
            await asyncio.wait_for(way(meter), timeout)
            results[name] = meter.result()
    finally:
        await _drop(bootstrap, topic)
    return results


def _validate_only(records: int) -> dict[str, float]:
    values = [encode(_request(i)) for i in range(records)]
    cpu0 = time.process_time()
    for value in values:
        ExecutionRequested.model_validate_json(value)
    return {"records": records, "cpu_us_per_record": (time.process_time() - cpu0) / records * 1e6}


def _request(i: int) -> ExecutionRequested:
    return ExecutionRequested(tenant_id=f"tenant-{i % 7}", execution_id=uuid.uuid4().hex, input="what is 6*7? " * 8, variables={"n": i})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = asyncio.run(main(args.bootstrap, args.records, args.timeout))
    print(json.dumps(out, indent=2))
