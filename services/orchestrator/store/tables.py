"""The state store's tables (SQLAlchemy Core). Times are epoch seconds (float): same on every backend."""

from __future__ import annotations

from sqlalchemy import JSON, Boolean, Column, Float, ForeignKey, Index, Integer, MetaData, String, Table, Text, UniqueConstraint

metadata = MetaData()

tenants = Table(
    "tenants",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("disabled", Boolean, nullable=False, default=False),
    # Per-tenant overrides of the settings' limits: {"requests_per_minute": .., "tokens_per_minute": .., "concurrent": ..}
    Column("limits", JSON, nullable=False, default=dict),
    # Signing secret of this tenant's callbacks (Standard Webhooks `whsec_...`): needed in clear to sign.
    Column("webhook_secret", String(100), nullable=False),
    Column("created_at", Float, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("tenant_id", String(64), ForeignKey("tenants.id"), nullable=False, index=True),
    Column("name", String(200), nullable=False, default=""),
    Column("prefix", String(16), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float),
)

sessions = Table(
    "sessions",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("tenant_id", String(64), nullable=False, index=True),
    Column("agent_id", String(128), nullable=False),
    Column("policy", String(16), nullable=False),
    Column("state", String(16), nullable=False),  # idle | running
    Column("active_execution_id", String(40)),
    Column("metadata", JSON, nullable=False, default=dict),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Index("ix_sessions_tenant_created", "tenant_id", "created_at"),  # GET /v1/sessions, newest first (revision 0005)
)

messages = Table(
    "messages",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("session_id", String(40), ForeignKey("sessions.id"), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("role", String(16), nullable=False),
    Column("content", Text, nullable=False),
    Column("name", String(128)),
    Column("tool_calls", JSON),
    Column("execution_id", String(40)),
    Column("status", String(16), nullable=False),  # done | pending (enqueued behind a running execution)
    Column("created_at", Float, nullable=False),
    UniqueConstraint("session_id", "seq"),
)

tasks = Table(
    "tasks",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),  # execution | job
    Column("origin", String(16), nullable=False, default="api"),  # api | chat | batch | job
    Column("tenant_id", String(64), nullable=False, index=True),
    Column("session_id", String(128)),  # an API `Id` (revision 0004)
    Column("agent_id", String(128), nullable=False),
    Column("service", String(128)),
    Column("batch_id", String(40), index=True),
    Column("custom_id", String(128)),
    Column("priority", String(16), nullable=False, default="standard"),
    Column("state", String(16), nullable=False),  # queued | running | completed | failed | cancelled | timed_out
    Column("deadline", Float, nullable=False),
    Column("callback_url", Text),
    Column("output", Text),
    Column("result", JSON),
    Column("error", Text),
    Column("usage", JSON),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    # The newest attempt whose execution.started the events follower applied (revision 0003): an older
    # attempt's end (a paused executor that woke up) is not projected.
    Column("attempt", Integer, nullable=False, default=0, server_default="0"),
    # The first 200 characters of the request's input (revision 0005): what a history list shows.
    Column("input_preview", String(200)),
    Index("ix_tasks_open_deadline", "state", "deadline"),
    Index("ix_tasks_tenant_created", "tenant_id", "created_at"),  # GET /v1/executions, newest first
)

tool_calls = Table(
    "tool_calls",
    metadata,
    Column("execution_id", String(64), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("call_id", String(128), primary_key=True),
    Column("tool", String(128), nullable=False),
    Column("arguments", JSON),
    Column("result", JSON),
    Column("error", Text),
    Column("seq", Integer, nullable=False, default=0),
)

idempotency = Table(
    "idempotency",
    metadata,
    Column("tenant_id", String(64), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("status_code", Integer),
    Column("response", JSON),
    Column("created_at", Float, nullable=False),
)

batches = Table(
    "batches",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("tenant_id", String(64), nullable=False, index=True),
    Column("priority", String(16), nullable=False),
    Column("total", Integer, nullable=False),
    Column("callback_url", Text),
    Column("completed_at", Float),
    Column("created_at", Float, nullable=False),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", String(40), primary_key=True),  # also the Standard Webhooks `webhook-id`
    Column("tenant_id", String(64), nullable=False),
    Column("target_kind", String(16), nullable=False),  # execution | batch
    Column("target_id", String(64), nullable=False, index=True),
    Column("url", Text, nullable=False),
    Column("payload", JSON, nullable=False),
    Column("state", String(16), nullable=False),  # pending | delivered | failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", Float, nullable=False),
    Column("last_status", Integer),
    Column("last_error", Text),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Index("ix_deliveries_due", "state", "next_attempt_at"),
)

usage = Table(
    "usage",
    metadata,
    Column("execution_id", String(64), primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    Column("agent_id", String(128), nullable=False),
    Column("session_id", String(128)),  # an API `Id` (revision 0004)
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("total_tokens", Integer, nullable=False),
    Column("ts", Float, nullable=False),
    Index("ix_usage_tenant_ts", "tenant_id", "ts"),
)

# Orchestration plans: the ordered service calls made on behalf of an execution (agent config,
# history, delegated jobs, the execution itself). A delegated job's row holds the executor's
# request id (unique: each request is delegated once) and how to reach the waiting tool call.
service_calls = Table(
    "service_calls",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("execution_id", String(64), nullable=False, index=True),
    Column("tenant_id", String(64), nullable=False),
    Column("kind", String(32), nullable=False),  # agent_config | history_load | execution | job | late_completion
    Column("target", String(128), nullable=False),  # agent, session, or service name
    Column("job_id", String(64), index=True),
    Column("request_id", String(255), unique=True),
    Column("outcome", String(16), nullable=False),  # pending | running | ok | completed | failed | timed_out | cancelled | ignored
    Column("detail", Text),
    Column("meta", JSON),
    Column("started_at", Float, nullable=False),
    Column("ended_at", Float),
)
