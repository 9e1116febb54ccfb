"""The processes under test (fake model, orchestrator, executor): start, stop, and measure them."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "bench-key"
TENANT = "bench"
PATCHED = "BENCH_SERVICES_PATH"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Proc:
    """One child process with psutil counters: CPU seconds between marks, RSS sampled for the peak."""

    name: str
    popen: subprocess.Popen[bytes]
    ps: psutil.Process = field(init=False)
    peak_rss: int = 0
    marked_peak_rss: int = 0  # the peak since the last ``mark()``: one step's

    def __post_init__(self) -> None:
        self.ps = psutil.Process(self.popen.pid)

    def cpu(self) -> float:
        try:
            t = self.ps.cpu_times()
            return float(t.user + t.system)
        except psutil.Error:
            return 0.0

    def rss(self) -> int:
        try:
            return int(self.ps.memory_info().rss)
        except psutil.Error:
            return 0

    def sample(self) -> None:
        rss = self.rss()
        self.peak_rss = max(self.peak_rss, rss)
        self.marked_peak_rss = max(self.marked_peak_rss, rss)

    def mark(self) -> None:
        self.marked_peak_rss = self.rss()

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(signal.SIGINT)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)


class Sampler:
    """Samples the RSS of every process it watches every ``interval`` seconds, for peaks."""

    def __init__(self, procs: list[Proc], interval: float = 0.25) -> None:
        self.procs = procs
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            for proc in list(self.procs):
                proc.sample()


def _spawn(name: str, args: list[str], env: dict[str, str], log_dir: Path) -> Proc:
    log = open(log_dir / f"{name}.log", "wb")
    popen = subprocess.Popen(args, cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    return Proc(name, popen)


def start_fake_model(log_dir: Path) -> tuple[Proc, int]:
    port = free_port()
    proc = _spawn("fake-model", [sys.executable, "-m", "bench.fakemodel", str(port)], {}, log_dir)
    _wait_port(port, proc, timeout=20)
    return proc, port


def agents_yaml(models: dict[str, str]) -> str:
    agents = {
        name: {"provider": "openai_compatible", "model": model, "tools": [], "max_steps": 1, "system_prompt": "bench"}
        for name, model in models.items()
    }
    return json.dumps({"agents": agents})  # JSON is YAML


@dataclass
class Services:
    prefix: str
    port: int
    env: dict[str, str]
    log_dir: Path
    orchestrator: Proc | None = None
    executor: Proc | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/stream?api_key={API_KEY}"

    def start_orchestrator(self) -> None:
        self.orchestrator = _spawn("orchestrator", [_agentstream(), "orchestrator"], self.env, self.log_dir)
        _wait_http(f"{self.url}/health/ready", self.orchestrator, timeout=60)

    def start_executor(self, extra: dict[str, str] | None = None) -> None:
        self.executor = _spawn("executor", [_agentstream(), "executor"], {**self.env, **(extra or {})}, self.log_dir)

    def stop_executor(self) -> None:
        if self.executor is not None:
            self.executor.stop()
            self.executor = None

    def stop(self) -> None:
        self.stop_executor()
        if self.orchestrator is not None:
            self.orchestrator.stop()
            self.orchestrator = None

    def procs(self) -> dict[str, Proc]:
        return {p.name: p for p in (self.orchestrator, self.executor) if p is not None}


def services_env(*, prefix: str, port: int, work: Path, agents_file: Path, model_url: str) -> dict[str, str]:
    return {
        "AGENTSTREAM_KAFKA_TOPIC_PREFIX": prefix,
        "AGENTSTREAM_PORT": str(port),
        "AGENTSTREAM_API_KEYS": json.dumps({API_KEY: TENANT}),
        "AGENTSTREAM_DATABASE_URL": f"sqlite+aiosqlite:///{work / 'state.db'}",
        "AGENTSTREAM_REQUESTS_PER_MINUTE": "0",
        "AGENTSTREAM_CONCURRENT_EXECUTIONS": "0",
        "AGENTSTREAM_AGENTS_FILE": str(agents_file),
        "AGENTSTREAM_EXECUTOR_AGENTS_FILE": str(agents_file),
        "AGENTSTREAM_EXECUTOR_COMPATIBLE_BASE_URL": model_url,
        "AGENTSTREAM_EXECUTOR_MAX_CONCURRENCY": "2000",
        "AGENTSTREAM_EXECUTOR_INSTANCE_ID": f"{prefix}executor",
        # The coalescing sweep restarts the executor: let the group settle fast (the broker's minimum).
        "AGENTSTREAM_EXECUTOR_SESSION_TIMEOUT_MS": "6000",
        # A patched copy of schemas/ and services/ to measure a proposed fix against (before/after).
        **({"PYTHONPATH": os.environ[PATCHED]} if os.environ.get(PATCHED) else {}),
    }


def _agentstream() -> str:
    return str(Path(sys.executable).with_name("agentstream"))


def _wait_port(port: int, proc: Proc, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} did not listen on {port} within {timeout:g}s")


def _wait_http(url: str, proc: Proc, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}; see its log")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{proc.name} was not ready at {url} within {timeout:g}s")
