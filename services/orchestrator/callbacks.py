"""Callbacks: user-given URLs told when an execution or batch ends, signed per Standard Webhooks.

Headers ``webhook-id`` (the delivery id, stable across retries), ``webhook-timestamp`` (unix
seconds) and ``webhook-signature`` (``v1,`` + base64 HMAC-SHA256 over ``id.timestamp.body`` with the
tenant's ``whsec_`` secret). Deliveries live in the state store, so retries (exponential backoff)
survive restarts; any replica may send a due one, a lease keeps two from sending the same attempt.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import time
from urllib.parse import urlsplit

import httpx
import orjson

from services.common.errors import InvalidInput
from services.common.urlguard import RefusedAddress, Resolver, SystemResolver, UnresolvedHost, guarded_client, public_addresses
from services.orchestrator.nextdue import NextDue
from services.orchestrator.settings import OrchestratorSettings
from services.orchestrator.store import Store, records, tenants
from services.orchestrator.store.records import Delivery

log = logging.getLogger(__name__)


class CallbackURLError(InvalidInput, ValueError):
    """A refused ``callback_url``; still a ``ValueError`` for the pydantic validators that raise it."""


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def check_url_syntax(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CallbackURLError("callback_url must be an absolute http(s) URL")
    if parts.username or parts.password:
        raise CallbackURLError("callback_url must not carry credentials")
    return parts.hostname


async def check_url(url: str, *, allow_private: bool, resolver: Resolver | None = None) -> None:
    """Refuse URLs whose host is (or resolves to) loopback/private/link-local, unless allowed: an early,
    clear answer. What holds at delivery is the guarded client, which checks the address it connects to."""
    host = check_url_syntax(url)
    if allow_private:
        return
    try:
        await public_addresses(host, urlsplit(url).port or 443, resolver or SystemResolver(), allow_private=False)
    except UnresolvedHost as exc:
        raise CallbackURLError(f"callback_url host {host!r} does not resolve") from exc
    except RefusedAddress as exc:
        raise CallbackURLError(f"callback_url host {host!r} is a loopback, private or link-local address; refused") from exc


class Dispatcher:
    """Sends due deliveries; one attempt per lease; backoff base * 2**attempt, up to max attempts."""

    def __init__(self, settings: OrchestratorSettings, store: Store, *, resolver: Resolver | None = None) -> None:
        self._settings = settings
        self._store = store
        self._resolver = resolver or SystemResolver()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        # The store is polled when a delivery falls due (its next attempt, a lease running out), when
        # this replica enqueues one (wake), and every ``store_refresh_s`` for other replicas' (nextdue.py).
        self.next_due = NextDue(settings.store_refresh_s)
        self._http: httpx.AsyncClient | None = None

    async def start(self) -> None:
        self._http = guarded_client(
            timeout=self._settings.callback_timeout_s, allow_private=self._settings.callbacks_allow_private, resolver=self._resolver
        )
        self._task = asyncio.create_task(self._run(), name="callbacks")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def wake(self) -> None:
        self.next_due.hint(0.0)
        self._wake.set()

    async def _run(self) -> None:
        while True:
            if self.next_due.due(time.time()):
                try:
                    await self.run_due()
                except Exception:  # a store hiccup must not end the loop: try again after the poll interval
                    log.exception("callbacks: dispatch round failed")
                    self.next_due.hint(time.time() + self._settings.callback_poll_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(self.next_due.wait_s(time.time()), 0.001))
            self._wake.clear()

    async def run_due(self) -> int:
        now = time.time()
        self.next_due.polling()
        async with self._store.begin() as conn:
            due = await records.due_deliveries(conn, now=now)
        leased = []
        for delivery in due:
            async with self._store.begin() as conn:
                if await records.lease_delivery(conn, delivery, until=now + self._settings.callback_timeout_s * 3):
                    leased.append(delivery)
        await asyncio.gather(*(self._attempt(d) for d in leased))
        async with self._store.begin() as conn:  # after the attempts: their retries and leases are in it
            self.next_due.polled(now, await records.next_delivery_at(conn))
        return len(leased)

    async def _attempt(self, delivery: Delivery) -> None:
        assert self._http is not None
        attempt = delivery.attempts + 1
        status: int | None = None
        error: str | None = None
        try:
            await check_url(delivery.url, allow_private=self._settings.callbacks_allow_private, resolver=self._resolver)
            async with self._store.begin() as conn:
                tenant = await tenants.get_tenant(conn, delivery.tenant_id)
            if tenant is None:
                raise CallbackURLError("tenant no longer exists")
            body = orjson.dumps(delivery.payload)
            timestamp = int(time.time())
            headers = {
                "content-type": "application/json",
                "webhook-id": delivery.id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": sign(tenant.webhook_secret, delivery.id, timestamp, body),
                "user-agent": "agentstream-callbacks",
            }
            # Bounded as a whole (a server dribbling bytes never trips httpx's per-read timeout), and the
            # answer's body is never read: only the status counts, so a huge answer costs nothing.
            async with asyncio.timeout(self._settings.callback_timeout_s):
                async with self._http.stream("POST", delivery.url, content=body, headers=headers) as response:
                    status = response.status_code
            if 200 <= status < 300:
                async with self._store.begin() as conn:
                    await records.settle_delivery(conn, delivery.id, state="delivered", status=status, error=None)
                return
            error = f"HTTP {status}"
        except CallbackURLError as exc:
            error = str(exc)
            attempt = self._settings.callback_max_attempts  # not going to get better by retrying
        except RefusedAddress as exc:  # the name resolved inside between the check and the connect (DNS rebinding)
            error = f"callback_url host {exc}"
            attempt = self._settings.callback_max_attempts
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        except TimeoutError:
            error = f"no complete answer within {self._settings.callback_timeout_s:g}s"
        final = attempt >= self._settings.callback_max_attempts
        next_at = time.time() + self._settings.callback_backoff_s * 2 ** (attempt - 1)
        log.info("callback %s attempt %d to %s failed: %s%s", delivery.id, attempt, delivery.url, error, " (giving up)" if final else "")
        async with self._store.begin() as conn:
            await records.settle_delivery(
                conn, delivery.id, state="failed" if final else "pending", status=status, error=error, next_attempt_at=next_at
            )
