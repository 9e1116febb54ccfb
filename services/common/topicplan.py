"""The topics agentstream needs, shaped for the cluster they live on: plan, create, check.

The plan is data (``TopicSpec``), so ``agentstream kafka topics plan`` can print it for operators who
create topics with their own tooling, ``create`` makes what is missing, and ``check`` compares a
cluster's topics with it. Replication and ``min.insync.replicas`` default to the cluster's own
defaults (``-1`` / unset in CreateTopics), so one broker in development and three in production need
no setting; per-topic overrides come from ``KafkaSettings``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import for_code

from services.common.errors import AgentstreamError
from services.common.settings import KafkaSettings

log = logging.getLogger(__name__)

_TOPIC_ALREADY_EXISTS = 36
_TOPIC_AUTHORIZATION_FAILED = 29
_WATCHED_CONFIGS = ("cleanup.policy", "min.insync.replicas", "retention.ms")


class TopicMisfit(AgentstreamError):
    """A topic exists in a shape that breaks a promise (e.g. a status topic that is not compacted)."""


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int  # -1: the cluster's default.replication.factor
    configs: dict[str, str] = field(default_factory=dict)
    purpose: str = ""

    @property
    def compacted(self) -> bool:
        return "compact" in self.configs.get("cleanup.policy", "delete")


def plan(settings: KafkaSettings, *, extra: Sequence[str] = ()) -> list[TopicSpec]:
    """Every topic of the contract (and ``extra`` reply topics shaped like the events topic)."""
    topics = settings.topics
    n = settings.partitions
    rows: list[tuple[str, int, dict[str, str], str]] = [
        *((lane, n, {}, "execution.requested, key tenant_id") for lane in topics.lanes),
        (topics.events, n, {}, "every stream event, key execution_id"),
        (topics.ingress, n, {}, "signed execution.requested from producers other than the orchestrator, key tenant_id"),
        *((name, n, {}, "reply topic") for name in extra),
        (topics.control, 1, {}, "cancel requests; every executor reads all"),
        (
            topics.status,
            n,
            {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1", "segment.ms": "600000"},
            "latest status per execution (compacted: views rebuild from it)",
        ),
        (topics.jobs_completed, 3, {}, "job.completed from external services"),
        (topics.dlq, 3, {}, "records that could not be processed"),
        (topics.jobs_requested, 3, {}, "executors -> orchestrator job requests"),
        (topics.jobs_updates, 3, {}, "orchestrator -> executors job updates"),
        (topics.tenants, 1, {"cleanup.policy": "compact"}, "every tenant's latest record (compacted: executors rebuild from it)"),
        # A live feed between orchestrator replicas: nobody reads it from the beginning.
        (topics.task_updates, 3, {"retention.ms": "3600000"}, "task updates shared by orchestrator replicas"),
        (topics.cache_invalidations, 1, {"retention.ms": "3600000"}, "result cache invalidations shared by orchestrator replicas"),
        (topics.schedules, 3, {"cleanup.policy": "compact"}, "schedule definitions and slot claims (compacted: replicas rebuild from it)"),
    ]
    return [_spec(settings, name, partitions, configs, purpose) for name, partitions, configs, purpose in rows]


def _spec(settings: KafkaSettings, name: str, partitions: int, configs: dict[str, str], purpose: str) -> TopicSpec:
    short = name.removeprefix(settings.topic_prefix)
    configs = dict(configs)
    min_isr = settings.topic_min_insync_replicas.get(short, settings.min_insync_replicas)
    if min_isr is not None:
        configs["min.insync.replicas"] = str(min_isr)
    if short in settings.topic_retention_ms:
        configs["retention.ms"] = str(settings.topic_retention_ms[short])
    replication = settings.topic_replication.get(short, settings.replication_factor)
    return TopicSpec(name, partitions, replication, configs, purpose)


def new_topic(spec: TopicSpec) -> NewTopic:
    # aiokafka's NewTopic refuses replication_factor=-1 unless replica assignments are given; an empty
    # assignment passes its check and sends -1, which the broker reads as "use my default" (KIP-464).
    assignments: dict[int, list[int]] | None = {} if spec.replication_factor == -1 else None
    return NewTopic(spec.name, spec.partitions, spec.replication_factor, replica_assignments=assignments, topic_configs=spec.configs)


async def create_missing(admin: AIOKafkaAdminClient, specs: Sequence[TopicSpec]) -> list[str]:
    """Create the topics that do not exist yet; returns their names. A refusal (ACLs, too few
    brokers for the replication asked) raises ``AgentstreamError`` with the broker's reason."""
    existing = set(await admin.list_topics())
    missing = [s for s in specs if s.name not in existing]
    if not missing:
        return []
    response = await admin.create_topics([new_topic(s) for s in missing])
    refused: dict[str, list[str]] = {}
    for t in response.to_object()["topic_errors"]:
        if t["error_code"] not in (0, _TOPIC_ALREADY_EXISTS):
            refused.setdefault(t["error_message"] or for_code(t["error_code"]).__name__, []).append(t["topic"])
    if refused:
        authorization = any(t["error_code"] == _TOPIC_AUTHORIZATION_FAILED for t in response.to_object()["topic_errors"])
        raise TopicCreationRefused(refused, authorization=authorization)
    await _wait_for_leaders(admin, [s.name for s in missing])
    return [s.name for s in missing]


class TopicCreationRefused(AgentstreamError):
    def __init__(self, refused: dict[str, list[str]], *, authorization: bool) -> None:
        reasons = "; ".join(f"{', '.join(topics)}: {reason.rstrip('.')}" for reason, topics in refused.items())
        hint = (
            "create them with an admin principal (`agentstream kafka topics create`, or your tooling from "
            "`agentstream kafka topics plan`); if they exist, this principal lacks Describe on them: grant it the ACLs "
            "of docs/kafka.md"
            if authorization
            else "fix the replication settings (AGENTSTREAM_KAFKA_REPLICATION_FACTOR / _TOPIC_REPLICATION) or the cluster"
        )
        super().__init__(f"the cluster refused to create topics ({reasons}): {hint}")


async def describe(admin: AIOKafkaAdminClient, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """name -> {partitions, replication, configs} for the topics of ``names`` that exist."""
    found: dict[str, dict[str, Any]] = {}
    # Only topics that exist: a metadata request naming a missing topic creates it on brokers with
    # auto.create.topics.enable (aiokafka asks for that), and a check must not change the cluster.
    existing = set(await admin.list_topics())
    present = [name for name in names if name in existing]
    for topic in await admin.describe_topics(present) if present else []:
        if topic.get("error_code") or not topic.get("partitions"):
            continue
        replicas = min(len(p["replicas"]) for p in topic["partitions"])
        found[topic["topic"]] = {"partitions": len(topic["partitions"]), "replication": replicas, "configs": {}}
    if found:
        resources = [ConfigResource(ConfigResourceType.TOPIC, name, None) for name in found]
        for response in await admin.describe_configs(resources):
            for resource in response.to_object()["resources"]:
                if resource["error_code"]:  # e.g. no DescribeConfigs ACL: unknown, which is not "wrong"
                    log.warning("cannot read the configs of topic %s: %s", resource["resource_name"], resource["error_message"])
                    continue
                entries = {e["config_names"]: e["config_value"] for e in resource["config_entries"]}
                found[resource["resource_name"]]["configs"] = {k: entries[k] for k in _WATCHED_CONFIGS if k in entries}
    return found


def differences(specs: Sequence[TopicSpec], actual: dict[str, dict[str, Any]]) -> list[str]:
    """What differs between the plan and the cluster, one sentence each; empty when they match."""
    out: list[str] = []
    for spec in specs:
        have = actual.get(spec.name)
        if have is None:
            out.append(
                f"{spec.name}: missing (create it with {spec.partitions} partitions), or hidden from this principal (no Describe ACL)"
            )
            continue
        if have["partitions"] < spec.partitions:
            out.append(f"{spec.name}: {have['partitions']} partitions, the plan has {spec.partitions} (fewer caps parallelism)")
        if spec.replication_factor != -1 and have["replication"] != spec.replication_factor:
            out.append(f"{spec.name}: replication {have['replication']}, the plan has {spec.replication_factor}")
        if not have["configs"]:
            out.append(f"{spec.name}: its configs could not be read (DescribeConfigs refused), so they were not compared")
            continue
        policy = have["configs"].get("cleanup.policy", "delete")
        if spec.compacted != ("compact" in policy):
            out.append(f"{spec.name}: cleanup.policy={policy}, the plan has {spec.configs.get('cleanup.policy', 'delete')}")
        for key in ("min.insync.replicas", "retention.ms"):
            if key in spec.configs and have["configs"].get(key) != spec.configs[key]:
                out.append(f"{spec.name}: {key}={have['configs'].get(key)}, the plan has {spec.configs[key]}")
    return out


async def verify_promises(admin: AIOKafkaAdminClient, specs: Sequence[TopicSpec], *, wait_s: float = 5.0) -> None:
    """Refuse to run on a topic that would break a promise; warn where the cluster could do better."""
    names = [s.name for s in specs]
    # Brokers learn of new topics from the controller one after another: the broker asked may not
    # know one yet. Wait a little for all of them rather than skip one's checks.
    deadline = asyncio.get_running_loop().time() + wait_s
    while len(actual := await describe(admin, names)) < len(names) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.2)
    for spec in specs:
        have = actual.get(spec.name)
        if spec.compacted and have is not None and "compact" not in have["configs"].get("cleanup.policy", "compact"):
            raise TopicMisfit(
                f"topic {spec.name} has cleanup.policy={have['configs']['cleanup.policy']}: the status topic must be compacted "
                "(it holds every execution's latest status; with delete, views forget running executions): "
                f"run `kafka-configs --alter --entity-type topics --entity-name {spec.name} --add-config cleanup.policy=compact`"
            )
    brokers = len((await admin.describe_cluster())["brokers"])
    if brokers >= 3:
        thin = sorted(name for name, have in actual.items() if have["replication"] < 3)
        if thin:
            log.warning(
                "topics %s have replication below 3 on a cluster of %d brokers: one broker loss can lose acknowledged work "
                "(set AGENTSTREAM_KAFKA_REPLICATION_FACTOR=3 for new topics; `agentstream kafka topics check` lists them)",
                ", ".join(thin),
                brokers,
            )


async def _wait_for_leaders(admin: AIOKafkaAdminClient, names: list[str], timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        described = await admin.describe_topics(names)
        if all(
            not t.get("error_code") and t.get("partitions") and all(p.get("leader", -1) >= 0 for p in t["partitions"]) for t in described
        ):
            return
        await asyncio.sleep(0.1)
    log.warning("topics %s have no leader after %.0fs", names, timeout)
