"""OpenAPI for the HTTP API, generated from the app's routes and the models in ``schemas/api.py``.

Paths and methods come from the routes the app really serves, so a route cannot be missing from
the document; request and response bodies come from ``OPERATIONS`` (the pydantic models each
endpoint validates and returns). A route without an entry there is still documented, from its
handler's docstring. ``/docs`` renders the document with a small page vendored in ``console/``
(nothing loads from the internet); ``/console`` is the live console.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from schemas import api, workflows
from schemas import openai_door as door
from schemas import schedules as sched
from schemas.plans import OrchestrationPlan

CONSOLE_DIR = Path(__file__).parent / "console"


@dataclass(frozen=True)
class Op:
    summary: str
    tag: str
    body: type[BaseModel] | None = None
    responses: dict[int, type[BaseModel] | None] = field(default_factory=dict)
    query: tuple[tuple[str, str, str], ...] = ()  # (name, type, description)
    auth: str = "tenant"  # tenant | admin | none
    idempotent: bool = False


class MessageList(BaseModel):
    session_id: str
    messages: list[api.SessionMessage]


OPERATIONS: dict[tuple[str, str], Op] = {
    ("POST", "/v1/executions"): Op(
        "Submit an execution", "executions", api.ExecutionRequest, {202: api.ExecutionAccepted}, idempotent=True
    ),
    ("GET", "/v1/executions"): Op(
        "The tenant's executions, newest first (run history)",
        "executions",
        None,
        {200: api.ExecutionList},
        query=(
            ("status", "string", "states separated by commas: queued,running,completed,failed,cancelled,timed_out"),
            ("agent", "string", "only this agent's"),
            ("session_id", "string", "only this session's"),
            ("batch_id", "string", "only this batch's"),
            ("since", "string", "created at or after (ISO time with a zone, or epoch seconds)"),
            ("until", "string", "created before (ISO time with a zone, or epoch seconds)"),
            ("limit", "integer", "at most this many (1-200, default 50)"),
            ("cursor", "string", "the next_cursor of the page before"),
        ),
    ),
    ("GET", "/v1/executions/{execution_id}"): Op("Status, output and usage of an execution", "executions", None, {200: api.ExecutionView}),
    ("POST", "/v1/executions/{execution_id}/cancel"): Op(
        "Cancel an execution", "executions", None, {202: api.CancelResponse, 200: api.CancelResponse}, idempotent=True
    ),
    ("GET", "/v1/executions/{execution_id}/plan"): Op(
        "The orchestration plan: service calls made for the execution, in order, with timings and outcomes",
        "executions",
        None,
        {200: OrchestrationPlan},
    ),
    ("GET", "/v1/executions/{execution_id}/events"): Op(
        "Server-sent events of an execution (resume with Last-Event-ID = cursor)",
        "streaming",
        None,
        {200: None},
        query=(("cursor", "integer", "resume after this cursor (same as Last-Event-ID)"),),
    ),
    # The OpenAI-compatible door (services/orchestrator/openai/, docs/openai.md).
    ("POST", "/v1/chat/completions"): Op(
        "Chat Completions: run an agent over messages (`stream: true`: chat.completion.chunk events)",
        "openai",
        door.ChatCompletionRequest,
        {200: door.ChatCompletionObject},
        idempotent=True,
    ),
    ("POST", "/v1/responses"): Op(
        "Responses: run an agent; stream, background, previous_response_id",
        "openai",
        door.ResponseCreateRequest,
        {200: door.ResponseObject},
        idempotent=True,
    ),
    ("GET", "/v1/responses/{response_id}"): Op(
        "A response; with stream=true its events after starting_after (resume)",
        "openai",
        None,
        {200: door.ResponseObject},
        query=(("stream", "boolean", "stream the events (SSE)"), ("starting_after", "integer", "resume after this sequence number")),
    ),
    ("DELETE", "/v1/responses/{response_id}"): Op("Forget a finished response", "openai", None, {200: door.ResponseDeleted}),
    ("POST", "/v1/responses/{response_id}/cancel"): Op("Cancel a response", "openai", None, {200: door.ResponseObject}),
    ("GET", "/v1/models"): Op("The agents, as OpenAI models", "openai", None, {200: door.ModelList}),
    ("GET", "/v1/models/{model}"): Op("One agent as an OpenAI model", "openai", None, {200: door.ModelObject}),
    ("POST", "/v1/sessions"): Op("Create a chat session", "sessions", api.SessionCreate, {201: api.SessionState}, idempotent=True),
    ("GET", "/v1/sessions"): Op(
        "The tenant's sessions, newest first",
        "sessions",
        None,
        {200: api.SessionList},
        query=(
            ("agent", "string", "only this agent's"),
            ("limit", "integer", "at most this many (1-200, default 50)"),
            ("cursor", "string", "the next_cursor of the page before"),
        ),
    ),
    ("GET", "/v1/sessions/{session_id}"): Op("A session's state", "sessions", None, {200: api.SessionState}),
    ("DELETE", "/v1/sessions/{session_id}"): Op(
        "Delete a session and its history (409 while an execution runs in it)", "sessions", None, {204: None, 409: api.ErrorBody}
    ),
    ("GET", "/v1/agents"): Op(
        "The agents: provider, model, tools and the variables their prompts need", "agents", None, {200: api.AgentList}
    ),
    ("GET", "/v1/sessions/{session_id}/messages"): Op(
        "The session's conversation",
        "sessions",
        None,
        {200: MessageList},
        query=(("after", "integer", "messages after this seq"), ("limit", "integer", "at most this many")),
    ),
    ("POST", "/v1/sessions/{session_id}/chat"): Op(
        "Send a message: starts an execution with the session's history",
        "sessions",
        api.ChatRequest,
        {202: api.ChatResponse},
        idempotent=True,
    ),
    ("POST", "/v1/batches"): Op("Submit a batch of executions", "batches", api.BatchRequest, {202: api.BatchAccepted}, idempotent=True),
    ("GET", "/v1/batches/{batch_id}"): Op("Progress and results of a batch", "batches", None, {200: api.BatchView}),
    ("POST", "/v1/jobs"): Op("Register a job of an external service", "tasks", api.JobCreate, {201: api.TaskView}, idempotent=True),
    ("GET", "/v1/tasks/{task_id}"): Op("A task (execution or job) in the registry", "tasks", None, {200: api.TaskView}),
    ("GET", "/v1/workflows"): Op("The workflow definitions (issue 20)", "workflows", None, {200: workflows.WorkflowList}),
    ("POST", "/v1/workflows/{name}/runs"): Op(
        "Start a workflow run (202 once Kafka acknowledged it)",
        "workflows",
        workflows.WorkflowRunRequest,
        {202: workflows.WorkflowRunAccepted},
        idempotent=True,
    ),
    ("GET", "/v1/workflows/runs/{run_id}"): Op(
        "A workflow run: its graph and each step's state", "workflows", None, {200: workflows.WorkflowRunView}
    ),
    ("POST", "/v1/workflows/runs/{run_id}/cancel"): Op(
        "Cancel a run: every running step, then the run", "workflows", None, {202: workflows.WorkflowRunCancel}, idempotent=True
    ),
    ("GET", "/v1/usage"): Op(
        "Token usage of the tenant",
        "usage",
        None,
        {200: api.UsageReport},
        query=(
            ("group_by", "string", "tenant | agent | session"),
            ("since", "string", "ISO time or epoch seconds"),
            ("until", "string", "ISO time or epoch seconds"),
        ),
    ),
    ("POST", "/v1/schedules"): Op(
        "Schedule an execution (cron or interval, time zone)", "schedules", sched.ScheduleCreate, {201: sched.ScheduleView}, idempotent=True
    ),
    ("GET", "/v1/schedules"): Op("The tenant's schedules", "schedules", None, {200: sched.ScheduleList}),
    ("GET", "/v1/schedules/{schedule_id}"): Op("A schedule, with its next and last firing", "schedules", None, {200: sched.ScheduleView}),
    ("PATCH", "/v1/schedules/{schedule_id}"): Op(
        "Change, pause or resume a schedule", "schedules", sched.SchedulePatch, {200: sched.ScheduleView}
    ),
    ("DELETE", "/v1/schedules/{schedule_id}"): Op("Delete a schedule", "schedules", None, {204: None}),
    ("POST", "/v1/admin/tenants"): Op("Create a tenant (and its first key)", "admin", api.TenantCreate, {201: None}, auth="admin"),
    ("GET", "/v1/admin/tenants"): Op("List tenants", "admin", None, {200: None}, auth="admin"),
    ("GET", "/v1/admin/tenants/{tenant_id}"): Op("A tenant", "admin", None, {200: None}, auth="admin"),
    ("POST", "/v1/admin/tenants/{tenant_id}/keys"): Op("Create an API key (shown once)", "admin", api.KeyCreate, {201: None}, auth="admin"),
    ("GET", "/v1/admin/tenants/{tenant_id}/keys"): Op("List a tenant's keys", "admin", None, {200: None}, auth="admin"),
    ("DELETE", "/v1/admin/keys/{key_id}"): Op("Revoke a key", "admin", None, {200: None}, auth="admin"),
    ("DELETE", "/v1/admin/tenants/{tenant_id}/cache"): Op(
        "Drop a tenant's cached Query and Embedding results", "admin", None, {200: None, 503: None}, auth="admin"
    ),
    ("GET", "/health/live"): Op("Liveness", "operations", None, {200: None}, auth="none"),
    ("GET", "/health/ready"): Op("Readiness (Kafka, every reader)", "operations", None, {200: None, 503: None}, auth="none"),
    ("GET", "/metrics"): Op("Prometheus metrics", "operations", None, {200: None}, auth="none"),
}

_UNDOCUMENTED = {"/openapi.json", "/docs", "/console"}
_ERRORS = {400: "Malformed body", 401: "Missing or invalid API key", 404: "Not found (or another tenant's)", 422: "Invalid input"}
_ERRORS_EXTRA = {413: "Body too large", 429: "Rate limited (Retry-After)", 503: "Kafka did not acknowledge (Retry-After)"}


def _http_routes(routes: list[BaseRoute]) -> list[tuple[str, str, Any]]:
    out = []
    for route in routes:
        if isinstance(route, Route) and route.path not in _UNDOCUMENTED:
            for method in sorted((route.methods or set()) - {"HEAD"}):
                out.append((method, route.path, route.endpoint))
    return out


def openapi(routes: list[BaseRoute], *, version: str = "0.1.0") -> dict[str, Any]:
    http = _http_routes(routes)
    models: set[type[BaseModel]] = {api.ErrorBody}
    for method, path, _ in http:
        op = OPERATIONS.get((method, path))
        if op is not None:
            models |= {m for m in (op.body, *op.responses.values()) if m is not None}
    ordered = sorted(models, key=lambda m: m.__name__)
    _, defs = models_json_schema([(m, "serialization") for m in ordered], ref_template="#/components/schemas/{model}")
    paths: dict[str, dict[str, Any]] = {}
    for method, path, endpoint in http:
        paths.setdefault(path, {})[method.lower()] = _operation(method, path, endpoint, OPERATIONS.get((method, path)))
    websockets = {r.path: (inspect.getdoc(r.endpoint) or "").split("\n\n")[0] for r in routes if isinstance(r, WebSocketRoute)}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "agentstream",
            "version": version,
            "description": "LLM agents as event-driven services on Apache Kafka. Authenticate with `Authorization: Bearer <api key>` "
            "(or `X-API-Key`); the tenant comes from the key. Streaming: WebSocket `/v1/stream` (see x-websockets) and SSE.",
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(defs.get("$defs", {}).items())),
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "A tenant's API key"},
                "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "adminToken": {"type": "http", "scheme": "bearer", "description": "AGENTSTREAM_ADMIN_TOKEN"},
            },
        },
        "x-websockets": dict(sorted(websockets.items())),
    }


def _operation(method: str, path: str, endpoint: Any, op: Op | None) -> dict[str, Any]:
    doc = (inspect.getdoc(endpoint) or "").split("\n\n")[0]
    op = op or Op(doc or f"{method} {path}", path.split("/")[2] if path.startswith("/v1/") else "other", None, {200: None})
    out: dict[str, Any] = {"summary": op.summary, "tags": [op.tag], "operationId": _operation_id(method, path)}
    if doc and doc != op.summary:
        out["description"] = doc
    params = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in re.findall(r"{(\w+)}", path)]
    params += [{"name": n, "in": "query", "required": False, "schema": {"type": t}, "description": d} for n, t, d in op.query]
    if op.idempotent:
        params.append(
            {"name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string"}, "description": "Retry safely"}
        )
    if method in ("POST", "GET") and op.auth == "tenant":
        params.append({"name": "traceparent", "in": "header", "required": False, "schema": {"type": "string"}, "description": "W3C"})
    if params:
        out["parameters"] = params
    if op.body is not None:
        ref = {"$ref": f"#/components/schemas/{op.body.__name__}"}
        out["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref}}}
    responses: dict[str, Any] = {}
    for status, model in sorted(op.responses.items()):
        media = "text/event-stream" if path.endswith("/events") else "text/plain" if path == "/metrics" else "application/json"
        content = {media: {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}} if model is not None else {media: {}}
        responses[str(status)] = {"description": "OK" if status < 300 else "Error", "content": content}
    if op.auth != "none":
        error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
        extra = _ERRORS_EXTRA if method == "POST" else {}
        for status, text in sorted((_ERRORS | extra).items()):
            responses.setdefault(str(status), {"description": text, "content": error})
        out["security"] = [{"adminToken": []}] if op.auth == "admin" else [{"apiKey": []}, {"apiKeyHeader": []}]
    out["responses"] = responses
    return out


def _operation_id(method: str, path: str) -> str:
    words = [w.strip("{}") for w in path.strip("/").split("/") if w and w != "v1"]
    return method.lower() + "_" + "_".join(words).replace(".", "_")


async def openapi_json(request: Request) -> Response:
    document = getattr(request.app.state, "openapi", None)
    if document is None:
        document = request.app.state.openapi = openapi(request.app.routes)
    return JSONResponse(document)


async def docs_page(request: Request) -> Response:
    return FileResponse(CONSOLE_DIR / "docs.html", media_type="text/html")


async def console_page(request: Request) -> Response:
    return FileResponse(CONSOLE_DIR / "index.html", media_type="text/html")


async def console_redirect(request: Request) -> Response:
    return RedirectResponse("/console")


def routes() -> list[BaseRoute]:
    return [
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/docs", docs_page, methods=["GET"]),
        Route("/console", console_page, methods=["GET"]),
        Mount("/console/static", app=StaticFiles(directory=CONSOLE_DIR), name="console-static"),
    ]
