"""The result cache behind the orchestrator's door, on the real broker with the reference Embedding
Service (examples/services): a repeated embedding is served from the cache (the service counts one
call), another tenant's identical request is not, ``Cache-Control: no-cache`` bypasses and refreshes
it, the admin API invalidates one tenant's entries, and Redis shares it across replicas (or, down,
degrades every lookup to a miss)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from examples.services.embedders import HashingEmbedder
from examples.services.embedding import embedding_service
from examples.services.jobs import JobService, KafkaReporter
from examples.services.query import Index, load_docs, query_service
from services.common.settings import KafkaSettings
from services.executor.app import Executor
from services.executor.settings import ExecutorSettings
from services.orchestrator.app import create_app
from services.orchestrator.settings import ServiceEndpoint
from tests.databases import REDIS_URL
from tests.e2e.orchestrator.conftest import ADMIN, Orch, settings_for
from tests.support import collect_events, serve

pytestmark = pytest.mark.kafka

TOKEN = "embedding-svc-token"
TEXT = "embed: a cancel that arrives before start still cancels it"


@dataclass
class World:
    orch: Orch
    service: JobService

    async def embed(
        self, text: str = TEXT, *, key: str = "key-a", headers: dict[str, str] | None = None
    ) -> tuple[str, list[dict[str, Any]]]:
        r = await self.orch.post("/v1/executions", {"input": text, "agent": "docs"}, key=key, headers=headers)
        assert r.status_code == 202, r.text
        execution_id = str(r.json()["execution_id"])
        items = await collect_events(self.orch.ws_url, key, execution_id, timeout=30)
        events = [i["event"] for i in items]
        assert events[-1]["type"] == "execution.completed", events[-1]
        return execution_id, events


Launch = Callable[..., contextlib.AbstractAsyncContextManager[World]]


@pytest.fixture
async def service(kafka_settings: KafkaSettings) -> JobService:
    # Completions on jobs.completed: whichever orchestrator replica runs, it applies them.
    reporter = KafkaReporter(kafka_settings.bootstrap, kafka_settings.topics.jobs_completed)
    return embedding_service(HashingEmbedder(), token=TOKEN, reporter=reporter, delay_s=0.1)


@pytest.fixture
async def service_url(service: JobService) -> AsyncIterator[str]:
    async with serve(service.app()) as url:
        yield url


@pytest.fixture
def world(kafka_settings: KafkaSettings, tmp_path: Any, service: JobService, service_url: str) -> Launch:
    @contextlib.asynccontextmanager
    async def _launch(*, db: str = "state", **overrides: Any) -> AsyncIterator[World]:
        settings = settings_for(
            kafka_settings,
            f"sqlite+aiosqlite:///{tmp_path / (db + '.db')}",
            embedding_service=ServiceEndpoint(url=service_url, token=SecretStr(TOKEN), timeout_s=2.0, model="hashing-384"),
            **({"service_tokens": {"embedding": SecretStr(TOKEN)}, "service_backoff_s": 0.05} | overrides),
        )
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(Executor(ExecutorSettings(kafka=kafka_settings, scripted_token_delay_ms=1, job_timeout_s=10)))
            url = await stack.enter_async_context(serve(create_app(settings)))
            http = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=30))
            yield World(orch=Orch(url=url, http=http, settings=settings), service=service)

    return _launch


def progress(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == "tool.call.progress"]


def embeddings(events: list[dict[str, Any]]) -> Any:
    completed = next(e for e in events if e["type"] == "tool.call.completed")
    assert completed["error"] is None, completed
    return completed["result"]["embeddings"]


async def lookups(orch: Orch, outcome: str) -> float:
    """The orchestrator's count of embedding cache lookups with that outcome (the registry is per process)."""
    text = (await orch.http.get("/metrics")).text
    line = f'agentstream_service_cache_lookups_total{{outcome="{outcome}",service="embedding"}} '
    return sum(float(x[len(line) :]) for x in text.splitlines() if x.startswith(line))


async def job_call(orch: Orch, execution_id: str, *, key: str = "key-a") -> dict[str, Any]:
    plan = await orch.wait_for(
        f"/v1/executions/{execution_id}/plan",
        lambda p: any(c["kind"] == "job" and c["ended_at"] is not None for c in p["calls"]),
        key=key,
        timeout=15,
    )
    return next(c for c in plan["calls"] if c["kind"] == "job")


async def test_a_repeated_embedding_is_served_from_the_cache_and_another_tenants_is_not(world: Launch) -> None:
    async with world(result_cache="memory") as w:
        hits = await lookups(w.orch, "hit")
        first_id, first = await w.embed()
        assert len(w.service.received) == 1
        assert [p["status"] for p in progress(first)] == ["requested", "accepted", "completed"]

        second_id, second = await w.embed()
        assert len(w.service.received) == 1  # served from the cache: the service saw one call
        assert embeddings(second) == embeddings(first)
        assert [p["status"] for p in progress(second)] == ["requested", "completed"]
        assert "result cache" in progress(second)[-1]["detail"]

        # The plan says so; the hit cost no tokens and its usage says why.
        missed, hit = await job_call(w.orch, first_id), await job_call(w.orch, second_id)
        assert missed["outcome"] == "completed" and not (missed["meta"] or {}).get("cached")
        assert hit["outcome"] == "completed" and hit["meta"]["cached"] is True and hit["meta"]["cached_from"] == missed["job_id"]
        assert "served from the result cache" in hit["detail"]
        task = (await w.orch.get(f"/v1/tasks/{hit['job_id']}")).json()
        assert task["status"] == "completed" and task["result"] == w.service.reports[0][0]["result"]
        assert task["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "cached": True}
        assert (await w.orch.get(f"/v1/tasks/{missed['job_id']}")).json()["usage"] is None  # the service reported none
        # Usage: the two executions' model tokens, and nothing for the hit (not even a zero row).
        model_tokens = first[-1]["usage"]["total_tokens"] + second[-1]["usage"]["total_tokens"]
        report = await w.orch.wait_for("/v1/usage", lambda r: bool(r["rows"]) and r["rows"][0]["executions"] >= 2)
        assert report["rows"][0]["executions"] == 2 and report["rows"][0]["total_tokens"] == model_tokens

        # Another tenant's identical request is not served from tenant a's entry.
        _, other = await w.embed(key="key-b")
        assert len(w.service.received) == 2 and w.service.received[1]["tenant_id"] == "tenant-b"
        assert [p["status"] for p in progress(other)] == ["requested", "accepted", "completed"]

        assert await lookups(w.orch, "hit") == hits + 1


async def test_no_cache_bypasses_and_refreshes_and_the_admin_api_invalidates_a_tenant(world: Launch) -> None:
    async with world(result_cache="memory") as w:
        await w.embed()
        await w.embed(key="key-b")
        assert len(w.service.received) == 2

        # Cache-Control: no-cache goes to the service, and its fresh result replaces the entry.
        bypass_id, _ = await w.embed(headers={"Cache-Control": "no-cache"})
        assert len(w.service.received) == 3
        refreshed = await job_call(w.orch, bypass_id)
        hit_id, _ = await w.embed()
        assert len(w.service.received) == 3
        assert (await job_call(w.orch, hit_id))["meta"]["cached_from"] == refreshed["job_id"]

        # Invalidating tenant a's entries leaves tenant b's.
        admin = {"Authorization": f"Bearer {ADMIN}"}
        assert (await w.orch.http.delete("/v1/admin/tenants/tenant-a/cache")).status_code == 401
        r = await w.orch.http.delete("/v1/admin/tenants/tenant-a/cache", headers=admin)
        assert r.status_code == 200 and r.json() == {"tenant_id": "tenant-a", "invalidated": 1}
        await w.embed()
        assert len(w.service.received) == 4
        await w.embed(key="key-b")
        assert len(w.service.received) == 4


async def test_two_replicas_sharing_one_redis_see_one_call(world: Launch) -> None:
    shared = {"redis_url": SecretStr(REDIS_URL), "redis_key_prefix": f"t{uuid.uuid4().hex[:10]}:"}
    async with world(db="a", **shared) as a:
        await a.embed()
    assert len(a.service.received) == 1
    # Another replica, its own database and process memory: only Redis in common.
    async with world(db="b", **shared) as b:
        execution_id, _ = await b.embed()
        assert len(b.service.received) == 1
        assert (await job_call(b.orch, execution_id))["meta"]["cached"] is True


async def test_a_redis_that_is_down_degrades_to_a_miss(world: Launch) -> None:
    # Nothing listens there: every lookup and store fails, and every request is still answered.
    async with world(result_cache_redis_url=SecretStr("redis://127.0.0.1:34999/0"), result_cache_redis_timeout_s=0.2) as w:
        errors = await lookups(w.orch, "error")
        first_id, first = await w.embed()
        _, second = await w.embed()
        assert len(w.service.received) == 2 and embeddings(second) == embeddings(first)
        assert not ((await job_call(w.orch, first_id))["meta"] or {}).get("cached")
        assert await lookups(w.orch, "error") == errors + 2
        # The admin API says the store failed (503), it does not 500.
        r = await w.orch.http.delete("/v1/admin/tenants/tenant-a/cache", headers={"Authorization": f"Bearer {ADMIN}"})
        assert r.status_code == 503, r.text


async def test_an_invalidation_reaches_every_replicas_in_process_cache(kafka_settings: KafkaSettings, tmp_path: Any) -> None:
    """Two replicas with in-process caches share nothing but Kafka: the admin call on one drops the
    tenant's entries on the other too (cache.invalidations), and leaves other tenants' alone."""
    apps = [create_app(settings_for(kafka_settings, f"sqlite+aiosqlite:///{tmp_path / name}.db", result_cache="memory")) for name in "ab"]
    async with serve(apps[0]) as url_a, serve(apps[1]):
        cache = apps[1].state.agentstream.runtime.coordinator.cache
        assert cache is not None
        keys = {tenant: cache.key_for(tenant, "embedding", {"texts": ["x"]}) for tenant in ("tenant-a", "tenant-b")}
        for tenant, k in keys.items():
            assert k is not None and await cache.put(k, {"model": "m", "embeddings": [[1.0]]}, job_id=f"job_{tenant}")
        async with httpx.AsyncClient(base_url=url_a, timeout=30) as http:
            r = await http.delete("/v1/admin/tenants/tenant-a/cache", headers={"Authorization": f"Bearer {ADMIN}"})
        assert r.status_code == 200 and r.json() == {"tenant_id": "tenant-a", "invalidated": 0}  # replica a held none
        async with asyncio.timeout(20):
            while await cache.get(keys["tenant-a"]) is not None:
                await asyncio.sleep(0.05)
        assert await cache.get(keys["tenant-b"]) is not None


async def test_a_repeated_question_is_answered_from_the_cache_and_its_tokens_are_paid_once(
    kafka_settings: KafkaSettings, tmp_path: Any
) -> None:
    """The Query Service reports tokens: the miss counts them toward the tenant's usage, the hit does not."""
    reporter = KafkaReporter(kafka_settings.bootstrap, kafka_settings.topics.jobs_completed)
    query = query_service(Index(load_docs(), HashingEmbedder()), token=TOKEN, reporter=reporter, delay_s=0.1)
    question = "What do the docs say about a cancel that arrives before start?"
    async with contextlib.AsyncExitStack() as stack:
        query_url = await stack.enter_async_context(serve(query.app()))
        settings = settings_for(
            kafka_settings,
            f"sqlite+aiosqlite:///{tmp_path / 'q.db'}",
            query_service=ServiceEndpoint(url=query_url, token=SecretStr(TOKEN), timeout_s=2.0),
            service_tokens={"query": SecretStr(TOKEN)},
            result_cache="memory",
        )
        await stack.enter_async_context(Executor(ExecutorSettings(kafka=kafka_settings, scripted_token_delay_ms=1, job_timeout_s=10)))
        url = await stack.enter_async_context(serve(create_app(settings)))
        http = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=30))
        w = World(orch=Orch(url=url, http=http, settings=settings), service=query)
        _, first = await w.embed(question)
        # The same question with other spacing is the same request (a query's whitespace is collapsed).
        _, second = await w.embed("What do the docs say about a cancel  that arrives before   start?")
        assert len(query.received) == 1
        answers = [next(e for e in events if e["type"] == "tool.call.completed")["result"]["answer"] for events in (first, second)]
        assert answers[0] == answers[1]
        assert [p["status"] for p in progress(second)] == ["requested", "completed"]
        service_tokens = int(query.reports[0][0]["usage"]["total_tokens"])
        assert service_tokens > 0
        model_tokens = sum(int(events[-1]["usage"]["total_tokens"]) for events in (first, second))
        # A usage row per execution and for the paid job, none for the hit: its tokens were paid once.
        report = await w.orch.wait_for("/v1/usage", lambda r: bool(r["rows"]) and r["rows"][0]["executions"] >= 3)
        assert report["rows"][0]["executions"] == 3
        assert report["rows"][0]["total_tokens"] == model_tokens + service_tokens


async def test_a_failed_job_is_not_cached(world: Launch) -> None:
    async with world(result_cache="memory") as w:
        w.service.behaviour = "garbage_result"  # its result fails the embedding check: the job fails
        failed_id, failed = await w.embed()
        assert next(e for e in failed if e["type"] == "tool.call.completed")["error"] is not None
        assert (await job_call(w.orch, failed_id))["outcome"] == "failed"
        w.service.behaviour = "ok"
        ok_id, _ = await w.embed()
        assert len(w.service.received) == 2  # asked again: the failure was not kept
        assert not ((await job_call(w.orch, ok_id))["meta"] or {}).get("cached")


async def test_a_result_larger_than_the_bound_is_not_cached(world: Launch) -> None:
    async with world(result_cache="memory", result_cache_max_value_bytes=1000) as w:  # one 384-dim vector is ~7 kB
        await w.embed()
        await w.embed()
        assert len(w.service.received) == 2


async def test_no_cache_on_a_batch_holds_for_every_item(world: Launch) -> None:
    async with world(result_cache="memory") as w:
        await w.embed()
        assert len(w.service.received) == 1
        items = [{"input": TEXT, "agent": "docs"}, {"input": TEXT, "agent": "docs"}]
        r = await w.orch.post("/v1/batches", {"items": items}, headers={"Cache-Control": "no-cache"})
        assert r.status_code in (200, 201, 202), r.text
        batch_id = r.json()["batch_id"]
        await w.orch.wait_for(f"/v1/batches/{batch_id}", lambda b: b["status"] == "completed", timeout=30)
        assert len(w.service.received) == 3  # both items asked the service, neither was served the entry
