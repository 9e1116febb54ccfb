from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator

import pytest

from services.common.localkafka import LocalKafka
from services.common.settings import KafkaSettings
from tests.e2e.conftest import stack  # noqa: F401  # the same executor + orchestrator fixture as e2e


@pytest.fixture
def own_broker() -> Iterator[LocalKafka]:
    """A broker of this test's own (port 19092), so stopping it disturbs nobody else."""
    broker = LocalKafka(port=19092, controller_port=19093)
    broker.reset()
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
        shutil.rmtree(broker.data_dir, ignore_errors=True)


@pytest.fixture
def own_kafka(own_broker: LocalKafka) -> KafkaSettings:
    return KafkaSettings(bootstrap=own_broker.bootstrap, topic_prefix=f"r{uuid.uuid4().hex[:8]}.", partitions=3, request_timeout_ms=4000)
