"""The orchestrator's API routes beyond streaming (executions, sessions, batches, tasks, usage, admin)."""

from __future__ import annotations

from starlette.routing import BaseRoute, Route, WebSocketRoute

from services.orchestrator import a2a, admin, agents, agui, approvals, batches, executions, openai, plans, sessions, tasks, usage
from services.orchestrator.cacheadmin import invalidate_cache
from services.orchestrator.schedules import api as schedules
from services.orchestrator.workflows import api as workflows


def routes() -> list[BaseRoute]:
    return [
        Route("/v1/executions", executions.create_execution, methods=["POST"]),
        Route("/v1/executions", executions.list_executions, methods=["GET"]),
        Route("/v1/executions/{execution_id}", executions.get_execution, methods=["GET"]),
        Route("/v1/executions/{execution_id}/cancel", executions.cancel_execution, methods=["POST"]),
        Route("/v1/executions/{execution_id}/approvals/{call_id}", approvals.post_approval, methods=["POST"]),
        Route("/v1/executions/{execution_id}/inputs/{call_id}", approvals.post_input, methods=["POST"]),
        Route("/v1/executions/{execution_id}/plan", plans.get_plan, methods=["GET"]),
        Route("/v1/sessions", sessions.create_session, methods=["POST"]),
        Route("/v1/sessions", sessions.list_sessions, methods=["GET"]),
        Route("/v1/sessions/{session_id}", sessions.get_session, methods=["GET"]),
        Route("/v1/sessions/{session_id}", sessions.delete_session, methods=["DELETE"]),
        Route("/v1/sessions/{session_id}/messages", sessions.get_messages, methods=["GET"]),
        Route("/v1/sessions/{session_id}/chat", sessions.chat, methods=["POST"]),
        Route("/v1/batches", batches.create_batch, methods=["POST"]),
        Route("/v1/batches/{batch_id}", batches.get_batch, methods=["GET"]),
        Route("/v1/jobs", tasks.create_job, methods=["POST"]),
        Route("/v1/tasks/{task_id}", tasks.get_task, methods=["GET"]),
        Route("/v1/workflows", workflows.list_workflows, methods=["GET"]),
        Route("/v1/workflows/{name}/runs", workflows.create_run, methods=["POST"]),
        Route("/v1/workflows/runs/{run_id}", workflows.get_run, methods=["GET"]),
        Route("/v1/workflows/runs/{run_id}/cancel", workflows.cancel_run, methods=["POST"]),
        Route("/v1/usage", usage.get_usage, methods=["GET"]),
        Route("/v1/schedules", schedules.create_schedule, methods=["POST"]),
        Route("/v1/schedules", schedules.list_schedules, methods=["GET"]),
        Route("/v1/schedules/{schedule_id}", schedules.get_schedule, methods=["GET"]),
        Route("/v1/schedules/{schedule_id}", schedules.patch_schedule, methods=["PATCH"]),
        Route("/v1/schedules/{schedule_id}", schedules.delete_schedule, methods=["DELETE"]),
        Route("/v1/agents", agents.list_agents, methods=["GET"]),
        Route("/v1/admin/tenants", admin.create_tenant, methods=["POST"]),
        Route("/v1/admin/tenants", admin.list_tenants, methods=["GET"]),
        Route("/v1/admin/tenants/{tenant_id}", admin.get_tenant, methods=["GET"]),
        Route("/v1/admin/tenants/{tenant_id}/keys", admin.create_key, methods=["POST"]),
        Route("/v1/admin/tenants/{tenant_id}/keys", admin.list_keys, methods=["GET"]),
        Route("/v1/admin/keys/{key_id}", admin.revoke_key, methods=["DELETE"]),
        Route("/v1/admin/tenants/{tenant_id}/cache", invalidate_cache, methods=["DELETE"]),
        WebSocketRoute("/ws/task_updates", tasks.task_updates),
        WebSocketRoute("/v1/tasks/stream", tasks.task_stream),
        *openai.routes(),  # the OpenAI-compatible door (services/orchestrator/openai/)
        *agui.routes(),  # the AG-UI door (services/orchestrator/agui/)
        *a2a.routes(),  # the A2A door (services/orchestrator/a2a/)
    ]
