"""Daily use over the HTTP API: `run`, `ls`, `status`, `attach`, `cancel`, `sessions`, `agents`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Annotated, Any

import orjson
import typer
from rich.table import Table

from services.cli.api import Api
from services.cli.base import DEFAULT_KEY, DEFAULT_URL, ApiKey, CliError, Url, app, console, err, fail, prog
from services.cli.prompt import Asker, interactive
from services.cli.render import Transcript, render_stream

Json = Annotated[bool, typer.Option("--json", help="JSON (lines, for a stream) instead of rendering.")]
Priority = Annotated[str, typer.Option(help="critical | standard | batch")]
CANCEL_WINDOW_S = 2.0  # after a first Ctrl-C, a second one within this cancels the execution


def _variables(pairs: list[str] | None) -> dict[str, Any]:
    """``--var k=v``: v as JSON when it is JSON (``--var order='{"id": 7}'``, ``--var n=3``), else the string."""
    out: dict[str, Any] = {}
    for pair in pairs or ():
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            fail(f"--var {pair!r}: write it as NAME=VALUE (e.g. --var customer=Ada)")
        try:
            out[name] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            out[name] = raw
    return out


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


def _run_async(main: Callable[[], Coroutine[Any, Any, int]]) -> None:
    raise typer.Exit(asyncio.run(main()))


async def _follow(api: Api, execution_id: str, *, cursor: int | None, as_json: bool, transcript: Transcript, announce: bool = False) -> int:
    """Render (or print as JSON lines) the stream until it ends. Ctrl-C detaches with the commands to
    attach again or cancel; a second Ctrl-C within CANCEL_WINDOW_S cancels the execution."""
    items = api.events(execution_id, cursor=cursor)

    async def json_lines() -> Transcript:
        async with contextlib.aclosing(items):
            async for item in items:
                transcript.apply(item["event"], cursor=item.get("cursor"))
                sys.stdout.write(orjson.dumps(item).decode() + "\n")
                sys.stdout.flush()
                if transcript.outcome is not None:
                    break
        return transcript

    # A person at the terminal is asked y/n on an approval request and answers questions in the stream.
    ask = Asker(api, execution_id) if interactive() else None
    stream = asyncio.ensure_future(json_lines() if as_json else render_stream(console, items, transcript, ask=ask))
    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, interrupted.set)
    if announce:  # once Ctrl-C is ours: a user who sees the id may press it
        err.print(f"[dim]execution {execution_id}[/]", highlight=False, soft_wrap=True)
    try:
        waiter = asyncio.ensure_future(interrupted.wait())
        done, _ = await asyncio.wait({stream, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if stream in done:
            stream.result()
            return 0 if transcript.succeeded else 1
        stream.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stream
        interrupted.clear()
        resume = f" --cursor {transcript.cursor}" if transcript.cursor is not None else ""
        err.print(
            f"\n[yellow]detached:[/] execution {execution_id} goes on. Attach again: `{prog()} attach {execution_id}{resume}`; "
            f"cancel: `{prog()} cancel {execution_id}` (or press Ctrl-C again now)",
            soft_wrap=True,
            highlight=False,
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(interrupted.wait(), CANCEL_WINDOW_S)
            answer = await api.call("POST", f"/v1/executions/{execution_id}/cancel", what=f"execution {execution_id}")
            err.print(f"cancel requested ({answer['status']})" if answer["cancel_requested"] else f"already {answer['status']}")
        return 130
    finally:
        loop.remove_signal_handler(signal.SIGINT)


@app.command()
def run(
    prompt: str,
    agent: Annotated[str, typer.Option(help="Agent name (`agentstream agents` lists them).")] = "default",
    var: Annotated[list[str] | None, typer.Option("--var", help="A prompt variable NAME=VALUE (repeatable; VALUE may be JSON).")] = None,
    session: Annotated[
        str | None, typer.Option(help="Send the prompt as a message of this session (its history goes with it); `new` makes one.")
    ] = None,
    priority: Priority = "standard",
    detach: Annotated[bool, typer.Option(help="Submit, print the id and return; `attach` follows it later.")] = False,
    as_json: Json = False,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = DEFAULT_KEY,
) -> None:
    """Submit an execution, then render its stream live: tokens as they come, tool calls as they run."""

    async def main() -> int:
        async with Api(url, api_key) as api:
            transcript = Transcript()
            execution_id, accepted = await _submit(api, prompt, agent=agent, variables=_variables(var), session=session, priority=priority)
            if detach:
                if as_json:
                    _print_json(accepted)
                else:
                    console.print(execution_id, highlight=False)
                    err.print(
                        f"follow it: `{prog()} attach {execution_id}`; its state: `{prog()} status {execution_id}`",
                        highlight=False,
                        soft_wrap=True,
                    )
                return 0
            return await _follow(api, execution_id, cursor=None, as_json=as_json, transcript=transcript, announce=not as_json)

    _run_async(main)


async def _submit(
    api: Api, prompt: str, *, agent: str, variables: dict[str, Any], session: str | None, priority: str
) -> tuple[str, dict[str, Any]]:
    if session is None:
        body = {"input": prompt, "agent": agent, "priority": priority, "variables": variables}
        accepted = await api.call("POST", "/v1/executions", json=body)
        return str(accepted["execution_id"]), accepted
    if session == "new":
        session = str((await api.call("POST", "/v1/sessions", json={"agent": agent}))["session_id"])
        err.print(f"session {session} (go on with --session {session})", highlight=False, soft_wrap=True)
    message = {"content": prompt, "priority": priority, "variables": variables}
    accepted = await api.call("POST", f"/v1/sessions/{session}/chat", json=message, what=f"session {session}")
    if accepted["execution_id"] is None:
        fail(f"the message waits in session {session} behind the running execution; `{prog()} ls --session {session}` shows it")
    return str(accepted["execution_id"]), accepted


@app.command()
def attach(
    execution_id: str,
    cursor: Annotated[int | None, typer.Option(help="Only events after this cursor (the one Ctrl-C printed).")] = None,
    as_json: Json = False,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = DEFAULT_KEY,
) -> None:
    """Follow an execution (running or finished) from its start, or after --cursor."""

    async def main() -> int:
        async with Api(url, api_key) as api:
            return await _follow(api, execution_id, cursor=cursor, as_json=as_json, transcript=Transcript())

    _run_async(main)


@app.command()
def cancel(execution_id: str, url: Url = DEFAULT_URL, api_key: ApiKey = DEFAULT_KEY) -> None:
    """Cancel an execution (one that has not started yet is cancelled at once)."""

    async def main() -> int:
        async with Api(url, api_key) as api:
            try:
                answer = await api.call("POST", f"/v1/executions/{execution_id}/cancel", what=f"execution {execution_id}")
            except CliError as exc:
                if "(HTTP 409)" in str(exc):
                    view = await api.call("GET", f"/v1/executions/{execution_id}", what=f"execution {execution_id}")
                    fail(f"execution {execution_id} already ended ({view['status']}): nothing to cancel")
                raise
        console.print(f"cancel requested ({answer['status']})" if answer["cancel_requested"] else f"already {answer['status']}")
        return 0

    _run_async(main)


def _decide(execution_id: str, call_id: str, body: dict[str, Any], url: str, api_key: str) -> None:
    async def main() -> int:
        async with Api(url, api_key) as api:
            answer = await api.call(
                "POST", f"/v1/executions/{execution_id}/approvals/{call_id}", json=body, what=f"tool call {call_id} of {execution_id}"
            )
        verdict = "approved" if answer["decision"] == "approve" else "rejected"
        console.print(f"call {call_id} {verdict}" + (f": {answer['reason']}" if answer.get("reason") else ""))
        return 0

    _run_async(main)


@app.command()
def approve(
    execution_id: str,
    call_id: str,
    arguments: Annotated[str | None, typer.Option(help="Run the call with these arguments instead (a JSON object)")] = None,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = DEFAULT_KEY,
) -> None:
    """Approve a tool call an execution waits for (optionally with edited arguments)."""
    body: dict[str, Any] = {"decision": "approve"}
    if arguments is not None:
        try:
            body["arguments"] = json.loads(arguments)
        except json.JSONDecodeError as exc:
            fail(f"--arguments is not JSON: {exc}")
    _decide(execution_id, call_id, body, url, api_key)


@app.command()
def reject(
    execution_id: str,
    call_id: str,
    reason: Annotated[str, typer.Option(help="What the model is told")] = "",
    url: Url = DEFAULT_URL,
    api_key: ApiKey = DEFAULT_KEY,
) -> None:
    """Reject a tool call an execution waits for: it never runs; the model reads the reason."""
    _decide(execution_id, call_id, {"decision": "reject", "reason": reason}, url, api_key)


@app.command()
def answer(
    execution_id: str,
    call_id: str,
    text: str,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = DEFAULT_KEY,
) -> None:
    """Answer a question an execution's agent asked (``input.requested``): it goes on with the answer."""

    async def main() -> int:
        async with Api(url, api_key) as api:
            await api.call(
                "POST", f"/v1/executions/{execution_id}/inputs/{call_id}", json={"text": text}, what=f"question {call_id} of {execution_id}"
            )
        console.print(f"answered {call_id}")
        return 0

    _run_async(main)


@app.command()
def status(execution_id: str, as_json: Json = False, url: Url = DEFAULT_URL, api_key: ApiKey = DEFAULT_KEY) -> None:
    """An execution's state, output, error and usage."""

    async def main() -> int:
        async with Api(url, api_key) as api:
            view = await api.call("GET", f"/v1/executions/{execution_id}", what=f"execution {execution_id}")
        if as_json:
            _print_json(view)
            return 0
        usage = view.get("usage") or {}
        fields = [
            ("execution", view["execution_id"]),
            ("status", view["status"]),
            ("agent", view["agent"]),
            ("session", view.get("session_id")),
            ("attempt", view["attempt"]),
            ("created", _when(view["created_at"])),
            ("updated", _when(view["updated_at"])),
            ("tokens", f"{usage.get('prompt_tokens', 0)} in / {usage.get('completion_tokens', 0)} out" if usage else None),
            ("error", view.get("error")),
            ("output", view.get("output")),
        ]
        for name, value in fields:
            if value not in (None, ""):
                console.print(f"[bold]{name:>9}[/] {value}", highlight=False, soft_wrap=True)
        return 0

    _run_async(main)


def _table(*columns: str) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")  # ids are copied from here: never cut
    return table


def _when(iso: str | None) -> str:
    if not iso:
        return ""
    return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M:%S")


@app.command("ls")
def list_executions(
    status: Annotated[
        str | None, typer.Option(help="States, comma-separated: queued,running,waiting,completed,failed,cancelled,timed_out")
    ] = None,
    agent: Annotated[str | None, typer.Option(help="Only this agent's.")] = None,
    session: Annotated[str | None, typer.Option(help="Only this session's.")] = None,
    batch: Annotated[str | None, typer.Option(help="Only this batch's.")] = None,
    since: Annotated[str | None, typer.Option(help="Created at or after (ISO time with a zone, or unix seconds).")] = None,
    limit: Annotated[int, typer.Option(help="At most this many (1-200).")] = 20,
    cursor: Annotated[str | None, typer.Option(help="The next page: the cursor the last page printed.")] = None,
    as_json: Json = False,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = DEFAULT_KEY,
) -> None:
    """Your executions, newest first."""
    params = {"status": status, "agent": agent, "session_id": session, "batch_id": batch, "since": since, "limit": limit, "cursor": cursor}

    async def main() -> int:
        async with Api(url, api_key) as api:
            page = await api.call("GET", "/v1/executions", params={k: v for k, v in params.items() if v is not None})
        if as_json:
            _print_json(page)
            return 0
        table = _table("execution", "status", "agent", "created", "tokens")
        table.add_column("input", overflow="ellipsis", no_wrap=True)
        for row in page["executions"]:
            usage = row.get("usage") or {}
            style = {
                "completed": "green",
                "failed": "red",
                "running": "cyan",
                "waiting": "magenta",
                "cancelled": "yellow",
                "timed_out": "red",
            }.get(row["status"])
            table.add_row(
                row["execution_id"],
                f"[{style}]{row['status']}[/]" if style else row["status"],
                row["agent"],
                _when(row["created_at"]),
                str(usage.get("total_tokens", "")),
                (row.get("input_preview") or "").replace("\n", " "),
            )
        console.print(table) if page["executions"] else console.print("no executions yet")
        if page.get("next_cursor"):
            err.print(f"[dim]more: `{prog()} ls --cursor {page['next_cursor']}`[/]", highlight=False, soft_wrap=True)
        return 0

    _run_async(main)


@app.command()
def sessions(
    agent: Annotated[str | None, typer.Option(help="Only this agent's.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many (1-200).")] = 20,
    as_json: Json = False,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = DEFAULT_KEY,
) -> None:
    """Your sessions, newest first (`run --session ID` goes on with one)."""

    async def main() -> int:
        async with Api(url, api_key) as api:
            page = await api.call("GET", "/v1/sessions", params={"limit": limit, **({"agent": agent} if agent else {})})
        if as_json:
            _print_json(page)
            return 0
        table = _table("session", "agent", "state", "policy", "created")
        for s in page["sessions"]:
            table.add_row(s["session_id"], s["agent"], s["state"], s["policy"], _when(s["created_at"]))
        console.print(table) if page["sessions"] else console.print(f'no sessions yet: `{prog()} run --session new "..."` starts one')
        return 0

    _run_async(main)


@app.command()
def agents(as_json: Json = False, url: Url = DEFAULT_URL, api_key: ApiKey = DEFAULT_KEY) -> None:
    """The agents you can run, with the variables their prompts need (`run --var NAME=VALUE`)."""

    async def main() -> int:
        async with Api(url, api_key) as api:
            page = await api.call("GET", "/v1/agents")
        if as_json:
            _print_json(page)
            return 0
        table = _table("agent", "model", "tools", "variables")
        for a in page["agents"]:
            table.add_row(a["name"], f"{a['provider']}/{a['model']}", ", ".join(a["tools"]), ", ".join(a["variables"]) or "-")
        console.print(table)
        return 0

    _run_async(main)
