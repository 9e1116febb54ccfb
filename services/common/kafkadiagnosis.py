"""Why a Kafka client could not start, in one line that names the setting to fix.

aiokafka logs the cause of a failed bootstrap and raises a generic "Unable to bootstrap"; a service
would then print a traceback or, worse, retry forever against a wrong password. ``diagnose`` opens
one connection to each bootstrap address with the same settings and turns what refuses it into a
``KafkaSecurityError`` (TLS, SASL, authorization) or ``KafkaUnavailable`` (nothing answers).
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from aiokafka import errors as kerrors
from aiokafka.conn import create_conn

from services.common.errors import AgentstreamError, KafkaSecurityError, KafkaUnavailable
from services.common.settings import KafkaSettings

_ENV = "AGENTSTREAM_KAFKA_"


async def diagnose(settings: KafkaSettings, cause: BaseException, *, options: dict[str, Any], timeout_s: float = 10.0) -> AgentstreamError:
    """``options``: the client's own ``client_options(settings)``, so the probe connects exactly as it did."""
    options = {k: v for k, v in options.items() if k != "bootstrap_servers"}
    for address in settings.bootstrap.split(","):
        host, _, port = address.strip().rpartition(":")
        try:
            conn = await asyncio.wait_for(create_conn(host, int(port), request_timeout_ms=int(timeout_s * 1000), **options), timeout_s)
        except Exception as exc:  # every failure is classified below; nothing is swallowed unnamed
            found = explain(settings, f"{host}:{port}", exc)
            if isinstance(found, KafkaSecurityError):
                return found
            continue
        conn.close()
        return KafkaUnavailable(settings.bootstrap, cause)  # a broker answered this probe: transient
    return KafkaUnavailable(settings.bootstrap, cause)


def explain(settings: KafkaSettings, address: str, exc: BaseException) -> AgentstreamError:
    """One failed connection attempt, as the error a person can act on."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = exc.verify_message or str(exc)
        if "hostname" in reason.lower() or "ip address mismatch" in reason.lower():
            return KafkaSecurityError(
                f"TLS: the certificate of the broker at {address} is not valid for that name ({reason}): "
                f"connect by a name the certificate holds, or set {_ENV}SSL_CHECK_HOSTNAME=false"
            )
        where = f"{_ENV}SSL_CAFILE={settings.ssl_cafile} does not" if settings.ssl_cafile else "the system trust store does not"
        return KafkaSecurityError(
            f"TLS: the certificate of the broker at {address} is not trusted ({reason}): {where} hold the CA that signed it; "
            f"set {_ENV}SSL_CAFILE to that CA's PEM file"
        )
    if isinstance(exc, ssl.SSLError):
        return KafkaSecurityError(
            f"TLS handshake with the broker at {address} failed ({exc.reason or exc}): is this a TLS listener? "
            f"check {_ENV}SECURITY_PROTOCOL (now {settings.security_protocol}) and the port"
        )
    if isinstance(exc, kerrors.SaslAuthenticationFailed | kerrors.AuthenticationFailedError):
        return KafkaSecurityError(
            f"SASL {settings.sasl_mechanism}: the broker at {address} refused the credentials of "
            f"{_who(settings)} ({_message(exc)}): check {_ENV}SASL_USERNAME and {_ENV}SASL_PASSWORD"
            if settings.sasl_mechanism != "OAUTHBEARER"
            else f"SASL OAUTHBEARER: the broker at {address} refused the token ({_message(exc)}): check the token provider's "
            f"client, secret and scope ({_ENV}OAUTH_*)"
        )
    if isinstance(exc, kerrors.UnsupportedSaslMechanismError):
        return KafkaSecurityError(
            f"SASL: the broker at {address} does not enable {settings.sasl_mechanism} ({_message(exc)}): set {_ENV}SASL_MECHANISM "
            "to one it enables"
        )
    if isinstance(exc, kerrors.IllegalSaslStateError):
        return KafkaSecurityError(
            f"SASL: the broker at {address} did not expect a SASL handshake: its listener is not SASL; check {_ENV}SECURITY_PROTOCOL "
            f"(now {settings.security_protocol}) and the port"
        )
    if isinstance(exc, AgentstreamError):  # e.g. the OAuth token endpoint refused us
        return exc
    if isinstance(exc, kerrors.KafkaConnectionError | asyncio.TimeoutError | TimeoutError) and not isinstance(exc, ConnectionRefusedError):
        if settings.security_protocol == "PLAINTEXT" or "closed" in str(exc).lower():
            return KafkaSecurityError(
                f"the broker at {address} accepted the TCP connection but dropped the Kafka handshake ({exc or type(exc).__name__}): "
                f"its listener probably expects TLS or SASL; check {_ENV}SECURITY_PROTOCOL (now {settings.security_protocol})"
            )
    return KafkaUnavailable(settings.bootstrap, exc)


def authorization_error(settings: KafkaSettings, exc: BaseException, *, action: str) -> KafkaSecurityError | None:
    """A broker's "not authorized" answer, as the ACL an operator has to grant (docs/kafka.md lists them)."""
    kinds: dict[type[BaseException], str] = {
        kerrors.TopicAuthorizationFailedError: "topic",
        kerrors.GroupAuthorizationFailedError: "consumer group",
        kerrors.ClusterAuthorizationFailedError: "cluster",
        kerrors.TransactionalIdAuthorizationFailed: "transactional id",
    }
    for kind, resource in kinds.items():
        if isinstance(exc, kind):
            return KafkaSecurityError(
                f"Kafka ACLs: {_who(settings)} may not {action} (the {resource} is not authorized): grant it the ACLs of "
                "docs/kafka.md (`agentstream kafka topics plan` prints them), or create the topics with an admin principal"
            )
    return None


def _who(settings: KafkaSettings) -> str:
    return f"User:{settings.sasl_username}" if settings.uses_sasl and settings.sasl_username else "this client"


def _message(exc: BaseException) -> str:
    text: Any = exc.args[0] if exc.args else ""
    return str(text) if text and not hasattr(text, "host") else type(exc).__name__
