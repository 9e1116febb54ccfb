"""`agentstream demo` (Kafka, the services, one streamed answer or two) and `agentstream bench`."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from services.cli.base import DEFAULT_KEY, app, console, fail
from services.cli.client import run
from services.cli.kafka import kafka_start


@app.command()
def demo(port: int = 8000) -> None:
    """Start Kafka and the services, stream one sample execution to the terminal, stop the services."""
    kafka_start(9092)
    # The server we start echoes this on /health/live: a server someone else runs on the port is not ours.
    instance = f"demo-{secrets.token_hex(6)}"
    env = {**os.environ, "AGENTSTREAM_PORT": str(port), "AGENTSTREAM_INSTANCE_ID": instance, "AGENTSTREAM_LOG_FORMAT": "json"}
    log = Path(".agentstream")
    log.mkdir(exist_ok=True)
    # The reference Query/Embedding services (examples/services), when run from the repository.
    services = _demo_services(env, port, log) if Path("examples/services").is_dir() else None
    with open(log / "up.log", "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "services.cli", "up"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        with console.status("starting orchestrator and executor"):
            wait_ready(url, proc, instance=instance, timeout=60, log=log / "up.log")
        prompts = [("default", "What is 17 * 23 + 4?")]
        if services is not None:
            prompts.append(("docs", "According to the docs, how does a client resume a stream after a disconnect?"))
        for agent, prompt in prompts:
            console.rule(f"[bold]agentstream run --agent {agent}[/] {prompt!r}")
            try:
                run(prompt, agent=agent, url=url, api_key=DEFAULT_KEY, priority="standard")
            except typer.Exit as done:  # run() always exits; go on to the next prompt if it succeeded
                if done.exit_code:
                    raise
    except typer.Exit as exit_:
        if exit_.exit_code:
            raise
    finally:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(20)
        if proc.poll() is None:
            proc.kill()
        if services is not None:
            services.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                services.wait(10)


def _demo_services(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    tokens = {"query": "demo-query-token", "embedding": "demo-embedding-token"}
    env["AGENTSTREAM_SERVICE_TOKENS"] = json.dumps(tokens)
    env["AGENTSTREAM_QUERY_SERVICE"] = json.dumps({"url": "http://127.0.0.1:8101", "token": tokens["query"]})
    env["AGENTSTREAM_EMBEDDING_SERVICE"] = json.dumps({"url": "http://127.0.0.1:8102", "token": tokens["embedding"]})
    args = [sys.executable, "-m", "examples.services", "--orchestrator", f"http://127.0.0.1:{port}"]
    with open(log / "services.log", "wb") as out:
        return subprocess.Popen(args, env={**env, "HF_HUB_OFFLINE": "1"}, stdout=out, stderr=subprocess.STDOUT)


def wait_ready(url: str, proc: subprocess.Popen[bytes], *, instance: str, timeout: float, log: Path) -> None:
    """Until the server *we* started (its /health/live names ``instance``) is ready; another one answering
    on the port fails at once rather than being demonstrated against."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            fail(f"the services exited with code {proc.returncode}: {_last_line(log)} (all of it in {log})")
        with contextlib.suppress(httpx.HTTPError, ValueError):
            live = httpx.get(f"{url}/health/live", timeout=2)
            if live.status_code == 200 and live.json().get("instance") != instance:
                fail(f"another server answers on {url} (not the one this demo started): stop it, or run the demo with --port")
            if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    fail(f"the services did not become ready within {timeout:.0f}s; see {log}")


def _last_line(log: Path) -> str:
    with contextlib.suppress(OSError):
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        if lines:
            return lines[-1].removeprefix("error: ")
    return "no output"


@app.command()
def bench(
    scenario: Annotated[Path | None, typer.Argument(help="bench/scenarios/*.yaml or .toml (default: default.yaml)")] = None,
    phases: Annotated[str, typer.Option(help="Comma-separated subset: kafka,loads,recovery,fanout,idle,coalesce,accept,quiet.")] = "",
    out: Annotated[Path | None, typer.Option(help="Where the JSON, markdown and PNGs go (default: bench/results).")] = None,
) -> None:
    """Benchmark against the floor: table, bench/results/<name>.json and PNG plots (needs the `bench` extra)."""
    root = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root))  # bench/ and tests/fakes/ live beside the installed packages, not in them
    from bench.__main__ import main as bench_main

    args = [*([str(scenario)] if scenario else []), *(["--phases", phases] if phases else []), *(["--out", str(out)] if out else [])]
    raise typer.Exit(bench_main(args))
