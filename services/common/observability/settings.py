"""What a process configures once at start: logs, and the OpenTelemetry SDK with OTLP export."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Literal

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from pydantic import AliasChoices, BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.observability.logs import configure_logging

log = logging.getLogger(__name__)


class TelemetrySettings(BaseSettings):
    """Standard OpenTelemetry variables, plus ``AGENTSTREAM_LOG_LEVEL`` / ``AGENTSTREAM_LOG_FORMAT``."""

    model_config = SettingsConfigDict(env_prefix="AGENTSTREAM_", extra="ignore")

    # e.g. http://127.0.0.1:4318 (OTLP over HTTP/protobuf); unset: spans are not recorded at all.
    otlp_endpoint: str | None = Field(
        default=None, validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_ENDPOINT", "AGENTSTREAM_OTLP_ENDPOINT")
    )
    service_name: str | None = Field(default=None, validation_alias=AliasChoices("OTEL_SERVICE_NAME", "AGENTSTREAM_SERVICE_NAME"))
    traces_sampler_ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    log_level: str = "INFO"
    # auto: coloured lines on a terminal, JSON elsewhere (`agentstream up`); services default to JSON.
    log_format: Literal["json", "text", "pretty", "auto"] | None = None  # None: the entry point's default


def configure(
    service: str,
    *,
    settings: TelemetrySettings | None = None,
    secrets: Iterable[str] = (),
    filters: Iterable[logging.Filter] = (),
    default_format: str = "json",
) -> None:
    """Logs always; traces when an OTLP endpoint is set. Call once per process, from its entry point."""
    settings = settings or TelemetrySettings()
    fmt = settings.log_format or default_format
    if fmt == "auto":
        fmt = "pretty" if sys.stderr.isatty() else "json"
    configure_logging(
        service=service, level=settings.log_level, secrets=secrets, json=fmt == "json", pretty=fmt == "pretty", filters=filters
    )
    if settings.otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        endpoint = settings.otlp_endpoint.rstrip("/")
        provider = install_provider(settings.service_name or f"agentstream-{service}", ratio=settings.traces_sampler_ratio)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces")))
        log.info("traces exported with OTLP to %s", endpoint)


def install_provider(service_name: str, *, ratio: float = 1.0) -> TracerProvider:
    """Set the process's SDK tracer provider (once; later calls return the one set)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}), sampler=ParentBased(TraceIdRatioBased(ratio)))
    trace.set_tracer_provider(provider)
    return provider


def secrets_of(*settings: BaseModel) -> list[str]:
    """Every secret value in these settings (SecretStr fields, API-key maps), for log redaction."""
    found: list[str] = []

    def walk(value: object) -> None:
        if isinstance(value, SecretStr):
            found.append(value.get_secret_value())
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name))
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)

    for s in settings:
        walk(s)
        keys = getattr(s, "api_keys", None)
        if isinstance(keys, dict):
            found += [k for k in keys if isinstance(k, str)]
    return found
