"""Traces, metrics and logs of a real execution: HTTP -> Kafka -> executor -> Kafka -> bridge -> WebSocket."""

from __future__ import annotations

import asyncio
import io
import logging
import secrets
import socket
from collections.abc import AsyncIterator, Iterator

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from services.common.kafka import header
from services.common.observability.logs import configure_logging
from services.common.observability.settings import install_provider
from services.common.settings import KafkaSettings
from services.executor.app import Executor
from services.executor.settings import ExecutorSettings
from services.orchestrator.app import create_app
from services.orchestrator.settings import OrchestratorSettings
from tests.support import collect_events, serve

pytestmark = pytest.mark.kafka

KEYS = {"obs-key": "obs-tenant", "limited-key": "limited-tenant"}


class _Capture(SpanProcessor):
    """Forwards ended spans to the in-memory exporter only while a test listens."""

    def __init__(self, exporter: InMemorySpanExporter) -> None:
        self.inner = SimpleSpanProcessor(exporter)
        self.on = False

    def on_end(self, span: ReadableSpan) -> None:
        if self.on:
            self.inner.on_end(span)


_exporter = InMemorySpanExporter()
_capture = _Capture(_exporter)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    provider = install_provider("agentstream-tests")
    assert isinstance(provider, TracerProvider)
    if _capture not in provider._active_span_processor._span_processors:
        provider.add_span_processor(_capture)
    _exporter.clear()
    _capture.on = True
    try:
        yield _exporter
    finally:
        _capture.on = False
        _exporter.clear()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Obs:
    def __init__(self, url: str, http: httpx.AsyncClient, executor: Executor, kafka: KafkaSettings) -> None:
        self.url, self.http, self.executor, self.kafka = url, http, executor, kafka

    @property
    def ws_url(self) -> str:
        return self.url.replace("http", "ws", 1)


@pytest.fixture
async def obs(kafka_settings: KafkaSettings) -> AsyncIterator[Obs]:
    orch = OrchestratorSettings(kafka=kafka_settings, api_keys=KEYS, requests_per_minute=0)
    executor_settings = ExecutorSettings(kafka=kafka_settings, scripted_token_delay_ms=1, metrics_port=_free_port())
    async with Executor(executor_settings) as executor:
        async with serve(create_app(orch)) as url, httpx.AsyncClient(base_url=url) as http:
            yield Obs(url, http, executor, kafka_settings)


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def _value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls)


async def _run(obs: Obs, *, headers: dict[str, str] | None = None, text: str = "what is 12*7?") -> str:
    r = await obs.http.post("/v1/executions", json={"input": text}, headers={"Authorization": "Bearer obs-key", **(headers or {})})
    assert r.status_code == 202, r.text
    execution_id = str(r.json()["execution_id"])
    items = await collect_events(obs.ws_url, "obs-key", execution_id)
    assert items[-1]["event"]["type"] == "execution.completed"
    return execution_id


async def test_metrics_on_both_services(obs: Obs) -> None:
    before = _samples((await obs.http.get("/metrics")).text)
    await _run(obs)
    async with asyncio.timeout(10):  # the orchestrator applies the end when its events follower sees it
        while True:
            orchestrator = (await obs.http.get("/metrics")).text
            after = _samples(orchestrator)
            if _value(after, "agentstream_executions_total", state="completed") > _value(
                before, "agentstream_executions_total", state="completed"
            ):
                break
            await asyncio.sleep(0.05)

    def grew(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert grew("agentstream_http_requests_total", method="POST", route="/v1/executions", status="202") == 1
    assert grew("agentstream_http_request_duration_seconds_count", route="/v1/executions") == 1
    assert grew("agentstream_executions_total", state="queued", lane="standard") == 1
    assert grew("agentstream_executions_total", state="completed", lane="standard") == 1
    assert grew("agentstream_token_delivery_latency_seconds_count") >= 1
    assert grew("agentstream_tokens_total", tenant="obs-tenant", agent="default", provider="scripted", kind="completion") > 0
    assert ("agentstream_stream_subscriptions", frozenset()) in after

    async with httpx.AsyncClient() as client:
        executor = _samples((await client.get(f"http://127.0.0.1:{obs.executor.settings.metrics_port}/metrics")).text)
    assert _value(executor, "agentstream_executor_executions_total", state="completed", lane="standard") >= 1
    assert _value(executor, "agentstream_tool_calls_total", tool="calculator", outcome="ok") >= 1
    lag = [ls for (n, ls) in executor if n == "agentstream_consumer_lag"]
    assert lag and all(("group", obs.executor.settings.consumer_group) in ls for ls in lag)
    assert _value(executor, "agentstream_consumer_lag", topic=obs.kafka.topics.lane("standard")) == 0
    assert ("agentstream_executions_in_flight", frozenset()) in executor


async def test_dlq_and_rate_limit_rejections_are_counted(kafka_settings: KafkaSettings) -> None:
    from aiokafka import AIOKafkaProducer

    from services.common.observability import metrics

    orch = OrchestratorSettings(kafka=kafka_settings, api_keys=KEYS, requests_per_minute=1)
    dlq_before = metrics.sample(metrics.COMMON, "agentstream_dlq_records_total", {"topic": kafka_settings.topics.lane("standard")})
    limited_before = metrics.sample(
        metrics.ORCHESTRATOR, "agentstream_rate_limit_rejections_total", {"tenant": "limited-tenant", "limit": "requests_per_minute"}
    )
    async with Executor(ExecutorSettings(kafka=kafka_settings, scripted_token_delay_ms=1)):
        producer = AIOKafkaProducer(bootstrap_servers=kafka_settings.bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(kafka_settings.topics.lane("standard"), key=b"x", value=b"{poison")
        finally:
            await producer.stop()
        async with serve(create_app(orch)) as url, httpx.AsyncClient(base_url=url) as http:
            auth = {"Authorization": "Bearer limited-key"}
            assert (await http.post("/v1/executions", json={"input": "hi"}, headers=auth)).status_code == 202
            assert (await http.post("/v1/executions", json={"input": "hi"}, headers=auth)).status_code == 429
            async with asyncio.timeout(20):
                while (
                    metrics.sample(metrics.COMMON, "agentstream_dlq_records_total", {"topic": kafka_settings.topics.lane("standard")})
                    == dlq_before
                ):
                    await asyncio.sleep(0.05)
            text = (await http.get("/metrics")).text
    assert 'agentstream_dlq_records_total{topic="' + kafka_settings.topics.lane("standard") + '"}' in text
    after = metrics.sample(
        metrics.ORCHESTRATOR, "agentstream_rate_limit_rejections_total", {"tenant": "limited-tenant", "limit": "requests_per_minute"}
    )
    assert after == limited_before + 1


async def test_one_trace_spans_every_hop(obs: Obs, spans: InMemorySpanExporter) -> None:
    trace_id = secrets.token_hex(16)
    execution_id = await _run(obs, headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"})
    async with asyncio.timeout(10):
        while not {"bridge deliver", "execute default"} <= {
            s.name for s in spans.get_finished_spans() if s.context.trace_id == int(trace_id, 16)
        }:
            await asyncio.sleep(0.05)
    mine = [s for s in spans.get_finished_spans() if s.context.trace_id == int(trace_id, 16)]
    by_name = {s.name: s for s in mine}
    http = by_name["POST /v1/executions"]
    publish = by_name[f"publish {obs.kafka.topics.lane('standard')}"]
    consume = by_name["execute default"]
    llm = [s for s in mine if s.name == "llm scripted"]
    tool = by_name["tool calculator"]
    deliver = [s for s in mine if s.name == "bridge deliver"]
    assert http.kind == SpanKind.SERVER and publish.kind == SpanKind.PRODUCER and consume.kind == SpanKind.CONSUMER
    assert publish.parent is not None and publish.parent.span_id == http.context.span_id
    assert consume.parent is not None and consume.parent.span_id == publish.context.span_id
    assert len(llm) == 2 and all(s.parent is not None and s.parent.span_id == consume.context.span_id for s in llm)
    assert tool.parent is not None and tool.parent.span_id == consume.context.span_id
    assert all(d.parent is not None and d.parent.span_id == consume.context.span_id for d in deliver)
    assert sum(int(str((s.attributes or {}).get("gen_ai.usage.output_tokens", 0))) for s in llm) > 0
    assert consume.attributes is not None and consume.attributes["agentstream.execution_id"] == execution_id

    # Every event the executor emitted carries its traceparent: the consume span's context.
    consumer = AIOKafkaConsumer(obs.kafka.topics.events, bootstrap_servers=obs.kafka.bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        records: list[ConsumerRecord[bytes, bytes]] = []
        async with asyncio.timeout(10):
            while not records or header(records[-1].headers, "type") != "execution.completed":
                batch = await consumer.getmany(timeout_ms=500)
                records += [r for rs in batch.values() for r in rs if r.key == execution_id.encode()]
    finally:
        await consumer.stop()
    expected = f"00-{trace_id}-{consume.context.span_id:016x}-01"
    assert {header(r.headers, "traceparent") for r in records} == {expected}
    # No span per token: the bridge's delivery spans are at most one per event other than a token
    # (how many fetch batches those fall in varies), and the other hops a handful for the execution.
    others = [r for r in records if header(r.headers, "type") != "token.delta"]
    assert len(records) > len(others)  # it streamed tokens
    assert len(deliver) <= len(others), (len(deliver), [header(r.headers, "type") for r in others])
    assert len(mine) - len(deliver) <= 7, sorted(s.name for s in mine)


async def test_json_logs_carry_ids_and_never_a_secret(kafka_settings: KafkaSettings, spans: InMemorySpanExporter) -> None:
    from tests.fakes.openai_server import FakeOpenAI

    secret = "sk-live-" + secrets.token_hex(16)
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    configure_logging(service="test", level="DEBUG", secrets=[secret, *KEYS], stream=stream)
    try:
        async with FakeOpenAI() as fake:
            settings = ExecutorSettings(kafka=kafka_settings, openai_api_key=SecretStr(secret), openai_base_url=fake.openai_url)
            orch = OrchestratorSettings(kafka=kafka_settings, api_keys=KEYS)
            async with Executor(settings), serve(create_app(orch)) as url, httpx.AsyncClient(base_url=url) as http:
                r = await http.post("/v1/executions", json={"input": "hello"}, headers={"Authorization": "Bearer obs-key"})
                execution_id = r.json()["execution_id"]
                items = await collect_events(url.replace("http", "ws", 1), "obs-key", execution_id)
                assert items[-1]["event"]["type"] == "execution.completed", items[-1]
                logging.getLogger("agentstream.test").warning("leak attempt: key=%s header=Bearer obs-key", secret)
            assert fake.requests and fake.requests[0].headers.get("authorization") == f"Bearer {secret}"
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    text = stream.getvalue()
    assert secret not in text and "obs-key" not in text
    lines = [orjson.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert lines and all({"ts", "level", "logger", "message", "service"} <= set(line) for line in lines)
    in_execution = [line for line in lines if line.get("execution_id") == execution_id]
    assert in_execution, "no log line of the execution carries its id"
    assert all(line["tenant_id"] == "obs-tenant" and len(line.get("trace_id", "")) == 32 for line in in_execution)
    assert any("[REDACTED]" in line["message"] for line in lines)
