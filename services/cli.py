"""The ``agentstream`` command line: it only wires the services together."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from services.common.errors import AgentstreamError
from services.common.localcluster import LocalCluster
from services.common.localkafka import LocalKafka, LocalKafkaError, answers_metadata

app = typer.Typer(help="agentstream: LLM agents as event-driven services on Apache Kafka.", no_args_is_help=True)
kafka_app = typer.Typer(help="A local Apache Kafka (KRaft) from deploy/kafka.", no_args_is_help=True)
schemas_app = typer.Typer(help="The event contract.", no_args_is_help=True)
app.add_typer(kafka_app, name="kafka")
app.add_typer(schemas_app, name="schemas")
tenants_app = typer.Typer(help="Tenants in the state store (AGENTSTREAM_DATABASE_URL).", no_args_is_help=True)
keys_app = typer.Typer(help="API keys of tenants: stored hashed, shown once at creation.", no_args_is_help=True)
app.add_typer(tenants_app, name="tenants")
app.add_typer(keys_app, name="keys")
replay_app = typer.Typer(help="Replay an execution, a session, or a topic range.", no_args_is_help=True)
app.add_typer(replay_app, name="replay")
docs_app = typer.Typer(help="Contracts: AsyncAPI of the Kafka topics, OpenAPI of the HTTP API.", no_args_is_help=True)
app.add_typer(docs_app, name="docs")
ingress_app = typer.Typer(help="The Kafka door: signed requests on the ingress topic (docs/kafka.md).", no_args_is_help=True)
app.add_typer(ingress_app, name="ingress")

console = Console()
err = Console(stderr=True)

Port = Annotated[int, typer.Option(help="Broker port on 127.0.0.1.", envvar="AGENTSTREAM_LOCAL_KAFKA_PORT")]


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", soft_wrap=True, markup=True, highlight=False)  # one line, whatever the width
    raise typer.Exit(1)


# -- kafka ----------------------------------------------------------------------------------
Brokers = Annotated[int, typer.Option(help="Nodes of a KRaft quorum (each broker + controller); node i on port + 10*i.")]
Sasl = Annotated[bool, typer.Option(help="Add a SASL_SSL listener (port + 2) with SCRAM users and ACLs; certificates made at start.")]
Users = Annotated[list[str] | None, typer.Option("--user", help="SCRAM user name=password (repeatable); default admin=admin-secret.")]


def _local(port: int, brokers: int, sasl: bool = False, users: list[str] | None = None) -> LocalKafka | LocalCluster:
    given = (u.partition("=") for u in users or ["admin=admin-secret"])
    pairs = tuple((name, password) for name, _, password in given if name and password) if sasl else ()
    if brokers > 1:
        return LocalCluster(brokers=brokers, port=port, sasl=sasl, users=pairs)
    return LocalKafka(port=port, controller_port=port + 1, sasl_port=port + 2 if sasl else None, users=pairs)


@kafka_app.command("start")
def kafka_start(port: Port = 9092, brokers: Brokers = 1, sasl: Sasl = False, user: Users = None) -> None:
    """Fetch (first run) and start the local broker (or a quorum of them); wait until they answer metadata."""
    broker = _local(port, brokers, sasl, user)
    if isinstance(broker, LocalKafka) and broker.is_running():
        console.print(f"[green]Kafka already running[/] on {broker.bootstrap} (pid {broker.pid()})")
        return
    try:
        with console.status("starting Kafka") as status:
            seconds = broker.start(on_step=lambda step: status.update(step))
    except LocalKafkaError as exc:
        _fail(str(exc))
    console.print(f"[green]Kafka is up[/] on {broker.bootstrap} in {seconds:.1f}s")
    if sasl:
        ca = broker.ca_file if isinstance(broker, LocalKafka) else broker.nodes[0].ca_file
        console.print(
            f"SASL_SSL on {broker.sasl_bootstrap}: AGENTSTREAM_KAFKA_SECURITY_PROTOCOL=SASL_SSL AGENTSTREAM_KAFKA_SSL_CAFILE={ca} "
            "AGENTSTREAM_KAFKA_SASL_USERNAME=... AGENTSTREAM_KAFKA_SASL_PASSWORD=... (docs/kafka.md)",
            soft_wrap=True,
        )


@kafka_app.command("stop")
def kafka_stop(port: Port = 9092, brokers: Brokers = 1) -> None:
    """Stop the local broker(s) by PID."""
    stopped = _local(port, brokers).stop()
    console.print("[green]Kafka stopped[/]" if stopped else "Kafka was not running")


@kafka_app.command("status")
def kafka_status(port: Port = 9092, brokers: Brokers = 1) -> None:
    """Say whether the local broker(s) run and answer."""
    local = _local(port, brokers)
    nodes = local.nodes if isinstance(local, LocalCluster) else [local]
    down = 0
    for broker in nodes:
        pid = broker.pid()
        if pid is None:
            console.print(f"[yellow]not running[/] (would listen on {broker.bootstrap})")
            down += 1
            continue
        answers = asyncio.run(answers_metadata(broker.bootstrap))
        state = "[green]running, answers metadata[/]" if answers else "[yellow]running, not answering yet[/]"
        console.print(f"{state} on {broker.bootstrap} (pid {pid})")
    if down:
        raise typer.Exit(3)


@kafka_app.command("fetch")
def kafka_fetch() -> None:
    """Fetch the Apache Kafka jars from Maven Central (cached in deploy/kafka/lib)."""
    broker = LocalKafka()
    try:
        with console.status("fetching Apache Kafka jars from Maven Central"):
            broker.fetch_jars()
    except LocalKafkaError as exc:
        _fail(str(exc))
    console.print(f"[green]Kafka jars ready[/] in {broker.lib_dir}")


# -- kafka topics -----------------------------------------------------------------------------
topics_app = typer.Typer(
    help="The topic plan, for the cluster in AGENTSTREAM_KAFKA_* (services/common/topicplan.py).", no_args_is_help=True
)
kafka_app.add_typer(topics_app, name="topics")


@topics_app.command("plan")
def topics_plan(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable.")] = False,
    commands: Annotated[bool, typer.Option(help="As kafka-topics and kafka-acls commands (least-privilege ACLs per service).")] = False,
) -> None:
    """Print the topics agentstream needs (for ops who create topics with their own tooling)."""
    from services.common import acls
    from services.common.settings import KafkaSettings
    from services.common.topicplan import plan

    settings = KafkaSettings()
    specs = plan(settings)
    if as_json:
        rows = [
            {"name": s.name, "partitions": s.partitions, "replication_factor": s.replication_factor, "configs": s.configs} for s in specs
        ]
        typer.echo(json.dumps(rows, indent=2))
        return
    if commands:
        for s in specs:
            replication = "" if s.replication_factor == -1 else f" --replication-factor {s.replication_factor}"
            configs = "".join(f" --config {k}={v}" for k, v in s.configs.items())
            create = f"kafka-topics --bootstrap-server $BOOTSTRAP --create --if-not-exists --topic {s.name}"
            typer.echo(f"{create} --partitions {s.partitions}{replication}{configs}")
        for role in ("orchestrator", "executor"):
            for binding in acls.plan(settings, role, f"User:{role}"):
                typer.echo(binding.command())
        return
    for s in specs:
        replication = "cluster default" if s.replication_factor == -1 else str(s.replication_factor)
        configs = ",".join(f"{k}={v}" for k, v in s.configs.items()) or "-"
        console.print(
            f"{s.name}  partitions={s.partitions}  replication={replication}  configs={configs}  [dim]{s.purpose}[/]", soft_wrap=True
        )


@topics_app.command("create")
def topics_create() -> None:
    """Create the missing topics of the plan (needs a principal allowed to create topics)."""
    from services.common.topicplan import create_missing, plan

    async def main() -> list[str]:
        async with _admin() as (admin, settings):
            return await create_missing(admin, plan(settings))

    created = _guarded(main)
    console.print(f"[green]created[/] {', '.join(created)}" if created else "[green]all topics exist[/]", soft_wrap=True)


@topics_app.command("check")
def topics_check() -> None:
    """Compare the cluster's topics with the plan: partitions, replication, cleanup policy; exit 1 if they differ."""
    from services.common.topicplan import describe, differences, plan

    async def main() -> list[str]:
        async with _admin() as (admin, settings):
            specs = plan(settings)
            return differences(specs, await describe(admin, [s.name for s in specs]))

    found = _guarded(main)
    for line in found:
        console.print(f"[yellow]differs[/] {line}", soft_wrap=True)
    if found:
        raise typer.Exit(1)
    console.print("[green]the cluster's topics match the plan[/]")


@contextlib.asynccontextmanager
async def _admin() -> Any:
    from aiokafka.admin import AIOKafkaAdminClient

    from services.common.kafka import client_options, start_client
    from services.common.settings import KafkaSettings

    settings = KafkaSettings()
    admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=settings.request_timeout_ms)
    await start_client(admin, settings)
    try:
        yield admin, settings
    finally:
        await admin.close()


def _guarded(main: Any) -> Any:
    result: Any = None

    def run() -> None:
        nonlocal result
        result = asyncio.run(main())

    _guard(run)
    return result


# -- ingress -------------------------------------------------------------------------------
@ingress_app.command("sign")
def ingress_sign(
    body: Annotated[str, typer.Argument(help="The request, as the JSON body of POST /v1/executions.")],
    tenant: Annotated[str, typer.Option(help="The tenant id: the record's key.")],
    secret_env: Annotated[
        str, typer.Option(help="Environment variable holding the tenant's whsec_ secret.")
    ] = "AGENTSTREAM_INGRESS_SECRET",
    message_id: Annotated[str | None, typer.Option(help="webhook-id (default: a new one).")] = None,
) -> None:
    """Print the headers of a signed ingress record as kcat -H flags, and the execution id it will get."""
    import time
    import uuid

    from services.orchestrator.ingress import execution_id_for
    from services.orchestrator.signatures import sign

    secret = os.environ.get(secret_env)
    if not secret:
        _fail(f"set {secret_env} to the tenant's signing secret (AGENTSTREAM_INGRESS_SIGNING_KEYS on the orchestrator)")
        return
    message_id = message_id or f"msg_{uuid.uuid4().hex}"
    timestamp = int(time.time())
    signature = sign(secret, message_id=message_id, timestamp=timestamp, value=body.encode())
    typer.echo(f"-k {tenant} -H webhook-id={message_id} -H webhook-timestamp={timestamp} -H webhook-signature={signature}")
    err.print(f"execution id: {execution_id_for(tenant, message_id)}", soft_wrap=True, highlight=False)


# -- services -------------------------------------------------------------------------------
def _telemetry(service: str) -> None:
    """JSON logs with every configured secret redacted; OTLP traces when OTEL_EXPORTER_OTLP_ENDPOINT is set."""
    from services.common.observability.settings import configure, secrets_of
    from services.executor.settings import ExecutorSettings
    from services.orchestrator.settings import OrchestratorSettings

    configure(service, secrets=secrets_of(OrchestratorSettings(), ExecutorSettings()))


def _serve_orchestrator(host: str | None, port: int | None, *, bridge_only: bool = False) -> Any:
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
        port=port or settings.port,
        ws_per_message_deflate=False,  # measured: 2.3x less memory per connection, 1.4x throughput
        log_level="warning",
    )
    return uvicorn.Server(config)


async def _run_executor_until_stopped(stop: asyncio.Event) -> None:
    from services.executor.app import Executor
    from services.executor.settings import ExecutorSettings

    async with Executor(ExecutorSettings()):
        await stop.wait()


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


@app.command()
def orchestrator(host: str | None = None, port: int | None = None) -> None:
    """Run the orchestrator (HTTP API and WebSocket bridge)."""
    _telemetry("orchestrator")

    def main() -> None:
        asyncio.run(_preflight())
        _serve_orchestrator(host, port).run()

    _guard(main)


@app.command()
def bridge(host: str | None = None, port: int | None = None) -> None:
    """Run only the fan-out (/v1/stream WebSocket, SSE events), apart from the API; as many as you like."""
    _telemetry("bridge")

    def main() -> None:
        asyncio.run(_preflight())
        _serve_orchestrator(host, port, bridge_only=True).run()

    _guard(main)


async def _preflight() -> None:
    from services.common.kafka import preflight
    from services.common.settings import KafkaSettings

    await preflight(KafkaSettings())


@app.command()
def bench(
    scenario: Annotated[Path | None, typer.Argument(help="bench/scenarios/*.yaml or .toml (default: default.yaml)")] = None,
    phases: Annotated[str, typer.Option(help="Comma-separated subset: kafka,loads,fanout,idle,coalesce,accept.")] = "",
) -> None:
    """Benchmark against the floor: table, bench/results/<name>.json and PNG plots (needs the `bench` extra)."""
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))  # bench/ and tests/fakes/ live beside the installed packages, not in them
    from bench.__main__ import main as bench_main

    raise typer.Exit(bench_main([*([str(scenario)] if scenario else []), *(["--phases", phases] if phases else [])]))


@app.command()
def executor() -> None:
    """Run one executor (a member of the consumer group)."""
    _telemetry("executor")

    async def main() -> None:
        await _run_executor_until_stopped(_stop_event())

    _guard(lambda: asyncio.run(main()))


@app.command()
def up(host: str | None = None, port: int | None = None) -> None:
    """Run orchestrator, bridge and an executor in one process, for local use."""
    _telemetry("agentstream")

    async def main() -> None:
        await _preflight()
        server = _serve_orchestrator(host, port)
        stop = _stop_event()
        executor_task = asyncio.create_task(_run_executor_until_stopped(stop))
        server_task = asyncio.create_task(server.serve())
        server.install_signal_handlers = lambda: None
        console.print(f"[green]agentstream up[/] on http://{server.config.host}:{server.config.port} (Ctrl-C stops)")
        await stop.wait()
        server.should_exit = True
        await asyncio.gather(server_task, executor_task)

    _guard(lambda: asyncio.run(main()))


def _guard(run: Any) -> None:
    from pydantic import ValidationError

    try:
        run()
    except AgentstreamError as exc:
        _fail(str(exc))
    except ValidationError as exc:  # settings from the environment: say which one, without a traceback
        _fail("; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors()))


# -- run ------------------------------------------------------------------------------------
@app.command()
def run(
    prompt: str,
    agent: Annotated[str, typer.Option(help="Agent name.")] = "default",
    url: Annotated[str, typer.Option(envvar="AGENTSTREAM_URL")] = "http://127.0.0.1:8000",
    api_key: Annotated[str, typer.Option(envvar="AGENTSTREAM_API_KEY")] = "dev-key",
    priority: str = "standard",
) -> None:
    """Submit an execution, then render its stream live: tokens as they come, tool calls as they run."""
    from services.render import stream_execution

    try:
        ok = asyncio.run(stream_execution(console, url=url, api_key=api_key, prompt=prompt, agent=agent, priority=priority))
    except OSError as exc:
        _fail(f"cannot reach agentstream at {url} ({exc}): start it with `agentstream up`")
    raise typer.Exit(0 if ok else 1)


@app.command()
def demo(port: int = 8000) -> None:
    """Start Kafka and the services, stream one sample execution to the terminal, stop the services."""
    kafka_start(9092)
    env = {**os.environ, "AGENTSTREAM_PORT": str(port)}
    log = Path(".agentstream")
    log.mkdir(exist_ok=True)
    # The reference Query/Embedding services (examples/services), when run from the repository.
    services = _demo_services(env, port, log) if Path("examples/services").is_dir() else None
    with open(log / "up.log", "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "services.cli", "up"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        with console.status("starting orchestrator and executor"):
            _wait_ready(url, proc, timeout=60)
        prompts = [("default", "What is 17 * 23 + 4?")]
        if services is not None:
            prompts.append(("docs", "According to the docs, how does a client resume a stream after a disconnect?"))
        for agent, prompt in prompts:
            console.rule(f"[bold]agentstream run --agent {agent}[/] {prompt!r}")
            try:
                run(prompt, agent=agent, url=url, api_key="dev-key", priority="standard")
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


def _wait_ready(url: str, proc: subprocess.Popen[bytes], *, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _fail(f"the services exited with code {proc.returncode}; see .agentstream/up.log")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    _fail(f"the services did not become ready within {timeout:.0f}s; see .agentstream/up.log")


# -- replay -------------------------------------------------------------------------------------
Url = Annotated[str, typer.Option(envvar="AGENTSTREAM_URL", help="Orchestrator base URL.")]
ApiKey = Annotated[str, typer.Option(envvar="AGENTSTREAM_API_KEY", help="API key of the tenant.")]


def _replay(items: Any, *, as_json: bool) -> None:
    from services.render import render_event
    from services.replay import ReplayError, write_json_line

    async def main() -> None:
        async for item in items:
            if as_json:
                write_json_line(item)
            else:
                render_event(console, item["event"])

    try:
        asyncio.run(main())
    except (ReplayError, AgentstreamError) as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot reach agentstream ({exc}): start it with `agentstream up` or pass --url")


@replay_app.command("execution")
def replay_execution(
    execution_id: str,
    cursor: Annotated[int | None, typer.Option(help="Only events after this cursor.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of rendering.")] = False,
    url: Url = "http://127.0.0.1:8000",
    api_key: ApiKey = "dev-key",
) -> None:
    """Replay one execution's events (finished or live) through the API."""
    from services.replay import execution_events

    _replay(execution_events(url, api_key, execution_id, cursor=cursor), as_json=as_json)


@replay_app.command("session")
def replay_session(
    session_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of rendering.")] = True,
    url: Url = "http://127.0.0.1:8000",
    api_key: ApiKey = "dev-key",
) -> None:
    """Replay every execution of a session, then follow it until it is idle."""
    from services.replay import session_events

    _replay(session_events(url, api_key, session_id), as_json=as_json)


@replay_app.command("topic")
def replay_topic(
    topic: Annotated[str, typer.Option(help="Topic name without the prefix, e.g. executions.events.")] = "executions.events",
    group: Annotated[str | None, typer.Option(help="Your own consumer group: offsets are committed, reruns go on.")] = None,
    from_beginning: Annotated[bool, typer.Option(help="Start at the earliest retained record.")] = False,
    from_time: Annotated[datetime | None, typer.Option(help="Start at this time (ISO 8601).")] = None,
    limit: Annotated[int | None, typer.Option(help="Stop after this many records.")] = None,
) -> None:
    """Read a topic range straight from Kafka as JSON lines (the consumer-group pattern)."""
    from services.common.settings import KafkaSettings
    from services.replay import topic_records

    kafka = KafkaSettings()
    records = topic_records(
        kafka=kafka,
        topic=kafka.topic_prefix + topic,
        group_id=group,
        from_beginning=from_beginning,
        from_time=from_time,
        limit=limit,
    )
    from services.replay import ReplayError, write_json_line

    async def main() -> None:
        async for record in records:
            write_json_line(record)

    try:
        asyncio.run(main())
    except ReplayError as exc:
        _fail(str(exc))


# -- docs -----------------------------------------------------------------------------------
def _write_doc(document: Any, out: Path | None) -> None:
    text = json.dumps(document, indent=2, sort_keys=True)
    if out is None:
        sys.stdout.write(text + "\n")
    else:
        out.write_text(text + "\n")
        console.print(f"[green]wrote[/] {out}")


@docs_app.command("asyncapi")
def docs_asyncapi(
    out: Annotated[Path | None, typer.Option(help="Write here instead of stdout.")] = None,
    prefix: Annotated[str, typer.Option(help="Topic prefix.")] = "agentstream.",
    bootstrap: Annotated[str, typer.Option(help="Kafka bootstrap shown as the server.")] = "127.0.0.1:9092",
) -> None:
    """AsyncAPI 3.0 of the Kafka topics, generated by FastStream from the event models."""
    from services.asyncapi import asyncapi_document

    _write_doc(asyncapi_document(prefix=prefix, bootstrap=bootstrap), out)


@docs_app.command("openapi")
def docs_openapi(out: Annotated[Path | None, typer.Option(help="Write here instead of stdout.")] = None) -> None:
    """OpenAPI 3.1 of the HTTP API (what /openapi.json serves)."""
    from services.orchestrator.app import create_app
    from services.orchestrator.docs import openapi

    _write_doc(openapi(create_app().routes), out)


# -- schemas --------------------------------------------------------------------------------
@schemas_app.command("export")
def schemas_export(out: Annotated[Path | None, typer.Option(help="Write here instead of stdout.")] = None) -> None:
    """Export the JSON Schema of every event (a discriminated union on `type`)."""
    from schemas.export import events_json_schema

    text = json.dumps(events_json_schema(), indent=2, sort_keys=True)
    if out is None:
        sys.stdout.write(text + "\n")
    else:
        out.write_text(text + "\n")
        console.print(f"[green]wrote[/] {out}")


# -- tenants and keys -----------------------------------------------------------------------
def _with_store(work: Any) -> Any:
    from services.orchestrator.settings import OrchestratorSettings
    from services.orchestrator.store import Store

    async def main() -> Any:
        async with Store(OrchestratorSettings().database_url.get_secret_value()) as store, store.begin() as conn:
            return await work(conn)

    try:
        return asyncio.run(main())
    except AgentstreamError as exc:
        _fail(str(exc))


@tenants_app.command("create")
def tenants_create(
    tenant_id: str,
    name: str = "",
    rpm: Annotated[int | None, typer.Option(help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute.")] = None,
    concurrent: Annotated[int | None, typer.Option(help="Concurrent executions.")] = None,
) -> None:
    """Create a tenant; prints its webhook signing secret."""
    import re

    from services.orchestrator.store import tenants

    if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", tenant_id):
        _fail("tenant id: 1-64 letters, digits, '_', '.', '-'")
    limits = {k: v for k, v in {"requests_per_minute": rpm, "tokens_per_minute": tpm, "concurrent": concurrent}.items() if v is not None}
    tenant = _with_store(lambda conn: tenants.create_tenant(conn, tenant_id, name=name, limits=limits))
    if tenant is None:
        _fail(f"tenant {tenant_id!r} exists")
    console.print(f"[green]tenant created[/] {tenant.id}  webhook secret: {tenant.webhook_secret}")


@tenants_app.command("list")
def tenants_list() -> None:
    """List tenants."""
    from services.orchestrator.store import tenants

    for t in _with_store(tenants.list_tenants):
        console.print(f"{t.id}\t{t.name}\tlimits={t.limits or 'defaults'}{'  (disabled)' if t.disabled else ''}")


@keys_app.command("create")
def keys_create(tenant_id: str, name: str = "") -> None:
    """Create an API key for a tenant. The key is printed once; only its digest is stored."""
    from services.orchestrator.store import tenants

    async def work(conn: Any) -> Any:
        if await tenants.get_tenant(conn, tenant_id) is None:
            return None
        return await tenants.create_key(conn, tenant_id, name=name)

    made = _with_store(work)
    if made is None:
        _fail(f"no tenant {tenant_id!r}: create it with `agentstream tenants create {tenant_id}`")
    key, secret = made
    console.print(f"[green]key created[/] {key.id} for {tenant_id} (shown once, store it now):")
    sys.stdout.write(secret + "\n")


@keys_app.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke an API key (other replicas stop accepting it within AGENTSTREAM_AUTH_CACHE_S)."""
    from services.orchestrator.store import tenants

    key = _with_store(lambda conn: tenants.revoke_key(conn, key_id))
    if key is None:
        _fail(f"no key {key_id!r}")
    console.print(f"[green]key revoked[/] {key.id} of {key.tenant_id}")


@keys_app.command("list")
def keys_list(tenant_id: Annotated[str | None, typer.Argument()] = None) -> None:
    """List keys (ids and prefixes, never the keys)."""
    from services.orchestrator.store import tenants

    for k in _with_store(lambda conn: tenants.list_keys(conn, tenant_id)):
        console.print(f"{k.id}\t{k.tenant_id}\t{k.prefix}…\t{k.name}{'  (revoked)' if k.revoked_at else ''}")


if __name__ == "__main__":
    app()
