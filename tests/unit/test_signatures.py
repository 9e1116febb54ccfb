"""Ingress signatures: Standard Webhooks both ways, key rotation, and each refusal's reason."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook

from services.orchestrator.signatures import SignatureRejected, sign, verify

SECRET = "whsec_" + base64.b64encode(b"a tenant's 32-byte signing secret").decode()
KEYS = {"acme": SecretStr(SECRET)}
VALUE = b'{"input":"hi"}'
NOW = 1_800_000_000


def _headers(signature: str, *, message_id: str = "msg_1", ts: int = NOW) -> list[tuple[str, bytes]]:
    return [("webhook-id", message_id.encode()), ("webhook-timestamp", str(ts).encode()), ("webhook-signature", signature.encode())]


def test_our_signature_is_the_standard_one() -> None:
    ours = sign(SECRET, message_id="msg_1", timestamp=NOW, value=VALUE)
    assert Webhook(SECRET).sign("msg_1", datetime.fromtimestamp(NOW, UTC), VALUE.decode()) == ours
    assert verify(b"acme", VALUE, _headers(ours), KEYS, now=NOW).tenant_id == "acme"


def test_any_of_several_signatures_may_match_during_a_key_rotation() -> None:
    good = sign(SECRET, message_id="msg_1", timestamp=NOW, value=VALUE)
    old = sign("whsec_" + base64.b64encode(b"the previous secret of the tenant").decode(), message_id="msg_1", timestamp=NOW, value=VALUE)
    assert verify(b"acme", VALUE, _headers(f"{old} {good}"), KEYS, now=NOW).message_id == "msg_1"


@pytest.mark.parametrize(
    ("key", "headers", "reason"),
    [
        (b"", _headers("v1,x"), "without a key"),
        (b"acme", [], "unsigned ingress record"),
        (b"other", _headers(sign(SECRET, message_id="msg_1", timestamp=NOW, value=VALUE)), "tenant 'other' has no ingress signing key"),
        (b"acme", _headers("v1,AAAA"), "does not match tenant 'acme'"),
        (b"acme", _headers(sign(SECRET, message_id="msg_1", timestamp=NOW - 600, value=VALUE), ts=NOW - 600), "600s from now"),
        (b"acme", [("webhook-id", b"m"), ("webhook-timestamp", b"soon"), ("webhook-signature", b"v1,x")], "not Unix seconds"),
    ],
)
def test_refusals_say_why(key: bytes, headers: list[tuple[str, bytes]], reason: str) -> None:
    with pytest.raises(SignatureRejected, match=reason):
        verify(key, VALUE, headers, KEYS, now=NOW)


def test_the_cli_signs_what_the_door_accepts() -> None:
    from typer.testing import CliRunner

    from services.cli import app
    from services.orchestrator.ingress import execution_id_for

    result = CliRunner().invoke(
        app, ["ingress", "sign", VALUE.decode(), "--tenant", "acme", "--message-id", "msg_7"], env={"AGENTSTREAM_INGRESS_SECRET": SECRET}
    )
    assert result.exit_code == 0, result.output
    flags = result.stdout.split()
    assert flags[:2] == ["-k", "acme"]
    headers = [(k, v.encode()) for k, _, v in (flag.partition("=") for flag in flags[3::2])]
    assert verify(b"acme", VALUE, headers, KEYS).message_id == "msg_7"
    assert f"execution id: {execution_id_for('acme', 'msg_7')}" in result.stderr
