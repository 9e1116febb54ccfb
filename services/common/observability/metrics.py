"""Prometheus metrics: one registry per service plus one for what both do (DLQ, tokens).

Each service's ``/metrics`` serves its own registry and ``COMMON``. Values that live in objects
(consumer lag, executions in flight, stream subscriptions) are read at scrape time from the live
objects that registered a source, never updated on the hot path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

ORCHESTRATOR = CollectorRegistry(auto_describe=True)
EXECUTOR = CollectorRegistry(auto_describe=True)
COMMON = CollectorRegistry(auto_describe=True)

Samples = Callable[[], Iterable[tuple[tuple[str, ...], float]]]


class SourcedGauge(Collector):
    """A gauge whose samples come from live objects at scrape time (several per process in tests)."""

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...], registry: CollectorRegistry) -> None:
        self._name, self._doc, self._labels = name, documentation, labels
        self._sources: dict[int, Samples] = {}
        registry.register(self)

    def add(self, owner: object, samples: Samples) -> None:
        self._sources[id(owner)] = samples

    def remove(self, owner: object) -> None:
        self._sources.pop(id(owner), None)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(self._name, self._doc, labels=self._labels)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self._name, self._doc, labels=self._labels)
        totals: dict[tuple[str, ...], float] = {}
        for samples in list(self._sources.values()):
            for labels, value in samples():
                totals[labels] = totals.get(labels, 0.0) + value
        for labels, value in totals.items():
            family.add_metric(list(labels), value)
        yield family


# -- both services ------------------------------------------------------------------------------
class _AsyncioTasks(Collector):
    """Tasks alive in the event loop that serves the scrape: a leak shows as steady growth (soak test)."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            count = len(asyncio.all_tasks())
        except RuntimeError:  # scraped outside a running loop
            return
        yield GaugeMetricFamily("agentstream_asyncio_tasks", "asyncio tasks alive in the service's event loop", value=count)


COMMON.register(_AsyncioTasks())
ProcessCollector(registry=COMMON)  # process_resident_memory_bytes, process_open_fds, CPU seconds
DLQ_RECORDS = Counter("agentstream_dlq_records", "Records sent to the dead-letter topic", ["topic"], registry=COMMON)
DLQ_FAILURES = Counter(
    "agentstream_dlq_failures", "Records a reader gave up on whose DLQ copy could not be sent (logged)", ["topic"], registry=COMMON
)
READER_RESTARTS = Counter("agentstream_reader_restarts", "Reader tasks that died and were restarted", ["reader"], registry=COMMON)
READER_UP = SourcedGauge(
    "agentstream_reader_up", "1 while a reader is fetching, 0 while it is starting, restarting or stopped", ("reader",), COMMON
)
TOKENS = Counter(
    "agentstream_tokens", "Tokens used by model calls", ["tenant", "agent", "provider", "kind"], registry=COMMON
)  # counted where the call ends (executor)

# -- orchestrator -------------------------------------------------------------------------------
HTTP_REQUESTS = Counter("agentstream_http_requests", "HTTP requests answered", ["method", "route", "status"], registry=ORCHESTRATOR)
HTTP_DURATION = Histogram(
    "agentstream_http_request_duration_seconds",
    "HTTP request handling time",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=ORCHESTRATOR,
)
EXECUTIONS = Counter(
    "agentstream_executions", "Executions by state reached (orchestrator's view) and lane", ["state", "lane"], registry=ORCHESTRATOR
)
CACHE_LOOKUPS = Counter(
    "agentstream_service_cache_lookups",
    "Query/Embedding result cache lookups: hit, miss, bypass (no-cache), error or skipped (store failing: a miss)",
    ["service", "outcome"],
    registry=ORCHESTRATOR,
)
CACHE_STORES = Counter(
    "agentstream_service_cache_stores",
    "Results offered to the cache: stored, too_large, error or skipped (store failing)",
    ["service", "outcome"],
    registry=ORCHESTRATOR,
)
CACHE_INVALIDATIONS = Counter(
    "agentstream_service_cache_invalidations", "Per-tenant result cache invalidations (admin API)", registry=ORCHESTRATOR
)
RATE_LIMITED = Counter("agentstream_rate_limit_rejections", "Requests refused with 429", ["tenant", "limit"], registry=ORCHESTRATOR)
INGRESS_RECORDS = Counter(
    "agentstream_ingress_records", "Ingress (Kafka door) records: accepted, duplicate or refused", ["outcome"], registry=ORCHESTRATOR
)
TOKEN_DELIVERY = Histogram(
    "agentstream_token_delivery_latency_seconds",
    "token.delta record: executor's send (record timestamp) to the bridge queuing it for a live subscriber",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
    registry=ORCHESTRATOR,
)
STREAM_CONNECTIONS = Gauge("agentstream_stream_connections", "Open streaming connections", ["transport"], registry=ORCHESTRATOR)
STREAM_SUBSCRIPTIONS = SourcedGauge(
    "agentstream_stream_subscriptions", "Execution subscriptions of connected WebSocket/SSE clients", (), ORCHESTRATOR
)

# -- executor -----------------------------------------------------------------------------------
EXECUTOR_EXECUTIONS = Counter(
    "agentstream_executor_executions", "Status snapshots written by executors, by state and lane", ["state", "lane"], registry=EXECUTOR
)
TOOL_CALLS = Counter("agentstream_tool_calls", "Tool calls by tool and outcome", ["tool", "outcome"], registry=EXECUTOR)
IN_FLIGHT = SourcedGauge("agentstream_executions_in_flight", "Executions running in this executor", (), EXECUTOR)
CONSUMER_LAG = SourcedGauge(
    "agentstream_consumer_lag",
    "Records of a lane partition not yet committed (high watermark - committed)",
    ("group", "topic", "partition"),
    EXECUTOR,
)


def count_tokens(*, tenant: str, agent: str, provider: str, prompt: int, completion: int) -> None:
    if prompt:
        TOKENS.labels(tenant=tenant, agent=agent, provider=provider, kind="prompt").inc(prompt)
    if completion:
        TOKENS.labels(tenant=tenant, agent=agent, provider=provider, kind="completion").inc(completion)


def exposition(*registries: CollectorRegistry) -> tuple[bytes, str]:
    """The text format of ``registries`` (plus ``COMMON``) and its content type."""
    return b"".join(generate_latest(r) for r in (*registries, COMMON)), CONTENT_TYPE_LATEST


def sample(registry: CollectorRegistry, name: str, labels: dict[str, Any] | None = None) -> float:
    """One sample's value (0 if absent): for tests and the CLI."""
    value = registry.get_sample_value(name, {k: str(v) for k, v in (labels or {}).items()})
    return value or 0.0


# The collector's pauses, by generation: a full collection that walks a large heap stops the event
# loop (every stream, every POST) for as long as it takes; this is where a latency tail shows it.
GC_PAUSES = Histogram(
    "agentstream_gc_pause_seconds",
    "Pauses of Python's cyclic garbage collector, by generation",
    ["generation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
    registry=COMMON,
)
