"""The executor's checks of a lane record (admission.py), in memory."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from schemas.events import ExecutionRequested
from schemas.status import ExecutionStatus
from schemas.tenants import TenantRecord
from services.executor.admission import check_key, check_request

EVENTS = "p.executions.events"
A = TenantRecord(tenant_id="tenant-a", reply_topics=("p.replies.a",))


def request(**fields: object) -> ExecutionRequested:
    values: dict[str, object] = {"tenant_id": "tenant-a", "execution_id": "e1", "input": "hi"} | fields
    return ExecutionRequested.model_validate(values)


def reason(key: bytes, r: ExecutionRequested, *, tenant: TenantRecord | None = A, current: ExecutionStatus | None = None) -> str:
    refusal = check_request(key, r, tenant=tenant, current=current, events_topic=EVENTS)
    return refusal.reason if refusal is not None else ""


def test_a_request_of_a_known_tenant_with_its_own_key_and_reply_topics_runs() -> None:
    assert reason(b"tenant-a", request()) == ""
    assert reason(b"tenant-a", request(reply_to=EVENTS)) == ""
    assert reason(b"tenant-a", request(reply_to="p.replies.a")) == ""
    own = ExecutionStatus(execution_id="e1", tenant_id="tenant-a", state="running", attempt=1)
    assert reason(b"tenant-a", request(), current=own) == ""


def test_keys_tenants_and_ids_are_checked() -> None:
    assert check_key(None) is not None and check_key(b"") is not None and check_key(b"\xff") is not None
    assert check_key(b"tenant-a") is None
    assert "the key must be the tenant_id" in reason(b"tenant-b", request())
    assert "unknown tenant" in reason(b"tenant-a", request(), tenant=None)
    assert "disabled" in reason(b"tenant-a", request(), tenant=A.model_copy(update={"disabled": True}))
    for empty in ({"execution_id": ""}, {"tenant_id": ""}):  # refused by the shared bounds before these checks
        with pytest.raises(ValidationError, match="at least 1 character"):
            request(**empty)


def test_another_tenants_execution_is_refused_without_failing_it() -> None:
    theirs = ExecutionStatus(execution_id="e1", tenant_id="tenant-b", state="queued")
    refusal = check_request(b"tenant-a", request(), tenant=A, current=theirs, events_topic=EVENTS)
    assert refusal is not None and "belongs to another tenant" in refusal.reason and not refusal.fail_execution


def test_a_reply_to_outside_the_allowlist_fails_the_tenants_execution() -> None:
    refusal = check_request(b"tenant-a", request(reply_to="p.replies.b"), tenant=A, current=None, events_topic=EVENTS)
    assert refusal is not None and "'p.replies.b' is not in tenant 'tenant-a'" in refusal.reason and refusal.fail_execution


def test_only_a_record_that_speaks_for_its_tenant_fails_that_tenants_execution() -> None:
    def fails(key: bytes, r: ExecutionRequested, tenant: TenantRecord | None = A) -> bool:
        refusal = check_request(key, r, tenant=tenant, current=None, events_topic=EVENTS)
        assert refusal is not None
        return refusal.fail_execution

    assert not fails(b"tenant-b", request())  # the key is another tenant's
    assert fails(b"tenant-a", request(), tenant=None)  # the orchestrator accepted it; executors do not know the tenant
    assert fails(b"tenant-a", request(), tenant=A.model_copy(update={"disabled": True}))
