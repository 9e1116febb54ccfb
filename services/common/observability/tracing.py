"""OpenTelemetry spans for every hop, joined into one trace through ``traceparent`` in Kafka headers.

HTTP request (server) -> Kafka publish (producer) -> executor consume -> one span per LLM call
attempt and per tool call -> bridge delivery (one span per execution per tail batch). The token
hot path gets no span: the executor's traceparent is computed once per execution and sent as a
header on every event it emits.

Without a configured SDK (``configure`` not called) the API's no-op tracer still propagates the
incoming context, so ``traceparent`` keeps travelling and logs still carry the trace id.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from services.common.observability import metrics
from services.common.observability.logs import log_context

T = TypeVar("T")

_propagator = TraceContextTextMapPropagator()
tracer = trace.get_tracer("agentstream")


def enabled() -> bool:
    """True when an SDK provider records spans (not the API's default proxy / no-op)."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def context_from(traceparent: str | None) -> otel_context.Context | None:
    if not traceparent:
        return None
    return _propagator.extract({"traceparent": traceparent})


def context_of_headers(headers: Sequence[tuple[str, bytes]] | None) -> otel_context.Context | None:
    for key, value in headers or ():
        if key == "traceparent":
            return context_from(value.decode(errors="replace"))
    return None


def current_traceparent() -> str | None:
    """The W3C traceparent of the current span, or None when there is no valid span."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent")


def _traceparent_of(ctx: trace.SpanContext) -> str:
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def current_trace_ids() -> tuple[str, str] | None:
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


@contextlib.contextmanager
def producer_span(topic: str, *, fallback_traceparent: str | None, **attributes: Any) -> Iterator[str | None]:
    """A Kafka publish span, child of the current span (the HTTP request); yields its traceparent.

    With no current span (a background task) the span continues ``fallback_traceparent``; with
    tracing off, that traceparent itself is what travels."""
    current = trace.get_current_span().get_span_context()
    if not enabled():
        # No SDK: no span would be recorded; what travels is the current context's traceparent (an
        # incoming request's), else the fallback. Made here without a span or a propagator (the
        # intake pays this on every POST: 6% of its CPU went to the no-op span and its inject).
        yield _traceparent_of(current) if current.is_valid else fallback_traceparent
        return
    parent = None if current.is_valid else context_from(fallback_traceparent)
    with tracer.start_as_current_span(
        f"publish {topic}",
        context=parent,
        kind=SpanKind.PRODUCER,
        attributes={"messaging.system": "kafka", "messaging.destination.name": topic, **_clean(attributes)},
    ):
        yield current_traceparent() or fallback_traceparent


async def consumed(
    work: Awaitable[T],
    *,
    headers: Sequence[tuple[str, bytes]] | None,
    topic: str,
    partition: int,
    offset: int,
    tenant_id: str,
    execution_id: str,
    agent_id: str,
    lane: str,
) -> T:
    """Run ``work`` (one execution) inside a consumer span continuing the request's trace.

    Also binds tenant/execution/agent to the log context of the task, so every log line and
    metric of the execution carries them."""
    log_context.set({"tenant_id": tenant_id, "execution_id": execution_id, "agent_id": agent_id, "lane": lane})
    with tracer.start_as_current_span(
        f"execute {agent_id}",
        context=context_of_headers(headers),
        kind=SpanKind.CONSUMER,
        attributes={
            "messaging.system": "kafka",
            "messaging.destination.name": topic,
            "messaging.destination.partition.id": str(partition),
            "messaging.kafka.offset": offset,
            "agentstream.tenant_id": tenant_id,
            "agentstream.execution_id": execution_id,
            "agentstream.agent_id": agent_id,
        },
    ):
        return await work


async def traced_llm_call(stream: AsyncIterator[T], *, provider: str, model: str) -> AsyncIterator[T]:
    """One span per model call attempt around a provider stream; counts its tokens (metrics).

    Not made current: a generator's context does not survive its yields, and nothing inside needs it."""
    span = tracer.start_span(f"llm {provider}", kind=SpanKind.CLIENT, attributes={"gen_ai.system": provider, "gen_ai.request.model": model})
    chunks = 0
    try:
        async for chunk in stream:
            chunks += 1
            usage = getattr(chunk, "usage", None)
            if usage is not None and hasattr(chunk, "tool_calls"):
                _on_turn_end(span, provider, usage, len(chunk.tool_calls))
            yield chunk
    except BaseException as exc:
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        span.set_attribute("agentstream.chunks", chunks)
        span.end()


def _on_turn_end(span: trace.Span, provider: str, usage: Any, tool_calls: int) -> None:
    span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
    span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
    span.set_attribute("agentstream.tool_calls", tool_calls)
    bound = log_context.get()
    metrics.count_tokens(
        tenant=bound.get("tenant_id", ""),
        agent=bound.get("agent_id", ""),
        provider=provider,
        prompt=usage.prompt_tokens,
        completion=usage.completion_tokens,
    )


async def traced_tool_call(work: Callable[[], Awaitable[str]], *, tool: str, call_id: str) -> str:
    """A span around one tool call (``_call_tool`` turns failures into results, so look at the result).
    ``work`` makes the call's coroutine only here: a call cancelled before it begins leaves none unawaited."""
    attributes = {"agentstream.tool": tool, "agentstream.call_id": call_id}
    with tracer.start_as_current_span(f"tool {tool}", kind=SpanKind.INTERNAL, attributes=attributes) as span:
        result = await work()
        failed = result.startswith('{"error"')
        if failed:
            span.set_status(Status(StatusCode.ERROR, result[:200]))
        metrics.TOOL_CALLS.labels(tool=tool, outcome="error" if failed else "ok").inc()
        return result


@contextlib.contextmanager
def delivery_spans(records: Sequence[Any], subscribed: dict[str, Any]) -> Iterator[None]:
    """Bridge: one span per execution with subscribers in this batch, child of its events' trace,
    for batches that hold one of its events other than tokens. A batch of only ``token.delta``
    records has none: since coalescing has no timer, a slow model's tokens each come in a batch of
    their own, and a span per token would cost more than the delivery it measures."""
    if not enabled() or not subscribed:
        yield
        return
    firsts: dict[bytes, Any] = {}
    counts: dict[bytes, int] = {}
    marked: set[bytes] = set()
    for record in records:
        key = record.key
        if key is None or key.decode(errors="replace") not in subscribed:
            continue
        firsts.setdefault(key, record)
        counts[key] = counts.get(key, 0) + 1
        if key not in marked and (b"token.delta" not in (v for k, v in record.headers or () if k == "type")):
            marked.add(key)
    firsts = {key: record for key, record in firsts.items() if key in marked}
    spans = []
    for key, record in firsts.items():
        spans.append(
            tracer.start_span(
                "bridge deliver",
                context=context_of_headers(record.headers),
                kind=SpanKind.CONSUMER,
                attributes={
                    "messaging.system": "kafka",
                    "messaging.destination.name": record.topic,
                    "messaging.batch.message_count": counts[key],
                    "agentstream.execution_id": key.decode(errors="replace"),
                    "agentstream.subscribers": len(subscribed.get(key.decode(errors="replace"), ())),
                },
            )
        )
    try:
        yield
    finally:
        for span in spans:
            span.end()


def _clean(attributes: dict[str, Any]) -> dict[str, Any]:
    return {f"agentstream.{k}": v for k, v in attributes.items() if v is not None}
