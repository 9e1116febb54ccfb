"""Starting a run's step, and reading how it ended. Each step is an ordinary task of the registry
whose id derives from the run's id and the step's name (``step_task_id``): an agent step is an
execution (through the lanes and an executor, with its own deadline, slot and usage), a job step a
job delegated to the Query or Embedding service (a task row with its deadline; it ends through
``/ws/task_updates`` or ``jobs.completed`` like a delegated job). Starting twice is idempotent: a
step whose execution the status view knows, or whose job row exists, is not submitted again."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import ValidationError

from schemas.events import MAX_INPUT_CHARS
from schemas.jobs import SERVICE_INPUTS
from schemas.workflows import MAX_STEP_OUTPUT_CHARS, RunRecord, StepRecord, StepSpec
from services.common.errors import InvalidInput
from services.orchestrator.serviceerrors import ServiceError
from services.orchestrator.store import tasks
from services.orchestrator.submission import Submission
from services.orchestrator.validation import first_error
from services.orchestrator.workflows.graph import outputs
from services.orchestrator.workflows.templates import TemplateError, render, render_value

if TYPE_CHECKING:
    from services.orchestrator.coordinator import ServiceCoordinator
    from services.orchestrator.lifecycle import Lifecycle

log = logging.getLogger(__name__)

RUN_PREFIX = "wf_"


class StepRefused(InvalidInput):
    """The step cannot start (a template, the service, the input): it fails with this reason."""


def step_task_id(run_id: str, step: str) -> str:
    return f"{run_id}.{step}"


def run_of_task(task_id: str) -> tuple[str, str] | None:
    """(run id, step name) of a step's task id; None for any other task."""
    if not task_id.startswith(RUN_PREFIX) or "." not in task_id:
        return None
    run_id, _, step = task_id.rpartition(".")
    return run_id, step


def agent_label(run: RunRecord) -> str:
    return f"workflow:{run.spec.name}"


def rendered_input(run: RunRecord, step: StepSpec) -> str:
    try:
        return render(step.input, input=run.input, steps=outputs(run), max_chars=MAX_INPUT_CHARS)
    except TemplateError as exc:
        raise StepRefused(str(exc)) from exc


async def start_agent(lc: Lifecycle, run: RunRecord, step: StepSpec, *, text: str) -> None:
    task_id = step_task_id(run.run_id, step.name)
    if task_id in lc.status:
        return  # submitted before (a rebuilt driver): the deterministic id makes it once
    assert step.agent is not None
    sub = Submission(
        tenant_id=run.tenant_id,
        agent_id=step.agent,
        input=text,
        priority=run.spec.priority,
        variables=dict(run.variables),
        session_id=run.run_id,  # a label: `subscribe {session_id: run id}` follows every step's own events
        origin="workflow",
        execution_id=task_id,
        timeout_s=step.timeout_s,
    )
    await lc.submit([sub])


async def take_slot(lc: Lifecycle, run: RunRecord, step: StepSpec) -> bool:
    """An agent step takes one of the tenant's concurrency slots, like any execution (finalize gives it back)."""
    if step.agent is None:
        return True
    timeout = step.timeout_s or lc.settings.execution_timeout_s
    retry = await lc.limiter.acquire_slot(run.tenant_id, step_task_id(run.run_id, step.name), run.concurrent, timeout)
    return retry is None


def job_payload(run: RunRecord, step: StepSpec) -> dict[str, Any]:
    assert step.job is not None
    try:
        payload = render_value(dict(step.payload), input=run.input, steps=outputs(run), max_chars=MAX_INPUT_CHARS)
        SERVICE_INPUTS[step.job].model_validate(payload)
    except TemplateError as exc:
        raise StepRefused(str(exc)) from exc
    except ValidationError as exc:
        raise StepRefused(f"invalid {step.job} input: {first_error(exc)}") from exc
    return dict(payload)


async def start_job(lc: Lifecycle, coordinator: ServiceCoordinator, run: RunRecord, step: StepSpec, payload: dict[str, Any]) -> None:
    """Register the job (once) and delegate it; a refusal by the service ends the job ``failed``."""
    assert step.job is not None
    task_id = step_task_id(run.run_id, step.name)
    client = coordinator.clients.get(step.job)
    timeout = min(step.timeout_s or lc.settings.delegated_job_timeout_s, lc.settings.delegated_job_timeout_s)
    deadline = time.time() + timeout
    async with lc.store.begin() as conn:
        if await tasks.get(conn, task_id) is not None:
            return
        await tasks.create(
            conn,
            id=task_id,
            kind="job",
            origin="workflow",
            tenant_id=run.tenant_id,
            agent_id=agent_label(run),
            service=step.job,
            session_id=run.run_id,
            deadline=deadline,
        )
    if client is None:
        await lc.finalize(task_id, "failed", error=f"the {step.job} service is not configured (set AGENTSTREAM_{step.job.upper()}_SERVICE)")
        return
    try:
        await client.submit(job_id=task_id, tenant_id=run.tenant_id, payload=payload, deadline=deadline)
    except ServiceError as exc:
        await lc.finalize(task_id, "failed", error=str(exc))
        return
    async with lc.store.begin() as conn:
        await tasks.mark_running(conn, task_id)


async def ended(lc: Lifecycle, run: RunRecord, step: StepSpec, rec: StepRecord) -> StepRecord | None:
    """The step's record once its task ended (the registry's row, else the status view's end); None
    while it runs. ``rec.task_id`` unknown to both: not submitted (a driver that stopped in between)."""
    assert rec.task_id is not None
    async with lc.store.begin() as conn:
        row = await tasks.get(conn, rec.task_id, tenant_id=run.tenant_id)
    now = time.time()
    if row is not None and not row.open:
        if row.kind == "job":
            error = row.error
            check = lc.result_checks.get(row.service or "")
            if row.state == "completed" and not error and check is not None:
                error = check(row.result)
            if error and row.state == "completed":
                return rec.model_copy(update={"state": "failed", "error": error, "ended_at": now})
            text, result = job_output(row.result)
            return rec.model_copy(update={"state": row.state, "output": text, "result": result, "error": error, "ended_at": now})
        return rec.model_copy(update={"state": row.state, "output": _bounded(row.output), "error": row.error, "ended_at": now})
    status = lc.status.get(rec.task_id)
    if row is None and status is not None and status.terminal and step.agent is not None:
        return rec.model_copy(update={"state": status.state, "output": _bounded(status.output), "error": status.error, "ended_at": now})
    return None


def job_output(result: Any) -> tuple[str, Any]:
    """A job's text (a query's answer; a count of embeddings) and its result, if small enough to keep."""
    if isinstance(result, dict) and isinstance(result.get("answer"), str):
        text = result["answer"]
    elif isinstance(result, dict) and isinstance(result.get("embeddings"), list):
        vectors = result["embeddings"]
        text = f"{len(vectors)} embeddings of {len(vectors[0]) if vectors and isinstance(vectors[0], list) else 0} dimensions"
    else:
        text = orjson.dumps(result).decode()
    kept = result if len(orjson.dumps(result)) <= MAX_STEP_OUTPUT_CHARS else None
    return _bounded(text) or "", kept


def _bounded(text: str | None) -> str | None:
    return text[:MAX_STEP_OUTPUT_CHARS] if text is not None else None
