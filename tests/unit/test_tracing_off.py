"""With no tracing SDK, a publish makes no span but the trace still travels: the incoming request's
traceparent when there is one, else the caller's fallback."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from services.common.observability import tracing

INCOMING = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
def no_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracing, "enabled", lambda: False)


def test_the_incoming_traceparent_travels(no_sdk: None) -> None:
    ctx = SpanContext(int("4bf92f3577b34da6a3ce929d0e0e4736", 16), int("00f067aa0ba902b7", 16), is_remote=True, trace_flags=TraceFlags(1))
    with (
        trace.use_span(NonRecordingSpan(ctx)),
        tracing.producer_span("lane", fallback_traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01") as tp,
    ):
        assert tp == INCOMING
        assert tp == tracing.current_traceparent()  # the same string the propagator makes


def test_an_unsampled_incoming_traceparent_keeps_its_flags(no_sdk: None) -> None:
    ctx = SpanContext(0xAB, 0xCD, is_remote=True, trace_flags=TraceFlags(0))
    with trace.use_span(NonRecordingSpan(ctx)), tracing.producer_span("lane", fallback_traceparent=None) as tp:
        assert tp == f"00-{0xAB:032x}-{0xCD:016x}-00"


def test_without_a_current_span_the_fallback_travels(no_sdk: None) -> None:
    fallback = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    with tracing.producer_span("lane", fallback_traceparent=fallback) as tp:
        assert tp == fallback
    with tracing.producer_span("lane", fallback_traceparent=None) as tp:
        assert tp is None
