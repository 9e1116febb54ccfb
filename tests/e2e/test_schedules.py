"""Schedules on the real broker: with two orchestrator replicas running, and across a restart of one,
every slot of a schedule fires exactly once (one ``execution.requested`` on the lanes per slot, none
skipped), each firing is an ordinary execution with its own id, visible on either replica."""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from pydantic import SecretStr

from schemas.schedules import ScheduleClaim
from services.common.kafka import make_producer, partitions_of
from services.common.observability import metrics
from services.common.settings import KafkaSettings
from services.executor.app import Executor
from services.executor.settings import ExecutorSettings
from services.orchestrator.app import create_app
from services.orchestrator.schedules.book import execution_id_for
from services.orchestrator.schedules.log import claim_key
from services.orchestrator.settings import OrchestratorSettings
from tests.e2e.conftest import KEYS
from tests.support import serve

pytestmark = pytest.mark.kafka

AUTH = {"Authorization": "Bearer key-a"}


def _settings(kafka: KafkaSettings, tmp_path: Path) -> OrchestratorSettings:
    return OrchestratorSettings(
        kafka=kafka,
        api_keys=KEYS,
        database_url=SecretStr(f"sqlite+aiosqlite:///{tmp_path / 'state.db'}"),  # shared, like replicas
        schedule_min_interval_s=1,
        schedule_tick_s=0.1,
        schedule_misfire_grace_s=60,  # a loaded machine's late tick is not a missed slot
    )


@contextlib.asynccontextmanager
async def _replica(settings: OrchestratorSettings) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(create_app(settings)) as url, httpx.AsyncClient(base_url=url, headers=AUTH, timeout=30) as http:
        yield http


async def _values(kafka: KafkaSettings, topics: tuple[str, ...]) -> list[Any]:
    """Every record value (JSON) on ``topics``, tombstones left out."""
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [tp for topic in topics for tp in await partitions_of(consumer, topic)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        values: list[Any] = []
        async with asyncio.timeout(30):
            while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    values.extend(orjson.loads(r.value) for r in records if r.value is not None)
        return values
    finally:
        await consumer.stop()


async def _requested(kafka: KafkaSettings) -> list[str]:
    """The execution ids of every ``execution.requested`` on the lanes, once per record."""
    return [value["execution_id"] for value in await _values(kafka, kafka.topics.lanes)]


async def _fired_until(http: httpx.AsyncClient, schedule_id: str, count_at_least: int, created_ms: int, step_ms: int) -> int:
    """Wait until the schedule's last fired slot is at least the ``count_at_least``-th; return that slot."""
    target = created_ms + count_at_least * step_ms
    async with asyncio.timeout(60):
        while True:
            view = (await http.get(f"/v1/schedules/{schedule_id}")).json()
            last = view["last_fired_at"]
            if last is not None and _ms(last) >= target:
                return _ms(last)
            await asyncio.sleep(0.1)


async def _send_ghost_claim(kafka: KafkaSettings, schedule_id: str, slot: int, claimed_ms: int) -> None:
    """The claim of a replica that then dies: it wins ``slot`` if it is first, and never submits it."""
    ghost = ScheduleClaim(schedule_id=schedule_id, tenant_id="tenant-a", revision=0, slot_ms=slot, replica="ghost", claimed_ms=claimed_ms)
    producer = make_producer(kafka, client_id="ghost")
    await producer.start()
    try:
        await producer.send_and_wait(
            kafka.topics.schedules,
            value=ghost.model_dump_json().encode(),
            key=claim_key(schedule_id, slot).encode(),
            partition=zlib.crc32(schedule_id.encode()) % 3,  # the schedule's partition (schedules/log.py)
        )
    finally:
        await producer.stop()


def _ms(iso: str) -> int:
    from datetime import datetime

    return round(datetime.fromisoformat(iso).timestamp() * 1000)


async def test_a_schedule_fires_once_per_slot_with_two_replicas_and_across_a_restart(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    settings = _settings(kafka_settings, tmp_path)
    body: dict[str, Any] = {"name": "every second", "interval_s": 1, "target": {"kind": "execution", "agent": "default", "input": "2+2"}}
    async with Executor(ExecutorSettings(kafka=kafka_settings, scripted_token_delay_ms=1)):
        async with _replica(settings) as b:
            async with _replica(settings) as a:
                r = await a.post("/v1/schedules", json=body)
                assert r.status_code == 201, r.text
                created = r.json()
                schedule_id = created["schedule_id"]
                created_ms = _ms(created["created_at"])
                await _fired_until(b, schedule_id, 4, created_ms, 1000)  # B sees A's schedule and the firings
            # A is gone; B alone goes on.
            await _fired_until(b, schedule_id, 7, created_ms, 1000)
            async with _replica(settings) as a:  # A again: it rebuilds from the log, fires no slot twice
                await _fired_until(a, schedule_id, 11, created_ms, 1000)
                r = await a.patch(f"/v1/schedules/{schedule_id}", json={"paused": True})
                assert r.status_code == 200, r.text
                assert r.json()["paused"] is True and r.json()["next_fire_at"] is None
                last = _ms(r.json()["last_fired_at"])
                execution_id = r.json()["last_execution_id"]
                assert execution_id == execution_id_for("tenant-a", schedule_id, last)
                async with asyncio.timeout(60):  # the firing is an ordinary execution, on either replica
                    while (e := await b.get(f"/v1/executions/{execution_id}")).status_code != 200 or e.json()["status"] != "completed":
                        await asyncio.sleep(0.1)
                async with asyncio.timeout(60):  # in the task registry: origin schedule, and which schedule
                    while not [
                        row
                        for row in (await b.get("/v1/executions", params={"limit": 100})).json()["executions"]
                        if row["execution_id"] == execution_id
                    ]:
                        await asyncio.sleep(0.1)
                rows = (await b.get("/v1/executions", params={"limit": 100})).json()["executions"]
                assert {(row["origin"], row["schedule_id"]) for row in rows} == {("schedule", schedule_id)}
                paused_at = time.time()
                async with asyncio.timeout(30):  # wait for both replicas' views of the pause to be behind us
                    while time.time() < paused_at + 2.5:
                        await asyncio.sleep(0.1)
                after_pause = (await b.get(f"/v1/schedules/{schedule_id}")).json()
        requested = await _requested(kafka_settings)
    # A bid sent before the pause reached the log may still win its slot: the log's order decides.
    final = _ms(after_pause["last_fired_at"])
    assert last <= final <= last + 2000
    last = final
    fired = [execution_id_for("tenant-a", schedule_id, created_ms + k * 1000) for k in range(1, (last - created_ms) // 1000 + 1)]
    counts = Counter(requested)
    assert [counts[i] for i in fired] == [1] * len(fired)  # every slot up to the last once: none twice, none skipped
    assert set(requested) == set(fired)  # and nothing after the pause (slots are at created + k s)


async def test_slots_missed_while_every_replica_was_down_follow_catch_up(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    settings = _settings(kafka_settings, tmp_path)
    every = {"interval_s": 1, "target": {"input": "2+2"}}
    async with Executor(ExecutorSettings(kafka=kafka_settings, scripted_token_delay_ms=1)):
        async with _replica(settings) as a:
            made = [(await a.post("/v1/schedules", json=every | {"catch_up": policy})).json() for policy in ("all", "latest")]
            (all_id, all_ms), (latest_id, latest_ms) = ((m["schedule_id"], _ms(m["created_at"])) for m in made)
            await _fired_until(a, all_id, 2, all_ms, 1000)
            await _fired_until(a, latest_id, 2, latest_ms, 1000)
        down_ms = round(time.time() * 1000)
        async with asyncio.timeout(30):  # every replica down while four slots pass
            while time.time() * 1000 < down_ms + 4000:
                await asyncio.sleep(0.1)
        back_ms = round(time.time() * 1000)
        # A slot older than 1 s now counts as missed (not as a late tick).
        async with _replica(settings.model_copy(update={"schedule_misfire_grace_s": 1})) as a:
            await _fired_until(a, all_id, (back_ms - all_ms) // 1000 + 2, all_ms, 1000)
            last_latest = await _fired_until(a, latest_id, (back_ms - latest_ms) // 1000 + 2, latest_ms, 1000)
            last_all = _ms((await a.patch(f"/v1/schedules/{all_id}", json={"paused": True})).json()["last_fired_at"])
            await a.patch(f"/v1/schedules/{latest_id}", json={"paused": True})
            last_latest = _ms((await a.get(f"/v1/schedules/{latest_id}")).json()["last_fired_at"])
        requested = Counter(await _requested(kafka_settings))
    # catch_up=all: every slot, the missed ones too, once each.
    all_slots = range(all_ms + 1000, last_all + 1, 1000)
    assert [requested[execution_id_for("tenant-a", all_id, s)] for s in all_slots] == [1] * len(all_slots)
    # catch_up=latest: once each, and of the slots missed while down only the latest (at most one before the restart).
    latest_slots = list(range(latest_ms + 1000, last_latest + 1, 1000))
    fired = [s for s in latest_slots if requested[execution_id_for("tenant-a", latest_id, s)]]
    assert all(requested[execution_id_for("tenant-a", latest_id, s)] == 1 for s in fired)
    missed = [s for s in latest_slots if down_ms + 1000 < s < back_ms]
    assert len(missed) >= 2
    assert len([s for s in missed if s in fired]) <= 1
    assert fired[-1] == last_latest and len(fired) < len(latest_slots)


async def test_a_slot_whose_winning_replica_died_before_submitting_is_taken_over(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    settings = _settings(kafka_settings, tmp_path).model_copy(update={"schedule_takeover_s": 1})
    async with Executor(ExecutorSettings(kafka=kafka_settings, scripted_token_delay_ms=1)), _replica(settings) as a:
        made = (await a.post("/v1/schedules", json={"interval_s": 3, "target": {"input": "2+2"}})).json()
        schedule_id, created_ms = made["schedule_id"], _ms(made["created_at"])
        slot = created_ms + 3000
        # A replica that wins the first slot and dies before it submits: its claim is on the log, first.
        await _send_ghost_claim(kafka_settings, schedule_id, slot, created_ms)
        execution_id = execution_id_for("tenant-a", schedule_id, slot)
        async with asyncio.timeout(60):
            while (await a.get(f"/v1/executions/{execution_id}")).status_code != 200:
                await asyncio.sleep(0.1)
        await _fired_until(a, schedule_id, 2, created_ms, 3000)
        await a.patch(f"/v1/schedules/{schedule_id}", json={"paused": True})
        requested = Counter(await _requested(kafka_settings))
    assert requested[execution_id] == 1
    assert requested[execution_id_for("tenant-a", schedule_id, slot + 3000)] == 1


async def test_a_slot_won_just_before_every_replica_stopped_is_taken_over_after_the_restart(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    settings = _settings(kafka_settings, tmp_path).model_copy(update={"schedule_takeover_s": 1})
    async with Executor(ExecutorSettings(kafka=kafka_settings, scripted_token_delay_ms=1)):
        async with _replica(settings) as a:
            made = (await a.post("/v1/schedules", json={"interval_s": 10, "target": {"input": "2+2"}})).json()
        schedule_id, created_ms = made["schedule_id"], _ms(made["created_at"])
        slot = created_ms + 10_000
        # The only replica won the first slot and died before it submitted (its claim is the last record).
        await _send_ghost_claim(kafka_settings, schedule_id, slot, created_ms)
        execution_id = execution_id_for("tenant-a", schedule_id, slot)
        async with _replica(settings) as a:
            async with asyncio.timeout(60):
                while (await a.get(f"/v1/executions/{execution_id}")).status_code != 200:
                    await asyncio.sleep(0.1)
            await a.patch(f"/v1/schedules/{schedule_id}", json={"paused": True})
        requested = Counter(await _requested(kafka_settings))
    assert requested[execution_id] == 1


async def test_a_firing_the_tenants_limits_refuse_is_counted_not_retried(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    settings = _settings(kafka_settings, tmp_path).model_copy(update={"requests_per_minute": 2, "schedule_takeover_s": 0.5})
    labels = {"outcome": "refused"}
    refused_before = metrics.sample(metrics.ORCHESTRATOR, "agentstream_schedule_firings_total", labels)
    async with Executor(ExecutorSettings(kafka=kafka_settings, scripted_token_delay_ms=1)), _replica(settings) as a:
        made = (await a.post("/v1/schedules", json={"interval_s": 1, "target": {"input": "2+2"}})).json()
        schedule_id, created_ms = made["schedule_id"], _ms(made["created_at"])
        fifth = await _fired_until(a, schedule_id, 5, created_ms, 1000)
        async with asyncio.timeout(30):  # time for takeovers of the refused slot (none may come)
            while time.time() * 1000 < fifth + 800:
                await asyncio.sleep(0.05)
        await a.patch(f"/v1/schedules/{schedule_id}", json={"paused": True})
        async with asyncio.timeout(30):  # the fifth slot's refusal is counted a moment after its win
            while metrics.sample(metrics.ORCHESTRATOR, "agentstream_schedule_firings_total", labels) < refused_before + 3:
                await asyncio.sleep(0.05)
        requested = await _requested(kafka_settings)
        claims = [v for v in await _values(kafka_settings, (kafka_settings.topics.schedules,)) if v["type"] == "schedule.claimed"]
    # The winner settled each refused slot: no replica bid to take one over.
    assert [c for c in claims if c["round"] > 0] == []
    assert sum(1 for c in claims if c["settled"]) >= 3
    # Two requests a minute: the first two slots ran, the next ones were refused once each and not retried.
    assert sorted(requested) == sorted(execution_id_for("tenant-a", schedule_id, created_ms + k * 1000) for k in (1, 2))
