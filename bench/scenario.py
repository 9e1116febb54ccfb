"""A scenario file (YAML or TOML) as small frozen value objects."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class Load:
    """``concurrency`` streams at once, each ``tokens`` tokens at ``rate`` tokens/s."""

    concurrency: int
    rate: float = 50.0
    tokens: int = 100

    @property
    def label(self) -> str:
        return f"{self.concurrency}x{self.rate:g}tok/s"


@dataclass(frozen=True)
class Accept:
    seconds: float = 5.0
    concurrency: int = 64
    # wrk beside the Python client (when installed), and a trivial endpoint both measure as a check
    # that the load generator is not the limit.
    native: bool = True
    trivial_path: str = "/health/live"


@dataclass(frozen=True)
class Recovery:
    """The orchestrator's RSS after the load step of ``after`` streams, sampled every ``interval``
    seconds until ``seconds`` after it: back within ``bound`` of its idle value?"""

    after: int = 500
    seconds: float = 180.0
    interval: float = 5.0
    bound: float = 0.25


@dataclass(frozen=True)
class Fanout:
    subscribers: tuple[int, ...] = (1, 100, 1000)
    idle: int = 5000
    rate: float = 50.0
    tokens: int = 100


@dataclass(frozen=True)
class Coalesce:
    # The executor's coalesce_max_chars per run (1: a record per token); 1152 holds 64 stamped tokens.
    max_chars: tuple[int, ...] = (1, 1152)
    loads: tuple[Load, ...] = (Load(1, 1000, 2000), Load(100, 50, 100))


@dataclass(frozen=True)
class Scenario:
    name: str
    first_token_delay_ms: float = 100.0
    loads: tuple[Load, ...] = (Load(1), Load(10), Load(100), Load(500), Load(1, 1000, 2000))
    # Extra concurrencies of 50 tok/s streams for the throughput-vs-concurrency curve (agentstream and raw floor).
    sweep: tuple[int, ...] = ()
    accept: Accept | None = field(default_factory=Accept)
    fanout: Fanout | None = field(default_factory=Fanout)
    coalesce: Coalesce | None = field(default_factory=Coalesce)
    kafka_floor_rate: float = 1000.0  # records/s of the raw aiokafka round trip
    kafka_floor_seconds: float = 3.0
    client_processes: int = 2
    # The idle stack (Kafka + services, no executions): how long its CPU is measured; 0: not measured.
    quiet_seconds: float = 20.0
    # None: not measured. The idle stack's CPU is measured inside its window (a quiet stack is what it waits for).
    recovery: Recovery | None = None


def _loads(raw: list[dict[str, Any]]) -> tuple[Load, ...]:
    return tuple(Load(**item) for item in raw)


def parse(raw: dict[str, Any]) -> Scenario:
    raw = dict(raw)
    if "loads" in raw:
        raw["loads"] = _loads(raw["loads"])
    if "sweep" in raw:
        raw["sweep"] = tuple(raw["sweep"])
    for key, cls in (("accept", Accept), ("fanout", Fanout), ("recovery", Recovery)):
        if key in raw and raw[key] is not None:
            value = dict(raw[key])
            if "subscribers" in value:
                value["subscribers"] = tuple(value["subscribers"])
            raw[key] = cls(**value)
    if raw.get("coalesce") is not None:
        value = dict(raw["coalesce"])
        if "max_chars" in value:
            value["max_chars"] = tuple(value["max_chars"])
        if "loads" in value:
            value["loads"] = _loads(value["loads"])
        raw["coalesce"] = Coalesce(**value)
    return Scenario(**raw)


def load(path: Path) -> Scenario:
    text = path.read_text()
    raw = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    raw.setdefault("name", path.stem)
    return parse(raw)
