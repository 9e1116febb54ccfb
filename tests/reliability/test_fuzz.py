"""HTTP fuzzing: schemathesis against the orchestrator's own /openapi.json, every operation, valid and
invalid inputs, valid API keys (and the admin token), on the real app (loopback, real Kafka, an
executor running what gets accepted). No answer may be a 5xx, and none may take longer than the bound.

The cases per operation and mode come from AGENTSTREAM_FUZZ_EXAMPLES (default 80), so the run stays
bounded; the figures are printed and written to docs/reliability.md by hand."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from pydantic import SecretStr
from schemathesis import Case, GenerationMode

from services.common.settings import KafkaSettings
from services.executor.app import Executor
from services.executor.settings import ExecutorSettings
from services.orchestrator.app import create_app
from services.orchestrator.settings import OrchestratorSettings
from tests.support import serve

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.reliability,
    # Hypothesis draws in a worker thread while the app serves on the loop's thread and uses the global
    # `random` (retry jitter, Kafka clients); hypothesis sees its state move during a draw and warns.
    pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies:hypothesis.errors.HypothesisDeprecationWarning"),
]

API_KEY = "fuzz-key"
ADMIN_TOKEN = "fuzz-admin-token"
EXAMPLES = int(os.environ.get("AGENTSTREAM_FUZZ_EXAMPLES", "80"))
REQUEST_TIMEOUT_S = 10.0  # no single answer may take longer (connect and read)
SLOW_S = 5.0  # an answer slower than this counts as a hang


@dataclass
class Tally:
    cases: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    server_errors: list[str] = field(default_factory=list)
    hangs: list[str] = field(default_factory=list)
    per_operation: dict[str, int] = field(default_factory=dict)


@pytest.fixture
async def fuzz_url(kafka_settings: KafkaSettings, tmp_path: Path) -> AsyncIterator[str]:
    """Executor + orchestrator, admin API on, no request limits (the fuzzer is one tenant sending thousands)."""
    workflows = tmp_path / "workflows.yaml"
    workflows.write_text("workflows:\n  fuzz-flow:\n    steps:\n      - {name: one, agent: default}\n")
    orch = OrchestratorSettings(
        kafka=kafka_settings,
        api_keys={API_KEY: "tenant-fuzz"},
        admin_token=SecretStr(ADMIN_TOKEN),
        database_url=SecretStr(f"sqlite+aiosqlite:///{tmp_path / 'state.db'}"),
        requests_per_minute=0,
        concurrent_executions=0,
        max_batch_items=50,
        callback_timeout_s=2.0,
        workflows_file=workflows,
    )
    async with Executor(ExecutorSettings(kafka=kafka_settings, scripted_token_delay_ms=0)):
        async with serve(create_app(orch)) as url:
            # Ready first: /health/ready is fuzzed too, and its 503 while a group reader still joins
            # (seconds on a loaded machine) is the right answer then, not a server error.
            async with httpx.AsyncClient(base_url=url) as http, asyncio.timeout(60):
                while (await http.get("/health/ready")).status_code != 200:
                    await asyncio.sleep(0.1)
            yield url


def _headers_for(case: Case[Any]) -> dict[str, str]:
    token = ADMIN_TOKEN if case.operation.path.startswith("/v1/admin") else API_KEY
    return {"Authorization": f"Bearer {token}"}


def _fuzz_operation(
    operation: Any, mode: GenerationMode, base_url: str, tally: Tally, *, examples: int, path_parameters: dict[str, str] | None = None
) -> None:
    label = f"{operation.method.upper()} {operation.path}"
    session = requests.Session()

    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=path_parameters))
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,  # no .hypothesis/ directory; every run starts fresh
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Case[Any]) -> None:
        started = time.monotonic()
        try:
            response = case.call(base_url=base_url, session=session, headers=_headers_for(case), timeout=REQUEST_TIMEOUT_S)
        except requests.Timeout:
            tally.hangs.append(f"{label}: no answer within {REQUEST_TIMEOUT_S}s\n{case.as_curl_command()}")
            return
        elapsed = time.monotonic() - started
        tally.cases += 1
        tally.per_operation[label] = tally.per_operation.get(label, 0) + 1
        tally.by_status[response.status_code] = tally.by_status.get(response.status_code, 0) + 1
        if response.status_code >= 500:
            tally.server_errors.append(f"{label} -> {response.status_code} {response.text[:300]}\n{case.as_curl_command()}")
        if elapsed > SLOW_S:
            tally.hangs.append(f"{label}: answered after {elapsed:.1f}s\n{case.as_curl_command()}")

    try:
        run()
    except Unsatisfiable:
        # Nothing to break in an operation without parameters or body: the positive cases cover it.
        assert mode is GenerationMode.NEGATIVE, label
    finally:
        session.close()


def fuzz(spec: dict[str, Any], base_url: str, real_ids: dict[str, str]) -> Tally:
    """Every operation in both modes with generated ids; then those with ids again with the ids of real
    resources, so the handlers behind the 404 (cancel, chat, messages, SSE replay, plans...) get fuzzed too."""
    schema = schemathesis.openapi.from_dict(spec)
    tally = Tally()
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # an invalid operation raises here: the spec is ours
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz_operation(operation, mode, base_url, tally, examples=EXAMPLES)
        names = {p.name for p in operation.path_parameters}
        if names:
            ids = {name: real_ids[name] for name in names}
            _fuzz_operation(operation, GenerationMode.POSITIVE, base_url, tally, examples=EXAMPLES, path_parameters=ids)
    return tally


async def real_resources(http: httpx.AsyncClient) -> dict[str, str]:
    """One of each resource of the fuzzing tenant, made through the API itself."""
    tenant = {"Authorization": f"Bearer {API_KEY}"}
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    session = (await http.post("/v1/sessions", json={"agent": "default", "policy": "enqueue"}, headers=tenant)).json()["session_id"]
    execution = (await http.post("/v1/executions", json={"input": "what is 6*7?", "session_id": session}, headers=tenant)).json()
    batch = (await http.post("/v1/batches", json={"items": [{"input": "1+1"}, {"input": "2+2"}]}, headers=tenant)).json()["batch_id"]
    job = (await http.post("/v1/jobs", json={"service": "query"}, headers=tenant)).json()["task_id"]
    key = (await http.post("/v1/admin/tenants/tenant-fuzz/keys", json={"name": "fuzz"}, headers=admin)).json()["key_id"]
    run = (await http.post("/v1/workflows/fuzz-flow/runs", json={"input": "hi"}, headers=tenant)).json()["run_id"]
    schedule = (await http.post("/v1/schedules", json={"interval_s": 3600, "target": {"input": "1+1"}}, headers=tenant)).json()[
        "schedule_id"
    ]
    return {
        "execution_id": execution["execution_id"],
        "session_id": session,
        "batch_id": batch,
        "task_id": job,
        "tenant_id": "tenant-fuzz",
        "key_id": key,
        "schedule_id": schedule,
        "response_id": "resp_" + execution["execution_id"],  # the OpenAI door: a response is an execution
        "model": "default",
        "agent": "default",  # the AG-UI and A2A doors: /v1/agui/{agent}, /v1/a2a/{agent}
        "call_id": "call_fuzz",  # approvals and answers of a tool call (none waits: the handlers' 404/409)
        "name": "fuzz-flow",  # a workflow
        "run_id": run,
    }


async def test_fuzz_every_operation_no_5xx_no_hang(fuzz_url: str) -> None:
    async with httpx.AsyncClient(base_url=fuzz_url) as http:
        spec = (await http.get("/openapi.json")).json()
        real_ids = await real_resources(http)
    operations = sum(1 for methods in spec["paths"].values() for m in methods if m in {"get", "post", "put", "patch", "delete"})
    started = time.monotonic()
    tally = await asyncio.to_thread(fuzz, spec, fuzz_url, real_ids)
    took = time.monotonic() - started
    print(
        f"\nfuzz: {tally.cases} cases over {operations} operations in {took:.0f}s; "
        f"statuses {dict(sorted(tally.by_status.items()))}; 5xx {len(tally.server_errors)}; hangs {len(tally.hangs)}"
    )
    assert set(tally.per_operation) == {f"{m.upper()} {p}" for p, ms in spec["paths"].items() for m in ms}, "an operation got no case"
    assert not tally.server_errors, "\n\n".join(tally.server_errors[:10])
    assert not tally.hangs, "\n\n".join(tally.hangs[:10])
