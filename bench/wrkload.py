"""A native load generator beside the Python clients: ``wrk`` (a Debian package) with bench/wrkload.lua.

The Python clients ride on one event loop per process; on 2 cores they can become the limit of what
they measure. ``wrk`` (C, epoll) shows what the server does when the client costs next to nothing.
``make bench`` installs it when missing (``apt-get install -y wrk`` as root); without it the
native rows say so instead of failing the run.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).with_name("wrkload.lua")
MARK = "BENCH_WRK "


def available() -> str | None:
    """The path of ``wrk``, or None."""
    return shutil.which("wrk")


def parse(output: str) -> dict[str, Any]:
    """The summary line bench/wrkload.lua's ``done`` writes, as rates and milliseconds.

    Raises ValueError when the line is missing (wrk failed before its summary: the caller reports
    wrk's own output)."""
    line = next((line for line in output.splitlines() if line.startswith(MARK)), None)
    if line is None:
        raise ValueError(f"no {MARK.strip()} summary line in wrk's output: {output.strip()[-300:]!r}")
    raw = json.loads(line[len(MARK) :])
    seconds = raw["duration_us"] / 1e6
    errors = {k: raw[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts", "other_status") if raw[k]}
    return {
        "requests": raw["requests"],
        "ok": raw["ok"],
        "seconds": seconds,
        "per_s": raw["ok"] / seconds if seconds > 0 else 0.0,
        # wrk's percentiles are over every response (a failed one too): with errors, read them with care.
        "latency_ms": {q: raw[f"{q}_us"] / 1000 for q in ("p50", "p90", "p99", "max", "mean")},
        "errors": errors,
    }


def run(
    url: str,
    *,
    seconds: float,
    connections: int,
    threads: int = 2,
    method: str = "GET",
    body: str = "",
    auth: str = "",
    expect: int = 200,
    binary: str = "wrk",
) -> dict[str, Any]:
    """``connections`` keep-alive connections for ``seconds`` against ``url``; wrk's CPU beside the figures."""
    env = {"BENCH_WRK_METHOD": method, "BENCH_WRK_BODY": body, "BENCH_WRK_AUTH": auth, "BENCH_WRK_EXPECT": str(expect)}
    duration = max(1, round(seconds))
    args = [binary, f"-t{threads}", f"-c{max(connections, threads)}", f"-d{duration}s", "--timeout", "10s", "-s", str(SCRIPT), url]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(args, env={**os.environ, **env}, capture_output=True, text=True, timeout=duration + 60, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited with {done.returncode}: {(done.stderr or done.stdout).strip()[-300:]}")
    out = parse(done.stdout)
    out["connections"] = max(connections, threads)
    out["client_cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return out
