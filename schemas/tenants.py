"""What executors know of a tenant: the record the orchestrator keeps on the compacted ``tenants`` topic.

The orchestrator owns tenants (its store, its admin API, its settings); it writes one record per
tenant (key tenant_id) when a tenant is created or changed and all of them again at start, and a
tombstone when one is removed. Executors materialize the topic and refuse work of a tenant they do
not know, that is disabled, or that names a ``reply_to`` outside ``reply_topics``.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field


def _now() -> datetime:
    return datetime.now(UTC)


class TenantRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    tenant_id: str = Field(min_length=1, max_length=64)
    disabled: bool = False
    # Topics (full names) its requests may name in ``reply_to``, besides the shared events topic.
    reply_topics: tuple[str, ...] = ()
    updated_at: datetime = Field(default_factory=_now)

    def allows_reply_to(self, topic: str | None, *, events_topic: str) -> bool:
        return topic is None or topic == events_topic or topic in self.reply_topics
