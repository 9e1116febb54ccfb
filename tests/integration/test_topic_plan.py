"""Topics fit the cluster: the plan follows settings, creation uses the cluster's defaults, a check says
what differs, and a service refuses a status topic that is not compacted."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from typer.testing import CliRunner

from services.cli import app
from services.common.kafka import client_options, ensure_topics
from services.common.settings import KafkaSettings
from services.common.topicplan import TopicMisfit, describe, differences, plan


def test_plan_defaults_to_the_cluster_and_takes_overrides() -> None:
    settings = KafkaSettings(
        topic_prefix="p.",
        replication_factor=3,
        min_insync_replicas=2,
        topic_replication={"dlq": 2},
        topic_min_insync_replicas={"dlq": 1},
        topic_retention_ms={"executions.events": 86_400_000},
    )
    specs = {s.name: s for s in plan(settings)}
    assert {s.replication_factor for s in plan(KafkaSettings())} == {-1}  # the cluster's default.replication.factor
    assert all("min.insync.replicas" not in s.configs for s in plan(KafkaSettings()))
    assert specs["p.executions.events"].replication_factor == 3 and specs["p.executions.events"].configs["retention.ms"] == "86400000"
    assert specs["p.executions.critical"].configs == {"min.insync.replicas": "2"}
    assert specs["p.dlq"].replication_factor == 2 and specs["p.dlq"].configs["min.insync.replicas"] == "1"
    assert specs["p.executions.status"].compacted and not specs["p.executions.events"].compacted


@pytest.mark.kafka
async def test_ensure_topics_applies_settings_and_check_matches(kafka_settings: KafkaSettings) -> None:
    settings = kafka_settings.model_copy(update={"min_insync_replicas": 1, "topic_retention_ms": {"dlq": 3_600_000}})
    await ensure_topics(settings)
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        specs = plan(settings)
        actual = await describe(admin, [s.name for s in specs])
    finally:
        await admin.close()
    assert actual[settings.topics.dlq]["configs"]["retention.ms"] == "3600000"
    assert actual[settings.topics.events]["configs"]["min.insync.replicas"] == "1"
    assert actual[settings.topics.events]["replication"] == 1  # -1 asked: the single broker's default
    assert differences(specs, actual) == []


@pytest.mark.kafka
async def test_a_status_topic_that_is_not_compacted_is_refused_and_check_says_so(kafka_settings: KafkaSettings) -> None:
    topics = kafka_settings.topics
    admin = AIOKafkaAdminClient(**client_options(kafka_settings))
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topics.status, 3, 1, topic_configs={"cleanup.policy": "delete"}), NewTopic(topics.events, 1, 1)]
        )
    finally:
        await admin.close()
    with pytest.raises(TopicMisfit, match=rf"topic {topics.status} has cleanup.policy=delete: the status topic must be compacted"):
        await ensure_topics(kafka_settings)
    env = {
        "AGENTSTREAM_KAFKA_BOOTSTRAP": kafka_settings.bootstrap,
        "AGENTSTREAM_KAFKA_TOPIC_PREFIX": kafka_settings.topic_prefix,
        "AGENTSTREAM_KAFKA_PARTITIONS": "3",
    }
    result = await asyncio.to_thread(CliRunner().invoke, app, ["kafka", "topics", "check"], env=env)  # the CLI runs its own loop
    assert result.exit_code == 1, result.output
    out = " ".join(result.output.split())
    assert f"{topics.status}: cleanup.policy=delete, the plan has compact" in out
    assert f"{topics.events}: 1 partitions, the plan has 3" in out
    plan_out = await asyncio.to_thread(CliRunner().invoke, app, ["kafka", "topics", "plan", "--json"], env=env)
    assert plan_out.exit_code == 0 and f'"name": "{topics.status}"' in plan_out.output
