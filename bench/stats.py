"""Percentiles and the summary of one measured step."""

from __future__ import annotations

from typing import Any

import numpy as np

CDF_POINTS = 101


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def latency(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None, "cdf": []}
    arr = np.asarray(values)
    return {
        "n": len(values),
        "p50": float(np.percentile(arr, 50)),
        "p99": float(np.percentile(arr, 99)),
        "max": float(arr.max()),
        # Quantiles 0, 1, ... 100 (and 99.9) for the CDF plot, not every sample.
        "cdf": [float(v) for v in np.percentile(arr, [*range(CDF_POINTS), 99.9])],
    }


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Results of several client processes of one step as if one client had seen them all."""
    firsts = [p["first_at"] for p in parts if p.get("first_at") is not None]
    lasts = [p["last_at"] for p in parts if p.get("last_at") is not None]
    return {
        "latencies_ms": [v for p in parts for v in p["latencies_ms"]],
        "ttft_s": [v for p in parts for v in p["ttft_s"]],
        "accepted_s": [v for p in parts for v in p.get("accepted_s", [])],
        "tokens": sum(p["tokens"] for p in parts),
        "records": sum(p["records"] for p in parts),
        "first_at": min(firsts) if firsts else None,
        "last_at": max(lasts) if lasts else None,
        "errors": [e for p in parts for e in p["errors"]],
        "client_cpu_s": sum(p["client_cpu_s"] for p in parts),
        "client_busy": [p["client_busy"] for p in parts if p.get("client_busy") is not None],
    }


def summarize(raw: dict[str, Any], *, expected_tokens: int, first_token_delay_s: float, rate: float) -> dict[str, Any]:
    """Per-token latency, time-to-first-token overhead, delivered tokens/s, records per token."""
    # The fake model sleeps one token interval before the first content token too.
    overhead_ms = [(t - first_token_delay_s - 1 / rate) * 1000 for t in raw["ttft_s"]]
    span = (raw["last_at"] - raw["first_at"]) if raw["first_at"] is not None else 0.0
    tokens = raw["tokens"]
    return {
        "latency_ms": latency(raw["latencies_ms"]),
        "ttft_overhead_ms": {k: v for k, v in latency(overhead_ms).items() if k != "cdf"},
        # agentstream only: the part of time to first token spent before the 202 came back.
        "accepted_ms": {k: v for k, v in latency([s * 1000 for s in raw.get("accepted_s", [])]).items() if k != "cdf"},
        "tokens": tokens,
        "expected_tokens": expected_tokens,
        "delivered_tps": tokens / span if span > 0 else None,
        "records_per_token": raw["records"] / tokens if tokens else None,
        "errors": raw["errors"][:5],
        "error_count": len(raw["errors"]),
        "client_cpu_s": raw["client_cpu_s"],
        # The busiest client process's share of a core while tokens flowed (clients.busy), and how many shared the step.
        "client_busy_max": max(raw.get("client_busy") or [0.0]) if raw.get("client_busy") else None,
        "client_processes": len(raw.get("client_busy") or []),
    }


def busy(marks: list[tuple[float, float]], cpu_end: float, wall_end: float) -> float | None:
    """A client process's share of a core from the first token it saw to the end: near 1.0, the
    client was the limit of the step, not the server (connecting and the first-token wait are left
    out). ``marks``: (wall time, this process's CPU seconds) at each stream's first token."""
    if not marks:
        return None
    first_at, cpu_at_first = min(marks)
    wall = wall_end - first_at
    return (cpu_end - cpu_at_first) / wall if wall > 0 else None
