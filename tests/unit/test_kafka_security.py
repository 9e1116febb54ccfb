"""KafkaSettings -> aiokafka arguments, and the one-line errors of a refused connection."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from pydantic import SecretStr, ValidationError

from services.common.errors import KafkaSecurityError, KafkaUnavailable
from services.common.kafka import client_options, start_client
from services.common.localtls import make_certificates
from services.common.oauth import ClientCredentialsTokens
from services.common.observability.settings import secrets_of
from services.common.settings import KafkaSettings


def test_plaintext_is_unchanged() -> None:
    assert client_options(KafkaSettings(bootstrap="h:1")) == {"bootstrap_servers": "h:1", "security_protocol": "PLAINTEXT"}


async def test_sasl_ssl_scram(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path)
    settings = KafkaSettings(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="orchestrator",
        sasl_password=SecretStr("s3cret"),
        ssl_cafile=certs.ca,
    )
    options = client_options(settings)
    assert options["security_protocol"] == "SASL_SSL" and options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "orchestrator" and options["sasl_plain_password"] == "s3cret"
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert client_options(settings)["ssl_context"] is context  # built once per settings: one CA load
    other = settings.model_copy(update={"ssl_check_hostname": False})  # copies carry private attributes along
    assert client_options(other)["ssl_context"] is not context and not client_options(other)["ssl_context"].check_hostname
    # Each client accepts the arguments (aiokafka validates protocol/mechanism combinations at construction).
    await AIOKafkaProducer(**options).stop()
    # Secrets are SecretStr: redacted in reprs, and collected for the log redaction filter.
    assert "s3cret" not in repr(settings) and "s3cret" in secrets_of(settings)


def test_ssl_without_sasl_and_no_hostname_check(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path)
    settings = KafkaSettings(security_protocol="SSL", ssl_cafile=certs.ca, ssl_check_hostname=False)
    assert not client_options(settings)["ssl_context"].check_hostname


def test_oauthbearer_gets_a_token_provider() -> None:
    settings = KafkaSettings(
        security_protocol="SASL_SSL",
        sasl_mechanism="OAUTHBEARER",
        oauth_token_url="https://idp.example/token",
        oauth_client_id="agentstream",
        oauth_client_secret=SecretStr("cs"),
    )
    provider = client_options(settings)["sasl_oauth_token_provider"]
    assert isinstance(provider, ClientCredentialsTokens)


def test_incomplete_settings_say_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="SCRAM-SHA-512 needs AGENTSTREAM_KAFKA_SASL_USERNAME"):
        KafkaSettings(security_protocol="SASL_SSL")
    with pytest.raises(ValidationError, match="OAUTHBEARER needs AGENTSTREAM_KAFKA_OAUTH_TOKEN_URL"):
        KafkaSettings(security_protocol="SASL_PLAINTEXT", sasl_mechanism="OAUTHBEARER")
    with pytest.raises(ValidationError, match="SSL_CERTFILE and AGENTSTREAM_KAFKA_SSL_KEYFILE"):
        KafkaSettings(security_protocol="SSL", ssl_certfile=tmp_path / "c.pem")
    with pytest.raises(KafkaSecurityError, match=r"SSL_CAFILE=.*cannot load it"):
        client_options(KafkaSettings(security_protocol="SSL", ssl_cafile=tmp_path / "missing.pem"))


async def test_client_credentials_tokens_are_reused_until_they_age() -> None:
    calls: list[bytes] = []

    def idp(request: httpx.Request) -> httpx.Response:
        calls.append(request.content)
        return httpx.Response(200, json={"access_token": f"tok-{len(calls)}", "expires_in": 3600})

    tokens = ClientCredentialsTokens(
        url="https://idp/token", client_id="c", client_secret="s", scope="kafka", transport=httpx.MockTransport(idp)
    )
    assert [await tokens.token() for _ in range(3)] == ["tok-1"] * 3
    assert len(calls) == 1 and b"grant_type=client_credentials" in calls[0] and b"scope=kafka" in calls[0]
    refused = ClientCredentialsTokens(
        url="https://idp/token", client_id="c", client_secret="bad", transport=httpx.MockTransport(lambda r: httpx.Response(401))
    )
    with pytest.raises(KafkaSecurityError, match="answered 401: check AGENTSTREAM_KAFKA_OAUTH_CLIENT_ID"):
        await refused.token()


# -- a real TLS server on loopback that is not trusted, or not TLS at all ------------------------------
async def _tls_server(tmp_path: Path) -> tuple[asyncio.Server, int]:
    certs = make_certificates(tmp_path / "other-ca")  # a CA the client does not know
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs.server)

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0, ssl=context)
    return server, server.sockets[0].getsockname()[1]


@pytest.fixture
async def silent_server() -> AsyncIterator[int]:
    """Accepts TCP and closes on the first bytes: what a TLS or SASL listener does to a plaintext Kafka request."""

    async def close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.close()

    server = await asyncio.start_server(close, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


async def test_untrusted_certificate_is_one_line(tmp_path: Path) -> None:
    server, port = await _tls_server(tmp_path)
    trusted = make_certificates(tmp_path / "my-ca")
    settings = KafkaSettings(bootstrap=f"127.0.0.1:{port}", security_protocol="SSL", ssl_cafile=trusted.ca, request_timeout_ms=3000)
    try:
        with pytest.raises(KafkaSecurityError) as caught:
            await start_client(AIOKafkaProducer(**client_options(settings)), settings)
    finally:
        server.close()
    message = str(caught.value)
    assert "\n" not in message and not caught.value.retriable
    assert f"the certificate of the broker at 127.0.0.1:{port} is not trusted" in message
    assert f"AGENTSTREAM_KAFKA_SSL_CAFILE={trusted.ca} does not hold the CA" in message


async def test_plaintext_client_on_a_secured_listener_is_one_line(silent_server: int) -> None:
    settings = KafkaSettings(bootstrap=f"127.0.0.1:{silent_server}", request_timeout_ms=3000)
    with pytest.raises(KafkaSecurityError, match="listener probably expects TLS or SASL; check AGENTSTREAM_KAFKA_SECURITY_PROTOCOL"):
        await start_client(AIOKafkaProducer(**client_options(settings)), settings)


async def test_nothing_listening_is_still_unavailable(silent_server: int) -> None:
    settings = KafkaSettings(bootstrap="127.0.0.1:29999", request_timeout_ms=2000)
    with pytest.raises(KafkaUnavailable, match=r"not reachable at 127\.0\.0\.1:29999"):
        await start_client(AIOKafkaProducer(**client_options(settings)), settings)


def test_a_cluster_id_never_starts_with_a_dash() -> None:
    # kafka-storage takes `--cluster-id -x...` for an option; 1 in 64 random ids started so (CI hit one).
    from services.common.localkafka import kafka_uuid

    assert not [i for i in (kafka_uuid() for _ in range(3000)) if i.startswith("-")]
    seeds = [s for s in (f"seed-{n}" for n in range(2000)) if kafka_uuid(s).startswith("-") or s == "seed-0"]
    assert seeds == ["seed-0"] and kafka_uuid("seed-0") == kafka_uuid("seed-0")  # seeded ids stay stable
