"""Kafka client settings shared by both services."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.topics import Topics


class KafkaSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AGENTSTREAM_KAFKA_", extra="ignore")

    bootstrap: str = "127.0.0.1:9092"
    topic_prefix: str = "agentstream."
    partitions: int = 6
    linger_ms: int = 2
    request_timeout_ms: int = 10_000

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)
