"""The services on a SASL_SSL broker with SCRAM users and the StandardAuthorizer, each with only the ACLs
of services/common/acls.py; and what a wrong password, an untrusted CA or a missing ACL says."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from services.common import acls, topicplan
from services.common.errors import KafkaSecurityError
from services.common.kafka import client_options, ensure_topics, start_client
from services.common.localkafka import LocalKafka
from services.common.localtls import make_certificates
from services.common.settings import KafkaSettings
from services.common.topicplan import TopicCreationRefused
from services.executor.app import Executor
from services.executor.settings import ExecutorSettings
from services.orchestrator.app import create_app
from services.orchestrator.settings import OrchestratorSettings
from tests.support import collect_events, serve

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]
USERS = (("admin", "admin-secret"), ("orchestrator", "orch-secret"), ("executor", "exec-secret"), ("stranger", "stranger-secret"))


@pytest.fixture(scope="module")
def secured() -> Iterator[LocalKafka]:
    """A broker of this module's own on ports 29092-29094 (stopped and deleted at the end)."""
    broker = LocalKafka(port=29092, controller_port=29093, sasl_port=29094, heap="512m", users=USERS)
    broker.reset()
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
        shutil.rmtree(broker.data_dir, ignore_errors=True)
        shutil.rmtree(broker.tls_dir, ignore_errors=True)


def _as(broker: LocalKafka, user: str, prefix: str, **changes: object) -> KafkaSettings:
    password = dict(USERS)[user]
    base = KafkaSettings(
        bootstrap=broker.sasl_bootstrap,
        topic_prefix=prefix,
        partitions=3,
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username=user,
        sasl_password=SecretStr(password),
        ssl_cafile=broker.ca_file,
        request_timeout_ms=5000,
    )
    return base.model_copy(update=changes) if changes else base


async def _prepare(broker: LocalKafka, prefix: str) -> None:
    """What an operator does once: topics with an admin principal, then each service's ACLs."""
    admin_settings = _as(broker, "admin", prefix)
    await ensure_topics(admin_settings)
    admin = AIOKafkaAdminClient(**client_options(admin_settings))
    await start_client(admin, admin_settings)
    try:
        await acls.create_acls(
            admin,
            acls.plan(admin_settings, "orchestrator", "User:orchestrator") + acls.plan(admin_settings, "executor", "User:executor"),
        )
    finally:
        await admin.close()
    # The controller commits ACLs before every broker's authorizer has them: wait until both see the topics.
    for user in ("orchestrator", "executor"):
        await _until_visible(_as(broker, user, prefix), admin_settings.topics.events)


async def _until_visible(settings: KafkaSettings, topic: str) -> None:
    admin = AIOKafkaAdminClient(**client_options(settings))
    await start_client(admin, settings)
    try:
        async with asyncio.timeout(15):
            while topic not in await admin.list_topics():
                await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def test_services_run_with_least_privilege_acls_over_sasl_ssl(secured: LocalKafka, tmp_path: Path) -> None:
    prefix = f"s{uuid.uuid4().hex[:8]}."
    await _prepare(secured, prefix)
    orch = OrchestratorSettings(
        kafka=_as(secured, "orchestrator", prefix),
        api_keys={"key-a": "tenant-a"},
        database_url=SecretStr(f"sqlite+aiosqlite:///{tmp_path / 'state.db'}"),
    )
    async with Executor(ExecutorSettings(kafka=_as(secured, "executor", prefix), scripted_token_delay_ms=1)):
        async with serve(create_app(orch)) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
            r = await http.post("/v1/executions", json={"input": "what is 6*7?"}, headers={"Authorization": "Bearer key-a"})
            assert r.status_code == 202, r.text
            items = await collect_events(url.replace("http", "ws", 1), "key-a", r.json()["execution_id"])
            assert items[-1]["event"]["type"] == "execution.completed"
            status = await http.get(f"/v1/executions/{r.json()['execution_id']}", headers={"Authorization": "Bearer key-a"})
            assert status.json()["status"] == "completed"


async def test_wrong_password_is_one_line_and_not_retried(secured: LocalKafka) -> None:
    settings = _as(secured, "executor", "wrong.", sasl_password=SecretStr("not-the-password"))
    started = asyncio.get_running_loop().time()
    with pytest.raises(KafkaSecurityError) as caught:
        async with Executor(ExecutorSettings(kafka=settings)):
            pass
    assert asyncio.get_running_loop().time() - started < 20  # refused, not a retry loop
    message = str(caught.value)
    assert "\n" not in message and not caught.value.retriable
    assert message.startswith(f"SASL SCRAM-SHA-512: the broker at {secured.sasl_bootstrap} refused the credentials of User:executor")
    assert message.endswith("check AGENTSTREAM_KAFKA_SASL_USERNAME and AGENTSTREAM_KAFKA_SASL_PASSWORD")
    assert "not-the-password" not in message


async def test_a_principal_without_acls_is_told_which_acls_to_grant(secured: LocalKafka) -> None:
    prefix = f"s{uuid.uuid4().hex[:8]}."
    await _prepare(secured, prefix)
    with pytest.raises(TopicCreationRefused) as caught:
        await ensure_topics(_as(secured, "stranger", prefix))
    message = str(caught.value)
    assert "\n" not in message and f"{prefix}executions.status" in message and "Authorization failed" in message
    assert "create them with an admin principal (`agentstream kafka topics create`" in message
    assert "this principal lacks Describe on them: grant it the ACLs of docs/kafka.md" in message


def test_untrusted_certificate_stops_the_orchestrator_command_with_one_line(secured: LocalKafka, tmp_path: Path) -> None:
    other_ca = make_certificates(tmp_path / "other").ca  # not the CA that signed the broker's certificate
    env = {
        **os.environ,
        "AGENTSTREAM_KAFKA_BOOTSTRAP": secured.sasl_bootstrap,
        "AGENTSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "AGENTSTREAM_KAFKA_SASL_USERNAME": "orchestrator",
        "AGENTSTREAM_KAFKA_SASL_PASSWORD": "orch-secret",
        "AGENTSTREAM_KAFKA_SSL_CAFILE": str(other_ca),
        "AGENTSTREAM_KAFKA_REQUEST_TIMEOUT_MS": "5000",
        "AGENTSTREAM_PORT": "0",
    }
    proc = subprocess.run(
        [sys.executable, "-c", "from services.cli import app; app()", "orchestrator", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "orch-secret" not in proc.stderr + proc.stdout
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: TLS: the certificate of the broker at {secured.sasl_bootstrap} is not trusted"), proc.stderr
    assert last.endswith(
        f"SSL_CAFILE={other_ca} does not hold the CA that signed it; set AGENTSTREAM_KAFKA_SSL_CAFILE to that CA's PEM file"
    )


def _unsecured_jwt(subject: str) -> str:
    """What the local broker's unsecured OAUTHBEARER validator accepts: an unsigned JWT naming the principal."""

    def part(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    now = int(time.time())
    return f"{part({'alg': 'none'})}.{part({'sub': subject, 'iat': now, 'exp': now + 3600})}."


async def test_oauthbearer_with_a_client_credentials_token_endpoint(secured: LocalKafka) -> None:
    grants: list[dict[str, str]] = []

    async def token(request: Request) -> JSONResponse:
        form = dict(urllib.parse.parse_qsl((await request.body()).decode()))  # form-encoded, as RFC 6749 says
        grants.append(form)
        if form.get("client_secret") != "idp-secret":
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        return JSONResponse({"access_token": _unsecured_jwt(str(form["client_id"])), "token_type": "Bearer", "expires_in": 3600})

    async with serve(Starlette(routes=[Route("/token", token, methods=["POST"])])) as url:
        settings = KafkaSettings(
            bootstrap=secured.sasl_bootstrap,
            security_protocol="SASL_SSL",
            sasl_mechanism="OAUTHBEARER",
            oauth_token_url=f"{url}/token",
            oauth_client_id="admin",
            oauth_client_secret=SecretStr("idp-secret"),
            ssl_cafile=secured.ca_file,
            request_timeout_ms=5000,
        )
        admin = AIOKafkaAdminClient(**client_options(settings))
        await start_client(admin, settings)
        try:
            assert isinstance(await admin.list_topics(), list)  # authenticated as User:admin by the token's sub
        finally:
            await admin.close()
        assert grants[0]["grant_type"] == "client_credentials" and len(grants) == 1  # one token for every connection
        # Every client of a service, the lanes' consumers included, authenticates with the token.
        prefixed = settings.model_copy(update={"topic_prefix": f"o{uuid.uuid4().hex[:8]}.", "partitions": 1})
        async with Executor(ExecutorSettings(kafka=prefixed)) as executor:
            consumers = executor.consumers()
            assert len(consumers) == 3
            async with asyncio.timeout(30):  # each lane's consumer joined its group over SASL_SSL/OAUTHBEARER
                while not all(c.assignment() for c in consumers):
                    await asyncio.sleep(0.1)

        refused = settings.model_copy(update={"oauth_client_secret": SecretStr("wrong")})
        with pytest.raises(KafkaSecurityError, match=r"token endpoint .*/token answered 401: check AGENTSTREAM_KAFKA_OAUTH_CLIENT_ID"):
            await start_client(AIOKafkaAdminClient(**client_options(refused)), refused)


async def test_configs_that_cannot_be_read_are_not_taken_for_a_broken_promise(secured: LocalKafka) -> None:
    prefix = f"s{uuid.uuid4().hex[:8]}."
    await _prepare(secured, prefix)
    admin_settings = _as(secured, "admin", prefix)
    admin = AIOKafkaAdminClient(**client_options(admin_settings))
    await start_client(admin, admin_settings)
    try:  # Describe on the topics, but not DescribeConfigs
        await acls.create_acls(admin, [acls.AclBinding("User:stranger", "Topic", prefix, "Describe", "PREFIXED")])
    finally:
        await admin.close()
    stranger = _as(secured, "stranger", prefix)
    await _until_visible(stranger, stranger.topics.events)
    await ensure_topics(stranger)  # the status topic's policy is unknown to it, not "delete": no TopicMisfit
    admin = AIOKafkaAdminClient(**client_options(stranger))
    await start_client(admin, stranger)
    try:
        specs = topicplan.plan(stranger)
        found = topicplan.differences(specs, await topicplan.describe(admin, [s.name for s in specs]))
    finally:
        await admin.close()
    assert f"{stranger.topics.status}: its configs could not be read (DescribeConfigs refused), so they were not compared" in found
