"""`agentstream kafka`: a local Apache Kafka (KRaft) from deploy/kafka, and the topic plan of any cluster."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Annotated, Any

import typer

from services.cli.base import console, fail, group
from services.common.localcluster import LocalCluster
from services.common.localkafka import LocalKafka, LocalKafkaError, answers_metadata

kafka_app = group("kafka", "A local Apache Kafka (KRaft) from deploy/kafka.")
Port = Annotated[int, typer.Option(help="Broker port on 127.0.0.1.", envvar="AGENTSTREAM_LOCAL_KAFKA_PORT")]

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
        fail(str(exc))
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
        fail(str(exc))
    console.print(f"[green]Kafka jars ready[/] in {broker.lib_dir}")


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

    created = asyncio.run(main())
    console.print(f"[green]created[/] {', '.join(created)}" if created else "[green]all topics exist[/]", soft_wrap=True)


@topics_app.command("check")
def topics_check() -> None:
    """Compare the cluster's topics with the plan: partitions, replication, cleanup policy; exit 1 if they differ."""
    from services.common.topicplan import describe, differences, plan

    async def main() -> list[str]:
        async with _admin() as (admin, settings):
            specs = plan(settings)
            return differences(specs, await describe(admin, [s.name for s in specs]))

    found = asyncio.run(main())
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
