"""Structured JSON logs: one object per line with tenant, execution and trace ids; secrets redacted.

The ids come from ``log_context`` (a ContextVar bound per request / per execution task) and from
the current OpenTelemetry span. Redaction is by value: every configured secret (API keys, provider
keys, tokens, database URLs) is replaced wherever it appears in the rendered line, and so are
``Bearer`` tokens and ``api_key=`` query values, so a secret cannot leak through a library's
debug log either.
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson
from opentelemetry import trace

log_context: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("agentstream_log_context", default={})  # noqa: B039

REDACTED = "[REDACTED]"
_PATTERNS = re.compile(r"(?i)(bearer\s+|api_key=|x-api-key['\"]?\s*[:=]\s*['\"]?)([^\s&'\",;]+)")
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def bind(**fields: str | None) -> None:
    """Add fields to this task's log context (e.g. the tenant once the API key is checked)."""
    log_context.set(log_context.get() | {k: v for k, v in fields.items() if v is not None})


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret containing another is replaced whole; short values are ignored
        # (redacting "a" would destroy every line and protect nothing).
        self.secrets = sorted({s for s in secrets if s and len(s) >= 6}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return _PATTERNS.sub(lambda m: m.group(1) + REDACTED, text)


class JSONFormatter(logging.Formatter):
    def __init__(self, *, service: str, redactor: Redactor) -> None:
        super().__init__()
        self.service = service
        self.redact = redactor

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "service": self.service,
            "message": record.getMessage(),
        }
        entry |= getattr(record, "agentstream_context", None) or {}
        trace_id = getattr(record, "trace_id", None)
        if trace_id:
            entry["trace_id"], entry["span_id"] = trace_id, getattr(record, "span_id", None)
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in entry and key not in ("agentstream_context", "trace_id", "span_id"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return self.redact(orjson.dumps(entry, default=str).decode())


class ContextFilter(logging.Filter):
    """Copies the task's log context and the current span's ids onto the record (same task, at log time)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.agentstream_context = log_context.get()
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            record.trace_id = format(ctx.trace_id, "032x")
            record.span_id = format(ctx.span_id, "016x")
        return True


def configure_logging(
    *,
    service: str,
    level: str = "INFO",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
    json: bool = True,
    pretty: bool = False,
    filters: Iterable[logging.Filter] = (),
) -> logging.Handler:
    """Replace the root logger's handlers with one JSON (or plain, or coloured, redacted) handler; return it."""
    redactor = Redactor(secrets)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(ContextFilter())
    for extra in filters:
        handler.addFilter(extra)
    if json:
        handler.setFormatter(JSONFormatter(service=service, redactor=redactor))
    elif pretty:
        handler.setFormatter(PrettyFormatter(redactor))
    else:
        handler.setFormatter(_PlainFormatter(redactor))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler


class _PlainFormatter(logging.Formatter):
    def __init__(self, redactor: Redactor) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")
        self.redact = redactor

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(super().format(record))


class PrettyFormatter(logging.Formatter):
    """For a person at a terminal: time, a coloured level, the message, then the log context."""

    _COLOURS = {"DEBUG": "2", "INFO": "36", "WARNING": "33", "ERROR": "31", "CRITICAL": "1;31"}

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redact = redactor

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        level = f"\x1b[{self._COLOURS.get(record.levelname, '0')}m{record.levelname.lower():<7}\x1b[0m"
        context = getattr(record, "agentstream_context", None) or {}
        extra = "".join(f" \x1b[2m{k}={v}\x1b[0m" for k, v in context.items())
        line = f"\x1b[2m{when}\x1b[0m {level} {record.getMessage()}{extra} \x1b[2m({record.name})\x1b[0m"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return self.redact(line)
