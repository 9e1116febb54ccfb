"""CPU per lane record through a real ``Executor``: what its lane consumers cost, end to end.

``python -m bench.lanes [--records 2000] [--bootstrap 127.0.0.1:9092]``: on a fresh topic prefix
(3 partitions), writes one tenant, ``records`` completed status snapshots and, once the executor
runs, ``records`` standard-lane requests for those executions. Each request is admitted (validated,
tenant and key checked) and found already terminal, so it is finished and its watermark committed
without running: the path every lane record takes before (or instead of) an execution, with no
model call to hide it. Prints CPU and wall time per record from the first finish to the last
(process CPU: the executor's views, tails and the producer included, as a deployment pays them).

Written to run against the executor of any commit of issue 12 onwards (it only counts
``Executor._finish``), to compare the lanes before and after they moved from FastStream to ``Reader``.
Bounded: one prefix (its topics deleted after), ``records`` records each way, at most ``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
import uuid
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from schemas.events import ExecutionRequested
from schemas.status import ExecutionStatus
from schemas.tenants import TenantRecord
from services.common.kafka import encode, ensure_topics
from services.common.settings import KafkaSettings
from services.executor.app import Executor
from services.executor.settings import ExecutorSettings

TENANT = "bench-tenant"


class CountingExecutor(Executor):
    """Counts finished lane records (the clock starts at the first)."""

    total = 0
    count = 0
    cpu0 = wall0 = cpu = wall = 0.0
    done: asyncio.Event

    async def _finish(self, tp: TopicPartition, offset: int) -> None:
        await super()._finish(tp, offset)
        if self.count == 0:
            self.cpu0, self.wall0 = time.process_time(), time.perf_counter()
        self.count += 1
        if self.count == self.total:
            self.cpu, self.wall = time.process_time() - self.cpu0, time.perf_counter() - self.wall0
            self.done.set()


async def drop_prefix(bootstrap: str, prefix: str) -> None:
    """Delete the run's topics (every one under its own prefix)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        mine = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if mine:
            await admin.delete_topics(mine)
    finally:
        await admin.close()


async def main(bootstrap: str, records: int, timeout: float) -> dict[str, Any]:
    kafka = KafkaSettings(bootstrap=bootstrap, topic_prefix=f"benchlanes{uuid.uuid4().hex[:8]}.", partitions=3)
    topics = kafka.topics
    await ensure_topics(kafka)
    ids = [f"e{i:06d}" for i in range(records)]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5)
    await producer.start()
    try:
        await producer.send_and_wait(topics.tenants, encode(TenantRecord(tenant_id=TENANT)), key=TENANT.encode())
        sent = [
            await producer.send(
                topics.status, encode(ExecutionStatus(execution_id=e, tenant_id=TENANT, state="completed", attempt=1)), key=e.encode()
            )
            for e in ids
        ]
        await asyncio.gather(*sent)
        executor = CountingExecutor(ExecutorSettings(kafka=kafka, instance_id="bench-lanes"))
        executor.total, executor.done = records, asyncio.Event()
        async with executor:
            async with asyncio.timeout(timeout):
                while len([e for e in ids if executor.status.get(e) is not None]) < records or not executor.assigned():
                    await asyncio.sleep(0.05)
                lane = topics.lane("standard")
                sent = [
                    await producer.send(lane, encode(ExecutionRequested(tenant_id=TENANT, execution_id=e, input="x")), key=TENANT.encode())
                    for e in ids
                ]
                await asyncio.gather(*sent)
                await executor.done.wait()
    finally:
        await producer.stop()
        await drop_prefix(bootstrap, kafka.topic_prefix)
    n = max(1, records - 1)
    cpu, wall = executor.cpu / n * 1e6, executor.wall / n * 1e6
    return {"records": records, "cpu_us_per_record": round(cpu, 1), "wall_us_per_record": round(wall, 1)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(json.dumps(asyncio.run(main(args.bootstrap, args.records, args.timeout))))
