"""Soak: ten minutes of steady, moderate load on the services as separate processes. After a warm-up,
each service's RSS stays within 10 %, and its open sockets/files and asyncio tasks do not grow.

AGENTSTREAM_SOAK_SECONDS shortens it for a quick look (default 600)."""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from services.common.settings import KafkaSettings
from tests.support import collect_events

pytestmark = [pytest.mark.kafka, pytest.mark.reliability, pytest.mark.timeout(900)]

SECONDS = float(os.environ.get("AGENTSTREAM_SOAK_SECONDS", "600"))
WARMUP = min(90.0, SECONDS / 4)
RATE = 4.0  # executions per second, each streamed to a WebSocket client until it ends
SAMPLES = ("process_resident_memory_bytes", "process_open_fds", "agentstream_asyncio_tasks")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(text: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in SAMPLES:
            values[name] = float(value)
    return values


def start_services(env: dict[str, str], api: int) -> dict[str, subprocess.Popen[bytes]]:
    def run(*args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "services.cli", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    return {"orchestrator": run("orchestrator", "--port", str(api)), "executor": run("executor")}


async def test_soak_keeps_memory_sockets_and_tasks_flat(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    api, metrics = free_port(), free_port()
    env = {
        **os.environ,
        "AGENTSTREAM_KAFKA_BOOTSTRAP": kafka_settings.bootstrap,
        "AGENTSTREAM_KAFKA_TOPIC_PREFIX": kafka_settings.topic_prefix,
        "AGENTSTREAM_KAFKA_PARTITIONS": str(kafka_settings.partitions),
        "AGENTSTREAM_API_KEYS": '{"soak-key": "soak"}',
        "AGENTSTREAM_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'state.db'}",
        # Rate limits sized for the soak's own load; the bridge keeps finished executions 30 s.
        "AGENTSTREAM_BRIDGE_RECENT_TTL_S": "30",
        "AGENTSTREAM_EXECUTOR_SCRIPTED_TOKEN_DELAY_MS": "10",
        "AGENTSTREAM_EXECUTOR_METRICS_PORT": str(metrics),
    }
    procs = start_services(env, api)
    urls = {"orchestrator": f"http://127.0.0.1:{api}/metrics", "executor": f"http://127.0.0.1:{metrics}/metrics"}
    base = f"http://127.0.0.1:{api}"
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in procs}
    done = failed = 0
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            async with asyncio.timeout(60):
                while True:
                    try:
                        if (await http.get("/health/ready")).status_code == 200 and (await http.get(urls["executor"])).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    await asyncio.sleep(0.5)

            async def one(i: int) -> None:
                nonlocal done, failed
                r = await http.post(
                    "/v1/executions", json={"input": f"{i}*3 " + "word " * 40}, headers={"Authorization": "Bearer soak-key"}
                )
                if r.status_code != 202:
                    failed += 1
                    return
                items = await collect_events(base.replace("http", "ws", 1), "soak-key", r.json()["execution_id"], timeout=60)
                done += items[-1]["event"]["type"] == "execution.completed"

            async def sampler() -> None:
                while True:
                    await asyncio.sleep(10)
                    for name, url in urls.items():
                        samples[name].append({"t": time.monotonic(), **scrape((await http.get(url)).text)})

            started = time.monotonic()
            sampling = asyncio.create_task(sampler())
            running: set[asyncio.Task[None]] = set()
            i = 0
            while time.monotonic() - started < SECONDS:
                task = asyncio.create_task(one(i))
                running.add(task)
                task.add_done_callback(running.discard)
                i += 1
                await asyncio.sleep(1 / RATE)
            await asyncio.gather(*running)
            sampling.cancel()
            for proc in procs.values():
                assert proc.poll() is None, "a service died during the soak"
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()

    assert failed == 0 and done == i, f"{done} of {i} completed, {failed} refused"
    report = []
    for name, series in samples.items():
        steady = [s for s in series if s["t"] - started >= WARMUP]
        assert len(steady) >= 6, f"too few samples of {name}"
        first = {k: statistics.median(s[k] for s in steady[:3]) for k in SAMPLES}
        last = {k: statistics.median(s[k] for s in steady[-3:]) for k in SAMPLES}
        report.append(
            f"{name}: RSS {first[SAMPLES[0]] / 2**20:.0f} -> {last[SAMPLES[0]] / 2**20:.0f} MiB, "
            f"fds {first[SAMPLES[1]]:.0f} -> {last[SAMPLES[1]]:.0f}, tasks {first[SAMPLES[2]]:.0f} -> {last[SAMPLES[2]]:.0f}"
        )
        assert last[SAMPLES[0]] <= first[SAMPLES[0]] * 1.10, f"{name} RSS grew: {report[-1]}"
        assert last[SAMPLES[1]] <= first[SAMPLES[1]] + 10, f"{name} open fds grew: {report[-1]}"
        assert last[SAMPLES[2]] <= first[SAMPLES[2]] + 10, f"{name} asyncio tasks grew: {report[-1]}"
    print(f"\nsoak {SECONDS:.0f}s at {RATE:g}/s: {done} executions completed; " + "; ".join(report))
