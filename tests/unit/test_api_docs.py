"""The published contracts: AsyncAPI of the topics and OpenAPI of the HTTP API, pinned by snapshots.

A change to an event model, a topic or an endpoint changes a document; the snapshot test fails
until the snapshot is regenerated on purpose:
    AGENTSTREAM_UPDATE_SNAPSHOTS=1 .venv/bin/pytest tests/unit/test_api_docs.py
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from starlette.routing import Route
from starlette.testclient import TestClient

from services.asyncapi import asyncapi_document
from services.orchestrator.app import create_app
from services.orchestrator.docs import _UNDOCUMENTED, CONSOLE_DIR, OPERATIONS, openapi

SNAPSHOTS = Path(__file__).parents[1] / "snapshots"


def _check_snapshot(name: str, document: dict[str, Any]) -> None:
    path = SNAPSHOTS / name
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    if os.environ.get("AGENTSTREAM_UPDATE_SNAPSHOTS") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"no snapshot {path}; create it with AGENTSTREAM_UPDATE_SNAPSHOTS=1"
    assert json.loads(path.read_text()) == json.loads(text), (
        f"{name} changed: if on purpose, regenerate with AGENTSTREAM_UPDATE_SNAPSHOTS=1 and commit tests/snapshots/{name}"
    )


def test_asyncapi_matches_snapshot() -> None:
    _check_snapshot("asyncapi.json", asyncapi_document())


def test_openapi_matches_snapshot() -> None:
    _check_snapshot("openapi.json", openapi(create_app().routes))


def test_asyncapi_documents_every_topic_with_its_model() -> None:
    document = asyncapi_document(prefix="p.")
    addresses = {c["address"] for c in document["channels"].values()}
    lanes = {"p.executions.critical", "p.executions.standard", "p.executions.batch"}
    others = {"p.executions.events", "p.executions.control", "p.executions.status", "p.jobs.completed", "p.dlq", "p.tenants"}
    assert lanes | others <= addresses
    schemas = document["components"]["schemas"]
    assert {"ExecutionRequested", "TokenDelta", "ToolCallStarted", "ExecutionCompleted", "ExecutionStatus", "TenantRecord"} <= set(schemas)
    assert schemas["ExecutionRequested"]["properties"]["type"]["const"] == "execution.requested"


def test_every_route_is_documented_with_its_models() -> None:
    routes = create_app().routes
    document = openapi(routes)
    served = {(m, r.path) for r in routes if isinstance(r, Route) and r.path not in _UNDOCUMENTED for m in (r.methods or ()) if m != "HEAD"}
    documented = {(m.upper(), p) for p, ops in document["paths"].items() for m in ops}
    assert served == documented
    schemas = document["components"]["schemas"]
    for (method, path), op in OPERATIONS.items():
        if (method, path) not in served:
            continue
        operation = document["paths"][path][method.lower()]
        if op.body is not None:
            assert operation["requestBody"]["content"]["application/json"]["schema"] == {"$ref": f"#/components/schemas/{op.body.__name__}"}
            assert op.body.__name__ in schemas
        for status, model in op.responses.items():
            assert str(status) in operation["responses"]
            if model is not None:
                assert model.__name__ in schemas


def test_docs_page_and_openapi_are_served_and_load_nothing_from_the_internet() -> None:
    client = TestClient(create_app())  # no lifespan: these pages need no Kafka
    r = client.get("/openapi.json")
    assert r.status_code == 200 and r.json()["openapi"] == "3.1.0"
    page = client.get("/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/openapi.json" in page.text
    for name in ("docs.html", "index.html", "console.js", "style.css"):
        text = (CONSOLE_DIR / name).read_text()
        assert not re.search(r"https?://", text), name  # every asset is served by the orchestrator itself
    assert client.get("/console").status_code == 200
    assert client.get("/console/static/console.js").status_code == 200


@pytest.mark.parametrize("path", ["/openapi.json", "/docs"])
def test_docs_need_no_api_key(path: str) -> None:
    assert TestClient(create_app()).get(path).status_code == 200
