"""The services: `orchestrator`, `bridge`, `executor`, and `up` (all three in one process, for local use).

`up` is a development server, so it is calm: its port is bound before anything touches Kafka (a
port that is taken fails in well under a second and no consumer group sees us); while Kafka does
not answer it says so once with the fix and then reminds with a growing gap instead of starting
half-way; logs are coloured lines on a terminal and JSON elsewhere (``--log-format``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Coroutine
from typing import Annotated, Any

import typer

from services.cli.base import app, console, err, fail, prog
from services.common.errors import KafkaUnavailable
from services.common.heap import freeze_startup_heap

log = logging.getLogger("agentstream.up")
LogFormat = Annotated[str | None, typer.Option(help="auto (coloured on a terminal, else JSON) | json | pretty | text.")]


def _telemetry(service: str, *, log_format: str | None = None, default_format: str = "json", calm: bool = False) -> None:
    """Logs with every configured secret redacted; OTLP traces when OTEL_EXPORTER_OTLP_ENDPOINT is set."""
    from services.common.observability.calm import CalmFilter
    from services.common.observability.settings import TelemetrySettings, configure, secrets_of
    from services.executor.settings import ExecutorSettings
    from services.orchestrator.settings import OrchestratorSettings

    settings = TelemetrySettings()
    if log_format is not None:
        settings = settings.model_copy(update={"log_format": log_format})
    filters = [CalmFilter(kafka_hint=f": start it with `{prog()} kafka start` or set AGENTSTREAM_KAFKA_BOOTSTRAP")] if calm else []
    secrets = secrets_of(OrchestratorSettings(), ExecutorSettings())
    configure(service, settings=settings, secrets=secrets, filters=filters, default_format=default_format)


def run_service(main: Coroutine[Any, Any, None]) -> None:
    """Run a service's main coroutine on uvloop (uvicorn picks it too): measured, the executor spent
    ~15 % of its CPU in the pure-Python selector loop and socket writes at 100 streams."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


freeze_heap = freeze_startup_heap  # the executor and `up`; the apps freeze in their lifespans (heap.py)


def system_allocator() -> None:
    """Run a long-lived service on the C allocator (``PYTHONMALLOC=malloc``), re-executing once.

    After a burst (500 streams), pymalloc keeps every 1 MiB arena that still holds one live object,
    and ``malloc_trim`` cannot give back what is inside them: the orchestrator stayed at +60-85 % of
    its idle RSS three minutes later though its live blocks were back near idle. On glibc's malloc
    the trimmer (memory.py) returns the freed pages: +26 % in the same bench step, and the token
    path's CPU per token no higher (docs/performance.md). A ``PYTHONMALLOC`` the user set is kept;
    ``AGENTSTREAM_PYMALLOC=1`` keeps pymalloc. Only the console script re-executes (not a test
    calling the command in its own process)."""
    if os.environ.get("PYTHONMALLOC") or os.environ.get("AGENTSTREAM_PYMALLOC") == "1":
        return
    if not os.path.basename(sys.argv[0]).startswith("agentstream") or not getattr(sys, "orig_argv", None):
        return
    os.environ["PYTHONMALLOC"] = "malloc"
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def _server(host: str | None, port: int | None, *, bridge_only: bool = False) -> Any:
    import uvicorn

    from services.orchestrator.settings import OrchestratorSettings

    settings = OrchestratorSettings()
    if bridge_only:
        from services.orchestrator.bridgeapp import create_bridge_app

        asgi = create_bridge_app(settings)
    else:
        from services.orchestrator.app import create_app

        asgi = create_app(settings)
    config = uvicorn.Config(
        asgi,
        host=host or settings.host,
        port=settings.port if port is None else port,
        ws_per_message_deflate=False,  # measured: 2.3x less memory per connection, 1.4x throughput
        log_level="warning",
        log_config=None,  # uvicorn's loggers go through ours (one format, redacted), not its own coloured handler
    )

    class Server(uvicorn.Server):
        """uvicorn's server; once its lifespan has started, the long-lived heap is frozen."""

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                freeze_heap()

    return Server(config)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, before anything else starts: a taken port is one line, at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            fail(f"port {port} on {host} is taken (another agentstream up?): stop what listens there, or pass --port")
        fail(f"cannot listen on {host}:{port} ({exc.strerror or exc}): pass another --host or --port")
    sock.listen(2048)
    sock.setblocking(False)
    return sock


async def _run_executor_until_stopped(stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
    from services.executor.app import Executor
    from services.executor.settings import ExecutorSettings

    async with Executor(ExecutorSettings()):
        if ready is not None:
            ready.set()
        else:
            freeze_heap()
        await stop.wait()


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _preflight() -> None:
    from services.common.kafka import preflight
    from services.common.settings import KafkaSettings

    await preflight(KafkaSettings())


async def wait_for_kafka(stop: asyncio.Event, *, first_reminder_s: float = 10.0, max_gap_s: float = 120.0) -> bool:
    """Until Kafka answers (True) or we are stopped (False): one line with the fix, then reminders at
    10 s, 20 s, 40 s ... (capped), while it probes every 2 s, so a broker started later is found at once.
    A refusal that waiting cannot cure (TLS, SASL) raises at once."""
    started = time.monotonic()
    reminder_at, gap, said = started + first_reminder_s, first_reminder_s, False
    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # its own line per failed connection is what we replace
    try:
        while not stop.is_set():
            try:
                await _preflight()
                return True
            except KafkaUnavailable as exc:
                now = time.monotonic()
                if not said:
                    reason = str(exc).split(" (")[0].replace("`agentstream ", f"`{prog()} ")
                    err.print(f"[yellow]waiting for Kafka:[/] {reason}", soft_wrap=True, highlight=False)
                    said = True
                elif now >= reminder_at:
                    err.print(f"[yellow]still no Kafka after {now - started:.0f}s[/]: `{prog()} kafka start`", highlight=False)
                    gap = min(gap * 2, max_gap_s)
                    reminder_at = now + gap
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 2.0)
        return False
    finally:
        quiet.setLevel(level)


@app.command()
def orchestrator(host: str | None = None, port: int | None = None) -> None:
    """Run the orchestrator (HTTP API and WebSocket bridge)."""
    system_allocator()
    _telemetry("orchestrator")
    asyncio.run(_preflight())
    _server(host, port).run()


@app.command()
def bridge(host: str | None = None, port: int | None = None) -> None:
    """Run only the fan-out (/v1/stream WebSocket, SSE events), apart from the API; as many as you like."""
    system_allocator()
    _telemetry("bridge")
    asyncio.run(_preflight())
    _server(host, port, bridge_only=True).run()


@app.command()
def executor() -> None:
    """Run one executor (a member of the consumer group)."""
    system_allocator()
    _telemetry("executor")

    async def main() -> None:
        await _run_executor_until_stopped(_stop_event())

    run_service(main())


@app.command()
def up(host: str | None = None, port: int | None = None, log_format: LogFormat = None) -> None:
    """Run orchestrator, bridge and an executor in one process, for local use."""
    system_allocator()
    from services.orchestrator.settings import OrchestratorSettings

    settings = OrchestratorSettings()
    host, port = host or settings.host, settings.port if port is None else port
    sock = bind(host, port)  # first of all: before the heavy imports, Kafka, any consumer group
    _telemetry("agentstream", log_format=log_format, default_format="auto", calm=True)
    server = _server(host, port)

    async def main() -> None:
        stop = _stop_event()
        if not await wait_for_kafka(stop):
            return
        executor_started = asyncio.Event()
        server.install_signal_handlers = lambda: None
        executor_task = asyncio.create_task(_run_executor_until_stopped(stop, executor_started))
        server_task = asyncio.create_task(server.serve(sockets=[sock]))
        ready = asyncio.ensure_future(_until_up(server, executor_started))
        done, _ = await asyncio.wait({ready, executor_task, server_task, asyncio.ensure_future(stop.wait())}, return_when="FIRST_COMPLETED")
        if ready in done:
            where = f"http://{server.config.host}:{server.config.port}"
            console.print(f"[green]agentstream up[/] on {where} (console {where}/console; Ctrl-C stops)", highlight=False, soft_wrap=True)
            console.file.flush()  # a log file (make demo's) is block-buffered
            freeze_heap()
            await stop.wait()
        ready.cancel()
        server.should_exit = True
        stop.set()
        for task in (server_task, executor_task):  # re-raise what failed in either
            await task

    try:
        run_service(main())
    finally:
        sock.close()


async def _until_up(server: Any, executor_started: asyncio.Event) -> None:
    await executor_started.wait()
    while not server.started:
        await asyncio.sleep(0.05)
