"""An answer or a decision that comes before the execution's waiting snapshot (the client read the
question from the events stream, which the executor writes first) waits for that snapshot."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from schemas.api import ApprovalRequest, InputReply
from schemas.status import ExecutionStatus, State
from services.common.errors import Conflict
from services.common.settings import KafkaSettings
from services.common.statusview import StatusView
from services.orchestrator import approvals


def _status(state: State, **extra: Any) -> ExecutionStatus:
    now = datetime.now(UTC)
    return ExecutionStatus(
        execution_id="ex-1", tenant_id="t", agent_id="a", state=state, attempt=1, created_at=now, updated_at=now, extra=extra
    )


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    sent: list[Any] = []

    async def publish(lc: Any, status: ExecutionStatus, event: Any, asked: Any, decisions: Any) -> None:
        sent.append(event)

    monkeypatch.setattr(approvals, "_publish", publish)
    return sent


async def test_an_answer_ahead_of_the_waiting_snapshot_waits_for_it(published: list[Any]) -> None:
    view = StatusView(KafkaSettings())
    view.apply(_status("running"))
    lc: Any = SimpleNamespace(status=view)
    asked = {"approvals": [{"call_id": "ask_1", "kind": "input", "step": 1}]}
    later = _status("waiting", **asked).model_copy(update={"updated_at": datetime.now(UTC)})
    asyncio.get_running_loop().call_later(0.2, view.apply, later)
    answer = await approvals.reply(lc, "ex-1", "ask_1", "t", InputReply(text="blue"))
    assert answer.text == "blue" and len(published) == 1


async def test_a_decision_ahead_of_the_waiting_snapshot_waits_for_it(published: list[Any]) -> None:
    view = StatusView(KafkaSettings())
    view.apply(_status("running"))
    lc: Any = SimpleNamespace(status=view)
    later = _status("waiting", approvals=[{"call_id": "call_1", "kind": "approval", "step": 1}]).model_copy(
        update={"updated_at": datetime.now(UTC)}
    )
    asyncio.get_running_loop().call_later(0.2, view.apply, later)
    answer = await approvals.decide(lc, "ex-1", "call_1", "t", ApprovalRequest(decision="approve"))
    assert answer.decision == "approve" and len(published) == 1


async def test_an_execution_that_stays_running_is_a_409_after_the_wait(published: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(approvals, "SETTLE_S", 0.2)
    view = StatusView(KafkaSettings())
    view.apply(_status("running"))
    lc: Any = SimpleNamespace(status=view)
    started = time.monotonic()
    with pytest.raises(Conflict, match="not waiting for an answer"):
        await approvals.reply(lc, "ex-1", "ask_1", "t", InputReply(text="blue"))
    assert 0.15 < time.monotonic() - started < 2 and published == []
