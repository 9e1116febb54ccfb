from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.settings import KafkaSettings


class RetrySettings(BaseModel):
    """Retries of one provider before the next in the fallback chain; backoff with jitter."""

    attempts: int = Field(default=3, ge=1)  # per provider, the first try included
    backoff_s: float = 0.5  # first delay; doubles per retry
    max_backoff_s: float = 8.0
    max_retry_after_s: float = 30.0  # a longer Retry-After moves on to the fallback instead


class TimeoutSettings(BaseModel):
    connect_s: float = 5.0
    first_token_s: float = 30.0  # request sent -> first chunk of the stream
    total_s: float = 300.0  # one model call, request to last chunk (checked per chunk; a silent stream ends at read_s)
    read_s: float = 60.0  # silence between two chunks


class ExecutorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AGENTSTREAM_EXECUTOR_", env_nested_delimiter="__", extra="ignore")

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    group_id: str | None = None  # default: "<topic prefix>executor"
    instance_id: str = "executor"
    max_concurrency: int = 200
    # How long the group waits for a silent (crashed) member before its requests move to another one.
    session_timeout_ms: int = 10_000
    # After the event loop stalled for half the session timeout (a paused process), writes wait this long
    # for a rebalance that would say the group moved our partitions on; none: still a member (fence.py).
    fence_confirm_s: float = 3.0
    # Token deltas: a delta goes out at once when no record of its execution is in flight; what arrives
    # meanwhile goes in one record on its acknowledgement, or at this many characters (emitter.py).
    coalesce_max_chars: int = 256
    # The producer's linger for this executor's records (AGENTSTREAM_KAFKA_LINGER_MS stays the others'). 0: the
    # emitter's own rule above already batches a busy stream, and aiokafka sends nothing to a broker while a
    # request to it is in flight, so what arrives meanwhile goes in the next request; a linger on top made
    # every token wait it (and its acknowledgement, for the next one). Measured: +3.6-5.6 -> +1.0-2.2 ms p50.
    events_linger_ms: int = Field(default=0, ge=0, le=1000)
    agents_file: Path | None = None
    scripted_token_delay_ms: float = 15.0

    # -- providers (keys are never logged: SecretStr) ------------------------------------------
    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("AGENTSTREAM_EXECUTOR_OPENAI_API_KEY", "OPENAI_API_KEY")
    )
    openai_base_url: str | None = None
    openai_default_model: str = "gpt-4o-mini"
    groq_api_key: SecretStr | None = Field(default=None, validation_alias=AliasChoices("AGENTSTREAM_EXECUTOR_GROQ_API_KEY", "GROQ_API_KEY"))
    groq_base_url: str | None = None
    groq_default_model: str = "llama-3.3-70b-versatile"
    # Any OpenAI-compatible server (vLLM, Ollama, LM Studio): provider name ``openai_compatible``.
    compatible_base_url: str | None = None
    compatible_api_key: SecretStr = SecretStr("none")
    compatible_default_model: str = "default"
    retry: RetrySettings = Field(default_factory=RetrySettings)
    timeouts: TimeoutSettings = Field(default_factory=TimeoutSettings)

    # -- agents from an agent-management service ----------------------------------------------
    agent_service_url: str | None = None
    agent_cache_ttl_s: float = 30.0
    agent_service_timeout_s: float = 3.0

    # -- tools ---------------------------------------------------------------------------------
    tool_timeout_s: float = 10.0
    tool_retries: int = Field(default=2, ge=0)  # extra attempts after a retriable tool failure
    tool_retry_backoff_s: float = 0.2
    tools_file: Path | None = None  # YAML: http tools (name, url, description, parameters)
    tool_secret: SecretStr | None = None  # HMAC-SHA256 key signing HTTP tool requests
    tool_registry_url: str | None = None
    allow_private_tool_urls: bool = False  # loopback/private/link-local targets are refused otherwise
    # MCP servers (agents' ``mcp_servers``, services/executor/mcptools.py). Secrets their headers or
    # environment name, as JSON: {"github": "Bearer ...", "tenant-a/github": "Bearer ..."}.
    mcp_secrets: dict[str, SecretStr] = Field(default_factory=dict)
    mcp_connect_timeout_s: float = Field(default=5.0, gt=0)  # opening a session, and one tools/list
    mcp_listing_ttl_s: float = Field(default=300.0, ge=0)  # a server's tool listing is asked again after this
    mcp_max_sessions: int = Field(default=64, ge=1)  # open sessions (one per server and credentials); LRU beyond

    # Built-in tools delegating to the orchestrator's Query/Embedding services (knowledge_search, embed):
    # the job's deadline; the tool waits this long plus a grace for the orchestrator's verdict.
    job_timeout_s: float = 60.0

    # -- cancel --------------------------------------------------------------------------------
    cancel_grace_s: float = 5.0  # how long a cancelled execution may take to wind down
    # How long a lane record that continues a parked execution (approvals) waits for the status view to
    # know the attempt that waited, before it runs with what the view has.
    resume_wait_s: float = Field(default=10.0, gt=0, le=300)

    # -- observability -------------------------------------------------------------------------
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0  # GET /metrics (Prometheus), /health/live and /health/ready on this port; 0 = off

    @property
    def consumer_group(self) -> str:
        return self.group_id or f"{self.kafka.topic_prefix}executor"
