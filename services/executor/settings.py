from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.settings import KafkaSettings


class ExecutorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AGENTSTREAM_EXECUTOR_", extra="ignore")

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    group_id: str | None = None  # default: "<topic prefix>executor"
    instance_id: str = "executor"
    max_concurrency: int = 200
    # Token deltas are coalesced into one record per flush: whichever comes first.
    coalesce_interval_ms: float = 20.0
    coalesce_max_chars: int = 256
    agents_file: Path | None = None
    scripted_token_delay_ms: float = 15.0
    tool_timeout_s: float = 10.0

    @property
    def consumer_group(self) -> str:
        return self.group_id or f"{self.kafka.topic_prefix}executor"
