"""One Apache Kafka for the whole suite, and a unique topic prefix for every test.

Order of preference: AGENTSTREAM_KAFKA_BOOTSTRAP; a testcontainers KafkaContainer when a Docker
engine answers; the local broker from deploy/kafka (started if needed, left running for reuse).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from services.common.localkafka import LocalKafka
from services.common.settings import KafkaSettings


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
    except Exception:
        return False
    return True


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    bootstrap = os.environ.get("AGENTSTREAM_KAFKA_BOOTSTRAP")
    if bootstrap:
        yield bootstrap
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("apache/kafka:4.1.1").with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    broker = LocalKafka(port=int(os.environ.get("AGENTSTREAM_TEST_KAFKA_PORT", "9092")))
    broker.start()
    yield broker.bootstrap


@pytest.fixture
def kafka_settings(kafka_bootstrap: str) -> Iterator[KafkaSettings]:
    settings = KafkaSettings(bootstrap=kafka_bootstrap, topic_prefix=f"t{uuid.uuid4().hex[:10]}.", partitions=3)
    yield settings
    # Each test makes its own topics: delete them afterwards, so the broker stays small over a whole run.
    asyncio.run(_delete_topics(settings))


async def _delete_topics(settings: KafkaSettings) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap)
    try:
        await admin.start()
        mine = [t for t in await admin.list_topics() if t.startswith(settings.topic_prefix)]
        if mine:
            await admin.delete_topics(mine)
    except KafkaError:
        pass  # best effort: a test that stopped the broker must not fail here
    finally:
        await admin.close()
