"""The HTTP client of one external service: ``POST {url}/jobs`` (``schemas.jobs.JobSubmission``),
retried with backoff while the failure is retriable, behind a circuit breaker."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from schemas.jobs import JobSubmission
from services.orchestrator.breaker import CircuitBreaker
from services.orchestrator.serviceerrors import BadServiceAnswer, CircuitOpen, ServiceError, ServiceRejected, ServiceUnavailable
from services.orchestrator.settings import ServiceEndpoint


class ServiceClient:
    """``POST {url}/jobs`` with ``{job_id, tenant_id, service, input, deadline}`` -> 2xx ``{job_id}``.

    The job id is ours, so a retried POST names the same job (the service answers it again) and a
    completion can never arrive for a job we have not registered yet.
    """

    def __init__(
        self,
        name: str,
        endpoint: ServiceEndpoint,
        *,
        attempts: int,
        backoff_s: float,
        breaker: CircuitBreaker,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.name = name
        self.endpoint = endpoint
        self.breaker = breaker
        self._attempts = max(1, attempts)
        self._backoff_s = backoff_s
        headers = {"Authorization": f"Bearer {endpoint.token.get_secret_value()}"} if endpoint.token else {}
        self._http = httpx.AsyncClient(base_url=endpoint.url, timeout=endpoint.timeout_s, headers=headers, transport=transport)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def submit(self, *, job_id: str, tenant_id: str, payload: dict[str, Any], deadline: float) -> None:
        if not self.breaker.allow():
            raise CircuitOpen(
                f"the {self.name} service is unavailable: circuit open after repeated failures "
                f"(next try in {self.breaker.retry_after():.1f}s)"
            )
        submission = JobSubmission(
            job_id=job_id, tenant_id=tenant_id, service=self.name, input=payload, deadline=datetime.fromtimestamp(deadline, UTC).isoformat()
        )
        body = submission.model_dump()
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential_jitter(multiplier=self._backoff_s, max=max(self._backoff_s, 2.0)),
            retry=retry_if_exception(lambda e: isinstance(e, ServiceError) and e.retriable),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    await self._post(body, job_id)
        except ServiceError as exc:
            if exc.counts_against_service:
                self.breaker.failure()
            else:
                self.breaker.success()
            raise
        self.breaker.success()

    async def _post(self, body: dict[str, Any], job_id: str) -> None:
        try:
            response = await self._http.post("/jobs", json=body)
        except httpx.TimeoutException as exc:
            raise ServiceUnavailable(f"the {self.name} service did not answer within {self.endpoint.timeout_s:g}s") from exc
        except httpx.TransportError as exc:
            raise ServiceUnavailable(f"the {self.name} service is unreachable at {self.endpoint.url}: {type(exc).__name__}") from exc
        status = response.status_code
        if status in (408, 425, 429) or status >= 500:
            raise ServiceUnavailable(f"the {self.name} service answered {status}")
        if status >= 400:
            raise ServiceRejected(f"the {self.name} service refused the job: {status} {response.text[:200]}")
        try:
            data = response.json()
        except ValueError as exc:
            raise BadServiceAnswer(f"the {self.name} service answered with something that is not JSON: {response.text[:80]!r}") from exc
        if not isinstance(data, dict) or data.get("job_id") != job_id:
            raise BadServiceAnswer(f"the {self.name} service answered without the job id {job_id!r}: {str(data)[:120]}")
