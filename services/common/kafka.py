"""Producer factory, topic creation, record encoding and headers: the Kafka plumbing both services use."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaConnectionError,
    OutOfOrderSequenceNumber,
    UnknownProducerId,
)
from aiokafka.producer.transaction_manager import NO_PRODUCER_EPOCH, NO_PRODUCER_ID, PidAndEpoch
from pydantic import BaseModel, SecretStr

from schemas.events import Envelope
from schemas.status import ExecutionStatus
from services.common.errors import KafkaSecurityError
from services.common.ids import RECORD_IDS
from services.common.kafkadiagnosis import diagnose
from services.common.oauth import token_provider
from services.common.settings import KafkaSettings
from services.common.topicplan import create_missing, plan, verify_promises

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]
# On a lane record that continues a parked execution (issue 16): the attempt that waited.
RESUME_HEADER = "resume_attempt"


def encode(model: BaseModel) -> bytes:
    return model.model_dump_json().encode()


# -- headers: today's routing headers plus CloudEvents binary mode (docs/kafka.md) ---------------------
# Every record we write goes through ``record_headers``. What does not change within an execution attempt
# (tenant, attempt, trace context, CloudEvents source and subject, content type) is built once by
# ``shared_headers``; per record only the type, id and time are encoded (measured in
# tests/unit/test_cloudevents_headers.py's micro-benchmark, docs/performance.md).
CE_SPECVERSION = ("ce_specversion", b"1.0")
CONTENT_TYPE = ("content-type", b"application/json")


def ce_source(service: str, tenant_id: str = "") -> str:
    """The CloudEvents ``source``: a URI reference naming the writing service and the tenant."""
    return f"/agentstream/{service}/tenants/{tenant_id}" if tenant_id else f"/agentstream/{service}"


def shared_headers(
    *, service: str, subject: str, tenant_id: str = "", attempt: int | None = None, traceparent: str | None = None
) -> Headers:
    """The headers every record of one execution attempt (or one writer's record) shares, built once."""
    headers: Headers = []
    if tenant_id:
        headers.append(("tenant_id", tenant_id.encode()))
    if attempt is not None:
        headers.append(("attempt", str(attempt).encode()))
    if traceparent:
        headers.append(("traceparent", traceparent.encode()))
    headers += [
        CE_SPECVERSION,
        ("ce_source", ce_source(service, tenant_id).encode()),
        ("ce_subject", subject.encode()),
        CONTENT_TYPE,
    ]
    return headers


def record_headers(type_: str, event_id: uuid.UUID | str, time: datetime, shared: Headers) -> Headers:
    """The one way to build a record's headers: the per-record part in front of ``shared``."""
    kind = type_.encode()
    return [("type", kind), ("ce_type", kind), ("ce_id", str(event_id).encode()), ("ce_time", time.isoformat().encode()), *shared]


def envelope_headers(event: Envelope, *, service: str, traceparent: str | None = None) -> Headers:
    """Headers of one event record sent on its own (a request, a cancel, a job message)."""
    shared = shared_headers(
        service=service, subject=event.execution_id, tenant_id=event.tenant_id, attempt=event.attempt, traceparent=traceparent
    )
    return record_headers(str(getattr(event, "type", "")), event.event_id, event.ts, shared)


def snapshot_headers(type_: str, *, service: str, subject: str, time: datetime, tenant_id: str = "") -> Headers:
    """Headers of a record that is no event of the envelope (a status snapshot, a tenant record, a
    task update): a fresh CloudEvents id, its own type, the record's key as subject."""
    return record_headers(type_, RECORD_IDS.next(), time, shared_headers(service=service, subject=subject, tenant_id=tenant_id))


def status_headers(status: ExecutionStatus, service: str) -> Headers:
    return snapshot_headers(
        "execution.status", service=service, subject=status.execution_id, time=status.updated_at, tenant_id=status.tenant_id
    )


def event_headers(
    *, type_: str, tenant_id: str, attempt: int = 1, traceparent: str | None = None, subject: str = "", service: str = "agentstream"
) -> Headers:
    """Headers of an event record whose envelope is not at hand (tests, tools writing raw records)."""
    shared = shared_headers(service=service, subject=subject, tenant_id=tenant_id, attempt=attempt, traceparent=traceparent)
    return record_headers(type_, uuid.uuid4(), datetime.now(UTC), shared)


def header(headers: Sequence[tuple[str, bytes]] | None, name: str) -> str | None:
    for key, value in headers or ():
        if key == name:
            return value.decode(errors="replace")
    return None


async def partitions_of(consumer: AIOKafkaConsumer, topic: str, *, wait_s: float = 10.0) -> list[TopicPartition]:
    """The topic's partitions, refreshing metadata until they are known (a topic may be brand new)."""
    deadline = asyncio.get_running_loop().time() + wait_s
    while True:
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            return [TopicPartition(topic, p) for p in sorted(partitions)]
        if asyncio.get_running_loop().time() > deadline:
            return []
        await consumer._client.force_metadata_update()
        await asyncio.sleep(0.05)


class Producer(AIOKafkaProducer):  # type: ignore[misc]  # aiokafka ships no type hints
    """The idempotent producer, able to start a new idempotent session after a sequence error.

    When a broker restarts while batches are in flight, some of them fail after their sequence
    numbers were taken; from then on the broker answers every batch of that partition with
    OutOfOrderSequenceNumber, and aiokafka (unlike the Java client) never recovers: the service would
    refuse all work until restarted (seen in tests/reliability/test_broker_restart.py). On such an
    error we drop the producer id and the sequence numbers; aiokafka's sender asks the broker for a
    new id before its next request (Sender._maybe_wait_for_pid), and later sends go through. The send
    that failed still fails, so its caller answers 503 or runs the execution again.
    """

    async def send(self, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = await super().send(*args, **kwargs)
        future.add_done_callback(self._after_send)
        return future

    def _after_send(self, future: asyncio.Future[Any]) -> None:
        if future.cancelled() or not isinstance(future.exception(), _SEQUENCE_ERRORS):
            return
        txn = self._txn_manager
        if txn is None or txn.transactional_id is not None or not txn.has_pid():
            return
        log.warning("producer %s: %s; starting a new idempotent session", self.client._client_id, type(future.exception()).__name__)
        txn._pid_and_epoch = PidAndEpoch(NO_PRODUCER_ID, NO_PRODUCER_EPOCH)
        txn._pid_waiter = asyncio.get_running_loop().create_future()
        txn._sequence_numbers.clear()


_SEQUENCE_ERRORS = (OutOfOrderSequenceNumber, UnknownProducerId, InvalidProducerEpoch)


# -- security: the one place that turns KafkaSettings into client arguments --------------------------
def client_options(settings: KafkaSettings) -> dict[str, Any]:
    """``bootstrap_servers`` and every security argument, for any aiokafka client (producer, consumer,
    admin): ``AIOKafkaConsumer(**client_options(settings), group_id=...)``."""
    security = _security(settings)
    options: dict[str, Any] = {"bootstrap_servers": settings.bootstrap, "security_protocol": settings.security_protocol}
    if settings.uses_tls:
        options["ssl_context"] = security["ssl_context"]
    if settings.uses_sasl:
        options["sasl_mechanism"] = settings.sasl_mechanism
        if settings.sasl_mechanism == "OAUTHBEARER":
            options["sasl_oauth_token_provider"] = security["token_provider"]
        else:
            options["sasl_plain_username"] = settings.sasl_username
            options["sasl_plain_password"] = settings.sasl_password.get_secret_value() if settings.sasl_password else None
    return options


def _security(settings: KafkaSettings) -> dict[str, Any]:
    # Keyed by the fields it is built from: ``model_copy(update=...)`` copies private attributes, and a
    # copy with another secret must not reuse the original's token provider.
    fields = settings.model_dump(include=_SECURITY_FIELDS)
    plain = repr(sorted((k, v.get_secret_value() if isinstance(v, SecretStr) else v) for k, v in fields.items()))
    key = hashlib.sha256(plain.encode()).hexdigest()  # no secret kept in the clear beside the settings
    if settings._security is None or settings._security["key"] != key:
        settings._security = {
            "key": key,
            "ssl_context": ssl_context(settings) if settings.uses_tls else None,
            "token_provider": token_provider(settings),
        }
    return settings._security


_SECURITY_FIELDS = {
    "security_protocol",
    "sasl_mechanism",
    "oauth_token_url",
    "oauth_client_id",
    "oauth_client_secret",
    "oauth_scope",
    "oauth_token_provider",
    "ssl_cafile",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_key_password",
    "ssl_check_hostname",
}


def ssl_context(settings: KafkaSettings) -> ssl.SSLContext:
    """Verifying context: the configured CA (else the system's), optional client certificate."""
    try:
        context = ssl.create_default_context(cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None)
    except (OSError, ssl.SSLError) as exc:
        raise KafkaSecurityError(f"AGENTSTREAM_KAFKA_SSL_CAFILE={settings.ssl_cafile}: cannot load it as a PEM CA bundle ({exc})") from exc
    context.check_hostname = settings.ssl_check_hostname
    if settings.ssl_certfile and settings.ssl_keyfile:
        password = settings.ssl_key_password.get_secret_value() if settings.ssl_key_password else None
        try:
            context.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile, password=password)
        except (OSError, ssl.SSLError) as exc:
            raise KafkaSecurityError(
                f"AGENTSTREAM_KAFKA_SSL_CERTFILE / _KEYFILE: cannot load the client certificate and key ({exc}); "
                "check the paths and AGENTSTREAM_KAFKA_SSL_KEY_PASSWORD"
            ) from exc
    return context


class _Startable(Protocol):
    async def start(self) -> None: ...


async def start_client(client: _Startable, settings: KafkaSettings) -> None:
    """Start an aiokafka client; when it cannot bootstrap, say in one line why (unreachable, TLS,
    SASL) instead of aiokafka's generic "Unable to bootstrap"."""
    try:
        await client.start()
    except KafkaConnectionError as exc:
        close = getattr(client, "stop", None) or getattr(client, "close", None)  # admin clients close()
        if close is not None:
            await close()
        raise await diagnose(settings, exc, options=client_options(settings)) from exc


async def preflight(settings: KafkaSettings) -> None:
    """Connect once and leave: a service checks the cluster before it serves, so a refused connection
    is one line on the console rather than a traceback from inside a web server's lifespan."""
    admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=settings.request_timeout_ms)
    await start_client(admin, settings)
    await admin.close()


# What one partition buffers while a produce request is in flight (aiokafka's default is 16 KiB).
# aiokafka keeps one open batch per partition and sends one request per broker at a time, so a
# partition takes at most a batch per round trip. The intake's lane partition (keyed by tenant)
# filled 16 KiB (about 20 requests) within a round trip at ~2,300 POSTs/s; the sends waiting for the
# drain then raced for the next batch, and the losers waited seconds (wrk: p50 17 ms, p90 1.3 s).
# Below the broker's message.max.bytes (1 MiB) and the producer's max_request_size (1 MiB).
MAX_BATCH_BYTES = 512 * 1024


def make_producer(settings: KafkaSettings, *, client_id: str, linger_ms: int | None = None) -> AIOKafkaProducer:
    """acks=all, idempotent; ``linger_ms`` overrides the settings' (the executor's token path: 0)."""
    return Producer(
        **client_options(settings),
        client_id=client_id,
        acks="all",
        enable_idempotence=True,
        max_batch_size=MAX_BATCH_BYTES,
        linger_ms=settings.linger_ms if linger_ms is None else linger_ms,
        request_timeout_ms=settings.request_timeout_ms,
    )


async def ensure_topics(settings: KafkaSettings, *, extra: Sequence[str] = ()) -> None:
    """Create the contract's topics (and ``extra`` event-like topics) if missing, then refuse to run on
    one that breaks a promise (services/common/topicplan.py); idempotent."""
    specs = plan(settings, extra=extra)
    admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=settings.request_timeout_ms)
    await start_client(admin, settings)
    try:
        await create_missing(admin, specs)
        await verify_promises(admin, specs)
    finally:
        await admin.close()
