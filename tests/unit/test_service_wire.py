"""The external services' wire lives in schemas/jobs.py: the orchestrator's client and the reference
services both speak it (the client's POST reaches a reference service through an in-memory ASGI
transport, and the service's completion is checked by the orchestrator's result checks)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from pydantic import SecretStr

from examples.services.jobs import JobService
from schemas.jobs import JobSubmission, QueryInput
from services.orchestrator.breaker import CircuitBreaker
from services.orchestrator.coordinator import check_query_result
from services.orchestrator.serviceclient import ServiceClient
from services.orchestrator.settings import ServiceEndpoint


class Reports:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def report(self, message: dict[str, Any]) -> dict[str, Any]:
        self.messages.append(message)
        self.arrived.set()
        return {"type": "accepted"}


async def test_the_client_and_a_reference_service_speak_one_wire() -> None:
    async def work(data: dict[str, Any]) -> tuple[Any, dict[str, int] | None]:
        request = QueryInput.model_validate(data)
        return {"answer": request.query.upper(), "documents": [{"id": "d1", "text": "t"}]}, None

    reports = Reports()
    service = JobService("query", work, token="s3cret", reporter=reports, delay_s=0)
    transport = httpx.ASGITransport(app=service.app())
    client = ServiceClient(
        "query",
        ServiceEndpoint(url="http://query.test", token=SecretStr("s3cret")),
        attempts=1,
        backoff_s=0,
        breaker=CircuitBreaker(failures=3, reset_s=1),
        transport=transport,
    )
    try:
        await client.submit(job_id="job_1", tenant_id="acme", payload={"query": "hello", "top_k": 2}, deadline=time.time() + 60)
        await asyncio.wait_for(reports.arrived.wait(), 10)
    finally:
        await client.aclose()
    sent = JobSubmission.model_validate(service.received[0])
    assert (sent.job_id, sent.tenant_id, sent.service, sent.input) == ("job_1", "acme", "query", {"query": "hello", "top_k": 2})
    [completion] = reports.messages
    assert completion["job_id"] == "job_1" and check_query_result(completion["result"]) is None


async def test_a_reference_service_refuses_a_body_off_the_wire() -> None:
    async def work(data: dict[str, Any]) -> tuple[Any, dict[str, int] | None]:
        raise AssertionError("not called")

    service = JobService("query", work, token="t", reporter=Reports(), delay_s=0)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=service.app()), base_url="http://query.test") as http:
        answer = await http.post("/jobs", json={"job_id": "j", "tenant_id": "acme"}, headers={"Authorization": "Bearer t"})
    assert answer.status_code == 400 and service.received == []
