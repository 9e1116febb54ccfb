"""What a lane record must be before an executor runs it: the executor checks what it runs.

The orchestrator only puts checked requests on the lanes, but the lanes are Kafka topics, and the
executor does not take a record's word for whom it runs: the key is the tenant (the orchestrator
keys lane records by tenant_id), the tenant is one the orchestrator announced (tenants topic) and
not disabled, the execution id is not another tenant's, and ``reply_to`` is the shared events topic
or one of the tenant's allowed reply topics. Each refusal is parked in the DLQ with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.events import ExecutionRequested
from schemas.status import ExecutionStatus
from schemas.tenants import TenantRecord


@dataclass(frozen=True)
class Refusal:
    reason: str
    # The record speaks for its tenant (its key is the tenant) but cannot run: if that tenant's execution
    # is queued, it ends as failed (status + execution.failed) so its client sees why. Never for a record
    # without a proper key, or naming another tenant's execution: those may not speak for anyone.
    fail_execution: bool = False


def check_key(key: bytes | None) -> Refusal | None:
    if not key:
        return Refusal("lane record without a key: the key must be the tenant_id")
    try:
        key.decode()
    except UnicodeDecodeError:
        return Refusal("lane record whose key is not UTF-8")
    return None


def check_request(
    key: bytes,
    request: ExecutionRequested,
    *,
    tenant: TenantRecord | None,
    current: ExecutionStatus | None,
    events_topic: str,
) -> Refusal | None:
    """Why ``request`` (a lane record under ``key``) must not run, or None."""
    if not request.tenant_id.strip() or not request.execution_id.strip():
        return Refusal("execution.requested with an empty tenant_id or execution_id")
    if key.decode() != request.tenant_id:
        return Refusal(f"lane record keyed {key.decode()!r} names tenant {request.tenant_id!r}: the key must be the tenant_id")
    # From here on the record speaks for its tenant (the key says so): a queued execution of that tenant
    # fails visibly, e.g. when the orchestrator accepted work of a tenant whose record executors lack.
    if tenant is None:
        return Refusal(f"unknown tenant {request.tenant_id!r}", fail_execution=True)
    if tenant.disabled:
        return Refusal(f"tenant {request.tenant_id!r} is disabled", fail_execution=True)
    if current is not None and current.tenant_id != request.tenant_id:
        return Refusal(f"execution {request.execution_id!r} belongs to another tenant")
    if not tenant.allows_reply_to(request.reply_to, events_topic=events_topic):
        reason = f"reply_to topic {request.reply_to!r} is not in tenant {request.tenant_id!r}'s allowlist"
        return Refusal(reason, fail_execution=True)
    return None
