"""Who an ingress record is from: Standard Webhooks signatures (https://www.standardwebhooks.com).

A record on the ingress topic carries, in headers, ``webhook-id`` (unique per request: the idempotency
key), ``webhook-timestamp`` (Unix seconds) and ``webhook-signature`` (``v1,<base64 HMAC-SHA256>``,
several space-separated during a key rotation) over ``{id}.{timestamp}.{value}``; its key is the
tenant id. The tenant's secret (``whsec_<base64>``, as Standard Webhooks tools print them, or any
other string used as raw bytes) decides: a record keyed to tenant B verifies only with B's secret, so
no producer can speak for a tenant whose secret it does not hold. Pure functions, no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pydantic import SecretStr

from services.common.errors import AgentstreamError

_PREFIX = "whsec_"


class SignatureRejected(AgentstreamError):
    """The record does not prove its tenant; it is parked in the DLQ with this reason."""


@dataclass(frozen=True)
class Signed:
    tenant_id: str
    message_id: str
    timestamp: int


def secret_bytes(secret: str) -> bytes:
    if secret.startswith(_PREFIX):
        try:
            return base64.b64decode(secret[len(_PREFIX) :] + "==")
        except binascii.Error as exc:
            raise ValueError("a whsec_ secret must be base64 after its prefix") from exc
    return secret.encode()


def sign(secret: str, *, message_id: str, timestamp: int, value: bytes) -> str:
    """The ``webhook-signature`` header a producer sends (docs/kafka.md shows the same with openssl)."""
    digest = hmac.new(secret_bytes(secret), f"{message_id}.{timestamp}.".encode() + value, hashlib.sha256).digest()
    return f"v1,{base64.b64encode(digest).decode()}"


def verify(
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes]] | None,
    secrets: Mapping[str, SecretStr],
    *,
    tolerance_s: float = 300.0,
    now: float | None = None,
) -> Signed:
    """The tenant that signed this record, or ``SignatureRejected`` saying why not."""
    found = {name.lower(): raw for name, raw in headers or ()}
    tenant_id = (key or b"").decode(errors="replace")
    if not tenant_id:
        raise SignatureRejected("ingress record without a key: the key must be the tenant id")
    message_id = found.get("webhook-id", b"").decode(errors="replace")
    stamp = found.get("webhook-timestamp", b"").decode(errors="replace")
    signatures = found.get("webhook-signature", b"").decode(errors="replace")
    if not (message_id and stamp and signatures):
        raise SignatureRejected("unsigned ingress record: webhook-id, webhook-timestamp and webhook-signature headers are required")
    if len(message_id) > 255 or not message_id.isprintable():
        raise SignatureRejected("webhook-id must be 1 to 255 printable characters")
    secret = secrets.get(tenant_id)
    if secret is None:
        raise SignatureRejected(f"tenant {tenant_id!r} has no ingress signing key")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise SignatureRejected("webhook-timestamp is not Unix seconds") from None
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance_s:
        # Bounds replays of a captured record: past the window, the same bytes are refused.
        raise SignatureRejected(f"webhook-timestamp is {now - timestamp:.0f}s from now (tolerance {tolerance_s:.0f}s)")
    expected = sign(secret.get_secret_value(), message_id=message_id, timestamp=timestamp, value=value or b"").encode()
    if not any(hmac.compare_digest(expected, given.encode()) for given in signatures.split(" ") if given):
        raise SignatureRejected(f"webhook-signature does not match tenant {tenant_id!r}'s signing key")
    return Signed(tenant_id=tenant_id, message_id=message_id, timestamp=timestamp)
