"""Logs a person can read while something is down: a development server (``agentstream up``) must
not write thousands of lines a second while Kafka is stopped (every client retries every 100 ms
and says so).

``CalmFilter`` lets the first of a kind of line through, then one more after 1 s, 2 s, 4 s ... up to
``max_gap_s``, each saying how many like it were held back. Kafka's connection failures, from any
client and any address, are one kind, said once with the fix.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

_KAFKA_DOWN = (
    "Unable connect to",
    "Connect call failed",
    "Unable to bootstrap",
    "KafkaConnectionError",
    "Unable to update metadata",
    "NodeNotReadyError",
    "GroupCoordinatorNotAvailable",
    "coordinator dead",
    "Heartbeat session expired",
)


@dataclass
class _Kind:
    next_at: float
    gap: float
    held: int = 0


class CalmFilter(logging.Filter):
    def __init__(self, *, kafka_hint: str = "", max_gap_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.kafka_hint = kafka_hint
        self.max_gap_s = max_gap_s
        self.clock = clock
        self._kinds: dict[tuple[str, ...], _Kind] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        kafka = record.name.startswith("aiokafka") and any(part in record.getMessage() for part in _KAFKA_DOWN)
        key = ("kafka-down",) if kafka else (record.name, str(record.msg), record.levelname)
        now = self.clock()
        kind = self._kinds.get(key)
        if kind is not None and now < kind.next_at:
            kind.held += 1
            return False
        if kind is None:
            kind = self._kinds[key] = _Kind(next_at=now + 1.0, gap=1.0)
            if kafka:
                record.msg, record.args = f"Kafka does not answer ({record.getMessage()}){self.kafka_hint}; retrying", None
                record.exc_info = record.exc_text = None
            return True
        held, kind.held = kind.held, 0
        kind.gap = min(kind.gap * 2, self.max_gap_s)
        kind.next_at = now + kind.gap
        if kafka:
            record.msg, record.args = f"still no Kafka ({held} failed connection attempts held back){self.kafka_hint}", None
            record.exc_info = record.exc_text = None
        elif held:
            record.msg, record.args = f"{record.getMessage()} ({held} more like this held back)", None
        return True
