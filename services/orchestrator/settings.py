from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.settings import KafkaSettings


class OrchestratorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AGENTSTREAM_", extra="ignore")

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    host: str = "127.0.0.1"
    port: int = 8000
    # API key -> tenant id. JSON in AGENTSTREAM_API_KEYS, e.g. {"dev-key": "acme"}.
    api_keys: dict[str, str] = Field(default_factory=lambda: {"dev-key": "demo"})
    max_body_bytes: int = 1_000_000
    agents_file: Path | None = None
    # Bounded per-connection send queue of the WebSocket bridge (frames); past it, the client is cut off.
    ws_queue_frames: int = 1000
    ws_send_timeout_s: float = 10.0

    def tenant_for(self, key: str | None) -> str | None:
        if not key:
            return None
        return self.api_keys.get(key)
