"""One Apache Kafka for the whole suite, and a unique topic prefix for every test.

Order of preference: AGENTSTREAM_KAFKA_BOOTSTRAP; a testcontainers KafkaContainer when a Docker
engine answers; the local broker from deploy/kafka (started if needed, left running for reuse).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

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
def kafka_settings(kafka_bootstrap: str) -> KafkaSettings:
    return KafkaSettings(bootstrap=kafka_bootstrap, topic_prefix=f"t{uuid.uuid4().hex[:10]}.", partitions=3)
