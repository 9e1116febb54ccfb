"""The Kafka door: requests produced to the ingress topic by services other than the orchestrator.

Each record is treated as ``POST /v1/executions`` is: its signature establishes the tenant
(``signatures.py``: never the record's own fields), then the same validation, limits, usage and
idempotency apply (``webhook-id`` is the Idempotency-Key, and the execution id is derived from it, so
a record read twice after a crash is one execution), the task is recorded and the request forwarded to
its lane. A refused record goes to the DLQ with the reason; when it was signed and names a
``reply_to`` its tenant may use, an ``execution.rejected`` goes there too. Kafka or store trouble is
not a refusal: the reader handles the record again, with backoff, up to its cap (``services/common/reader.py``).
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from typing import Any

import orjson
from aiokafka import ConsumerRecord
from aiokafka.errors import KafkaError
from sqlalchemy.exc import SQLAlchemyError

from schemas.api import ExecutionRequest
from schemas.events import ExecutionRejected
from services.common.errors import Conflict, DomainError, InvalidInput, KafkaUnavailable
from services.common.kafka import encode, envelope_headers, header
from services.common.observability import metrics
from services.orchestrator.auth import Authenticator
from services.orchestrator.completions import _Follower
from services.orchestrator.executions import checked_callback, checked_prompt, continued_traceparent, known_agent, submission_of
from services.orchestrator.http import validate
from services.orchestrator.lifecycle import Lifecycle
from services.orchestrator.problems import status_of
from services.orchestrator.signatures import SignatureRejected, Signed, verify
from services.orchestrator.store import StoreError, records, tasks

log = logging.getLogger(__name__)
_TRANSIENT = (KafkaError, StoreError, SQLAlchemyError, OSError, TimeoutError)
_IDS = uuid.UUID("5b0d3c52-8f8e-4d43-9d0e-6a2f1c1b7a10")  # namespace of execution ids derived from webhook-ids


def execution_id_for(tenant_id: str, message_id: str) -> str:
    return uuid.uuid5(_IDS, f"{tenant_id}\n{message_id}").hex


class IngressFollower(_Follower):
    name = "ingress"

    def __init__(self, lifecycle: Lifecycle, auth: Authenticator) -> None:
        kafka = lifecycle.settings.kafka
        super().__init__(lifecycle, kafka.topics.ingress, f"{kafka.topic_prefix}orchestrator-ingress")
        self._auth = auth

    async def handle(self, record: ConsumerRecord[bytes, bytes]) -> None:
        settings = self._lifecycle.settings
        try:
            signed = verify(
                record.key, record.value, record.headers, settings.ingress_signing_keys, tolerance_s=settings.ingress_tolerance_s
            )
        except SignatureRejected as exc:
            metrics.INGRESS_RECORDS.labels(outcome="refused").inc()
            await self.reject(record, f"ingress: {exc}")  # unauthenticated: nothing is written where it asks
            return
        if len(record.value or b"") > settings.max_body_bytes:  # the HTTP body limit, for the same request
            await self._refuse(record, signed, None, f"request body is larger than {settings.max_body_bytes} bytes", retriable=False)
            return
        try:
            raw: Any = orjson.loads(record.value or b"")
        except orjson.JSONDecodeError as exc:
            await self._refuse(record, signed, None, f"the value is not valid JSON: {exc}", retriable=False)
            return
        allowed = settings.reply_topics.get(signed.tenant_id, ())
        reply_to = raw.get("reply_to") if isinstance(raw, dict) and raw.get("reply_to") in allowed else None
        try:
            await self._submit(signed, raw, record)
        except DomainError as exc:
            status = status_of(exc)
            if status >= 500:  # Kafka did not acknowledge: not the request's fault; the reader tries again
                raise KafkaUnavailable(settings.kafka.bootstrap, exc) from exc
            reason = exc.error if not exc.detail else f"{exc.error}: {orjson.dumps(exc.detail).decode()}"
            await self._refuse(record, signed, reply_to, reason, retriable=status in (409, 429))
        except _TRANSIENT:
            raise  # the broker or the store: the reader retries what is transient (services/orchestrator/transient.py)
        except Exception as exc:  # anything else is this record's doing: it must not stall the partition
            log.exception("ingress: %s:%s@%s could not be handled", record.topic, record.partition, record.offset)
            await self._refuse(record, signed, reply_to, f"could not be handled: {type(exc).__name__}: {exc}", retriable=False)

    async def _submit(self, signed: Signed, raw: Any, record: ConsumerRecord[bytes, bytes]) -> None:
        lifecycle = self._lifecycle
        settings = lifecycle.settings
        ctx = await self._auth.tenant_context(signed.tenant_id)
        req = validate(ExecutionRequest, raw, "execution request")
        known_agent(lifecycle.agents, req.agent)
        checked_prompt(lifecycle.agents, req.agent, req.variables, req.input)
        callback = await checked_callback(settings, req.callback_url)
        if req.reply_to is not None and req.reply_to not in settings.reply_topics.get(ctx.id, ()):
            raise InvalidInput(f"reply_to topic {req.reply_to!r} is not in this tenant's allowlist")
        execution_id = execution_id_for(ctx.id, signed.message_id)
        key = f"ingress:{signed.message_id}"
        fingerprint = hashlib.sha256(record.value or b"").hexdigest()
        async with lifecycle.store.begin() as conn:
            held = await records.claim_idempotency_key(conn, ctx.id, key, fingerprint)
            if held is not None:
                if held.request_hash != fingerprint:
                    raise Conflict(f"webhook-id {signed.message_id!r} was already used with a different request")
                if held.status_code is not None or execution_id in lifecycle.status or await tasks.get(conn, execution_id) is not None:
                    metrics.INGRESS_RECORDS.labels(outcome="duplicate").inc()
                    return  # read again after a crash or a rebalance: it was accepted the first time
        traceparent = continued_traceparent(header(record.headers, "traceparent"))
        sub = submission_of(ctx.id, req, callback_url=callback, traceparent=traceparent, execution_id=execution_id, origin="kafka")
        try:
            await lifecycle.accept(ctx, [sub])
        except BaseException:
            async with lifecycle.store.begin() as conn:  # like HTTP: a refused request frees its key
                await records.release_idempotency_key(conn, ctx.id, key)
            raise
        async with lifecycle.store.begin() as conn:
            await records.complete_idempotency_key(conn, ctx.id, key, 202, {"execution_id": execution_id})
        metrics.INGRESS_RECORDS.labels(outcome="accepted").inc()

    async def _refuse(
        self, record: ConsumerRecord[bytes, bytes], signed: Signed, reply_to: str | None, reason: str, *, retriable: bool
    ) -> None:
        metrics.INGRESS_RECORDS.labels(outcome="refused").inc()
        await self.reject(record, f"ingress: {reason}")
        if reply_to is None:
            return
        event = ExecutionRejected(
            tenant_id=signed.tenant_id,
            execution_id=execution_id_for(signed.tenant_id, signed.message_id),
            reason=reason,
            retriable=retriable,
            request_id=signed.message_id,
        )
        try:
            await self._lifecycle.producer.send_and_wait(
                reply_to,
                value=encode(event),
                key=event.execution_id.encode(),
                headers=envelope_headers(event, service="orchestrator"),
            )
        except KafkaError as exc:  # the DLQ has the record and its reason either way
            log.warning("ingress: could not send execution.rejected to %s: %s", reply_to, exc)
