from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.settings import KafkaSettings

SessionPolicy = Literal["reject", "enqueue", "interrupt"]
CacheTtl = Annotated[float, Field(ge=0, le=31_536_000)]  # seconds, at most a year; 0: not cached


class ServiceEndpoint(BaseModel):
    """An external service the orchestrator delegates jobs to (services/orchestrator/coordinator.py)."""

    url: str
    token: SecretStr | None = None  # sent as `Authorization: Bearer`; never logged
    timeout_s: float = 5.0  # per HTTP attempt
    # The model behind the service, part of its results' cache key (servicecache.py): change it when
    # the service changes models, and results of the old one are no longer served.
    model: str = Field(default="", max_length=128)


class OrchestratorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AGENTSTREAM_", extra="ignore")

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    host: str = "127.0.0.1"
    port: int = 8000
    # Echoed by /health/live, so whoever started this server can tell it from another on the same port.
    instance_id: str | None = Field(default=None, max_length=128)
    # Bootstrap/dev API keys: key -> tenant id. JSON in AGENTSTREAM_API_KEYS, e.g. {"dev-key": "acme"}.
    # Keys created with `agentstream keys create` live (hashed) in the state store; both work.
    api_keys: dict[str, str] = Field(default_factory=lambda: {"dev-key": "demo"})
    # Bearer token of the admin API (/v1/admin/...); unset: the admin API answers 404.
    admin_token: SecretStr | None = None
    # Internal services' tokens for /ws/task_updates: service name -> token.
    service_tokens: dict[str, SecretStr] = Field(default_factory=dict)
    max_body_bytes: int = 1_000_000
    agents_file: Path | None = None
    # Workflow definitions (issue 20): a `workflows:` mapping; None: the one in the agents file, if any.
    workflows_file: Path | None = None
    # Bounded per-client send buffer of the bridge (WebSocket and SSE); past it, the client is cut off.
    stream_buffer_kb: int = 8192
    ws_send_timeout_s: float = 10.0
    # Frames to a WebSocket that keeps up go straight to uvicorn's transport (wswire.py); false: every
    # frame through the per-client writer and Starlette's send_text (a way back should uvicorn change).
    ws_direct_writes: bool = True
    # A heartbeat goes to an idle WebSocket (message) or SSE stream (comment) this often.
    heartbeat_s: float = 15.0
    # Tenant -> reply topics its requests may name in `reply_to` (full topic names); the bridge serves them too.
    reply_topics: dict[str, list[str]] = Field(default_factory=dict)
    # The Kafka door (ingress.py): tenant -> signing secret of its ingress records (Standard Webhooks,
    # "whsec_<base64>"). The orchestrator reads the ingress topic only when a tenant has one.
    ingress_signing_keys: dict[str, SecretStr] = Field(default_factory=dict)
    ingress_tolerance_s: float = 300.0
    # Records of recent executions the bridge keeps in memory to serve late subscribers without Kafka reads.
    bridge_recent_ttl_s: float = 120.0
    bridge_recent_max_mb: int = 256
    # The bridge service (bridgeapp.py) learns of an execution from the status topic, a moment after the
    # API's 202: an id it does not know yet is waited for this long before it is "execution not found".
    bridge_status_wait_s: float = 2.0

    # State store: SQLite (embedded default) or PostgreSQL, e.g. postgresql+asyncpg://user:pw@host:5432/db
    database_url: SecretStr = SecretStr("sqlite+aiosqlite:///.agentstream/state.db")
    # How long a key looked up in the store is trusted before it is looked up again (revocation delay
    # on other replicas; the replica that revokes forgets at once).
    auth_cache_s: float = 5.0

    # Rate limits per tenant (0 = unlimited); a tenant's own limits (tenants create --rpm ...) win.
    requests_per_minute: int = 600
    tokens_per_minute: int = 0
    concurrent_executions: int = 100
    # Shared limiter for several replicas, e.g. redis://127.0.0.1:6379/0; unset: in-process limiter.
    redis_url: SecretStr | None = None
    redis_key_prefix: str = "agentstream:"

    # Task registry: work still open after its deadline is marked timed_out (and cancelled).
    execution_timeout_s: float = 600.0
    job_timeout_s: float = 300.0
    sweep_interval_s: float = 1.0
    # The sweeper and the callback dispatcher query the store only when something there falls due
    # (as their last query read it, or a hint from this replica says); at least this often besides,
    # for what other replicas write into a shared store (nextdue.py).
    store_refresh_s: float = 30.0

    session_policy: SessionPolicy = "reject"
    # A chat message whose session's last execution has ended on the events topic, but whose end is
    # not recorded yet (the projection is behind the bridge), waits this long for it before a 409.
    session_settle_s: float = 10.0
    max_batch_items: int = 1000
    # Idempotency-Key reservations of requests that never finished (crash) are taken over after this.
    idempotency_stale_s: float = 60.0

    # Callbacks (Standard Webhooks): loopback/private/link-local targets need this switched on.
    callbacks_allow_private: bool = False
    callback_timeout_s: float = 10.0
    callback_max_attempts: int = 6
    callback_backoff_s: float = 2.0
    callback_poll_s: float = 0.5  # after a failed round of the dispatcher, the next one

    # Service coordination: the Query (LLM + RAG) and Embedding services, JSON in
    # AGENTSTREAM_QUERY_SERVICE / AGENTSTREAM_EMBEDDING_SERVICE, e.g. {"url": "http://q:8101", "token": "..."}.
    # They report completions with a token of `service_tokens` under the names "query" / "embedding".
    query_service: ServiceEndpoint | None = None
    embedding_service: ServiceEndpoint | None = None
    service_attempts: int = 3  # HTTP attempts per delegation (retriable errors only), with exponential backoff
    service_backoff_s: float = 0.2
    breaker_failures: int = 5  # consecutive failed delegations that open a service's circuit
    breaker_reset_s: float = 15.0  # an open circuit lets one trial call through after this
    delegated_job_timeout_s: float = 120.0  # upper bound of a delegated job's deadline
    # One cache for Query and Embedding results (servicecache.py): "auto" keeps it in Redis when
    # result_cache_redis_url (or redis_url) is set, shared by replicas, else in this process; "memory"
    # always in-process; "off" none. TTL per service in seconds; 0 or absent: not cached.
    result_cache: Literal["auto", "memory", "off"] = "auto"
    result_cache_redis_url: SecretStr | None = None
    result_cache_redis_timeout_s: float = Field(default=0.5, gt=0, le=10)
    result_cache_ttl_s: dict[str, CacheTtl] = Field(default_factory=lambda: {"query": 300.0, "embedding": 86_400.0})
    result_cache_max_entries: int = Field(default=10_000, ge=1)
    result_cache_max_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    result_cache_max_value_bytes: int = Field(default=1_000_000, ge=1)

    # Schedules (services/orchestrator/schedules/): every replica bids for due slots this often; an
    # interval (or a cron's gap) below the floor is refused; a slot older than the grace was missed
    # while no replica ran (its schedule's catch_up decides).
    schedule_tick_s: float = Field(default=1.0, gt=0)
    schedule_min_interval_s: float = Field(default=60.0, ge=1)
    schedule_misfire_grace_s: float = Field(default=60.0, ge=0)
    schedule_catch_up_wait_s: float = Field(default=30.0, gt=0)  # at start, bids wait (at most this) until the topic is read
    # A won slot whose execution has not appeared this long after its claim is taken over (its replica died).
    schedule_takeover_s: float = Field(default=10.0, gt=0)
    max_schedules_per_tenant: int = Field(default=100, ge=0)

    def tenant_for(self, key: str | None) -> str | None:
        """The tenant of a settings-configured (bootstrap) key."""
        if not key:
            return None
        return self.api_keys.get(key)
