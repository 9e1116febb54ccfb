"""Failover on a genuine 3-broker KRaft cluster (replication 3, min.insync.replicas 2).

SIGKILL the broker leading the most lane and events partitions while 50 executions stream, then
bring it back: every 202 completes, none is lost, and clients that resume from their cursor get every
event exactly once, in order. With two brokers down, a POST gets 503, never a 202 that is then lost.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import websockets
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import SecretStr

from services.common import topicplan
from services.common.kafka import client_options, ensure_topics
from services.common.localcluster import LocalCluster
from services.common.localkafka import LocalKafka
from services.common.settings import KafkaSettings
from services.executor.app import Executor
from services.executor.settings import ExecutorSettings
from services.orchestrator.app import create_app
from services.orchestrator.settings import OrchestratorSettings
from tests.support import collect_events, serve

pytestmark = [pytest.mark.kafka, pytest.mark.reliability, pytest.mark.timeout(420)]
AUTH = {"Authorization": "Bearer key-a"}
TERMINAL = {"execution.completed", "execution.failed", "execution.cancelled"}
EXECUTIONS = 50


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """Three JVMs on ports 29300-29321 of this test's own; all stopped and deleted at the end."""
    cluster = LocalCluster(brokers=3, port=29300, heap="384m")
    cluster.reset()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
        for node in cluster.nodes:
            shutil.rmtree(node.data_dir, ignore_errors=True)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_topics_get_the_clusters_replication_and_thin_ones_are_warned(cluster: LocalCluster) -> None:
    handler = _Collect()
    records = handler.records
    logger = logging.getLogger("services.common.topicplan")
    logger.addHandler(handler)
    try:
        defaults = KafkaSettings(bootstrap=cluster.bootstrap, topic_prefix=f"d{uuid.uuid4().hex[:8]}.", partitions=3)
        await ensure_topics(defaults)  # -1: the cluster's default.replication.factor (3) and min.insync.replicas (2)
        assert not [r for r in records if "replication below 3" in r.getMessage()]
        thin = defaults.model_copy(update={"topic_prefix": f"t{uuid.uuid4().hex[:8]}.", "replication_factor": 1})
        await ensure_topics(thin)
    finally:
        logger.removeHandler(handler)
    admin = AIOKafkaAdminClient(**client_options(defaults))
    await admin.start()
    try:
        described = await topicplan.describe(admin, [defaults.topics.events, thin.topics.events])
    finally:
        await admin.close()
    assert (
        described[defaults.topics.events]["replication"] == 3 and described[defaults.topics.events]["configs"]["min.insync.replicas"] == "2"
    )
    assert described[thin.topics.events]["replication"] == 1
    warnings = [r.getMessage() for r in records]
    (warning,) = [m for m in warnings if "have replication below 3" in m] or [str(warnings)]
    assert thin.topics.events in warning and "on a cluster of 3 brokers" in warning and defaults.topic_prefix not in warning


async def _leaders(settings: KafkaSettings) -> Counter[int]:
    """node id -> how many lane and events partitions it leads."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        topics = await admin.describe_topics([*settings.topics.lanes, settings.topics.events])
    finally:
        await admin.close()
    return Counter(p["leader"] for t in topics for p in t["partitions"])


async def _first_events(ws_url: str, execution_id: str, n: int) -> list[dict[str, Any]]:
    """Subscribe, take ``n`` events, hang up: a client that will resume from its cursor later."""
    items: list[dict[str, Any]] = []
    async with websockets.connect(f"{ws_url}/v1/stream?api_key=key-a") as ws:
        await ws.send(orjson.dumps({"type": "subscribe", "execution_id": execution_id}).decode())
        async with asyncio.timeout(60):
            while len(items) < n:
                frame = orjson.loads(await ws.recv())
                if frame["type"] == "events":
                    items.extend(frame["events"])
    return items


async def test_failover_of_the_leading_broker_loses_nothing(cluster: LocalCluster, tmp_path: Path) -> None:
    kafka = KafkaSettings(
        bootstrap=cluster.bootstrap,
        topic_prefix=f"f{uuid.uuid4().hex[:8]}.",
        partitions=3,
        replication_factor=3,
        min_insync_replicas=2,
        request_timeout_ms=5000,
    )
    orch = OrchestratorSettings(
        kafka=kafka,
        api_keys={"key-a": "tenant-a"},
        database_url=SecretStr(f"sqlite+aiosqlite:///{tmp_path / 'state.db'}"),
        requests_per_minute=1_000_000,
        concurrent_executions=100_000,
    )
    words = " ".join(f"w{i}" for i in range(60))  # the scripted model echoes them: ~60 deltas, ~5 s of streaming
    figures: dict[str, Any] = {}
    async with Executor(ExecutorSettings(kafka=kafka, scripted_token_delay_ms=80)):
        async with serve(create_app(orch)) as url, httpx.AsyncClient(base_url=url, timeout=60) as http:
            ws_url = url.replace("http", "ws", 1)
            posts = await asyncio.gather(*(http.post("/v1/executions", json={"input": words}, headers=AUTH) for _ in range(EXECUTIONS)))
            assert [r.status_code for r in posts] == [202] * EXECUTIONS, [r.text for r in posts if r.status_code != 202][:3]
            accepted = [r.json()["execution_id"] for r in posts]
            # Half the clients read a few events and hang up; they resume after the failover.
            resuming = accepted[: EXECUTIONS // 2]
            heads = await asyncio.gather(*(_first_events(ws_url, e, 3) for e in resuming))
            live = [asyncio.create_task(collect_events(ws_url, "key-a", e, timeout=240)) for e in accepted[EXECUTIONS // 2 :]]

            leaders = await _leaders(kafka)
            victim_id = leaders.most_common(1)[0][0]
            victim: LocalKafka = cluster.nodes[victim_id - 1]
            figures["victim_leads"] = leaders[victim_id]
            killed_at = time.monotonic()
            victim.kill()
            during = await http.post("/v1/executions", json={"input": "during the failover"}, headers=AUTH)
            figures["post_during_failover"] = during.status_code
            if during.status_code == 202:
                accepted.append(during.json()["execution_id"])
            await asyncio.sleep(5)
            await asyncio.to_thread(victim.start)
            figures["victim_down_s"] = round(time.monotonic() - killed_at, 1)

            tails = await asyncio.gather(
                *(
                    collect_events(ws_url, "key-a", e, cursor=head[-1]["cursor"], timeout=240)
                    for e, head in zip(resuming, heads, strict=True)
                )
            )
            finished = await asyncio.gather(*live)

            # Exactly once, in order: what a resuming client got is the execution's full stream as a new
            # subscriber replays it now, with nothing missing and nothing twice.
            for execution_id, head, tail in zip(resuming, heads, tails, strict=True):
                full = await collect_events(ws_url, "key-a", execution_id)
                assert head + tail == full, execution_id
                cursors = [i["cursor"] for i in full]
                assert cursors == sorted(set(cursors))
            assert all(items[-1]["event"]["type"] == "execution.completed" for items in [*tails, *finished])

            async def status(execution_id: str) -> str:
                r = await http.get(f"/v1/executions/{execution_id}", headers=AUTH)
                return str(r.json()["status"])

            async with asyncio.timeout(120):
                while (statuses := Counter(await asyncio.gather(*(status(e) for e in accepted)))) != {"completed": len(accepted)}:
                    await asyncio.sleep(1)
            figures |= {"accepted": len(accepted), "completed": statuses["completed"], "lost": len(accepted) - statuses["completed"]}

            # Two brokers down: min.insync.replicas=2 cannot be met, so nothing may be acknowledged.
            second, third = [n for n in cluster.nodes if n.node_id != victim_id][:2]
            second.kill()
            third.kill()
            refused = await asyncio.gather(*(http.post("/v1/executions", json={"input": "x"}, headers=AUTH) for _ in range(5)))
            figures["two_down_codes"] = dict(Counter(r.status_code for r in refused))
            assert all(r.status_code == 503 for r in refused), [(r.status_code, r.text) for r in refused]
            # Back to three (the services stop cleanly on a cluster that answers), and accepting again.
            await asyncio.gather(asyncio.to_thread(second.start), asyncio.to_thread(third.start))
            async with asyncio.timeout(60):
                while (again := await http.post("/v1/executions", json={"input": "after"}, headers=AUTH)).status_code != 202:
                    await asyncio.sleep(1)
            assert (await collect_events(ws_url, "key-a", again.json()["execution_id"], timeout=60))[-1]["event"][
                "type"
            ] == "execution.completed"

    print(f"\nfailover: {figures}")
    assert figures["lost"] == 0
