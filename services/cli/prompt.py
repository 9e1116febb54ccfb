"""Asking the person at the terminal while a stream waits (issue 16): y/n on an approval request
(n asks the reason the model is told), the answer to an agent's question; each posted through the
decision endpoints. Used only when stdin is a TTY: piped, the stream prints the commands instead.

Lines are read from stdin through the event loop (``add_reader``), not a thread: a Ctrl-C (the
stream's own SIGINT handler) or the end of the stream cancels a pending question cleanly.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from services.cli.api import Api
from services.cli.base import CliError, console, err

SETTLE_POLLS, SETTLE_POLL_S = 300, 0.1  # at most ~30 s for the waiting snapshot to follow its event
ENDED = {"completed", "failed", "cancelled", "timed_out"}
MAX_LINE_BYTES = 64 * 1024  # one answer; the API bounds what it accepts (schemas/bounds.py)


def interactive() -> bool:
    return sys.stdin.isatty()


async def read_line(prompt: str) -> str | None:
    """One line from stdin (None at its end), without blocking the loop."""
    console.print(prompt, end="", markup=False, highlight=False, soft_wrap=True)
    console.file.flush()
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()
    line = bytearray()
    while not line.endswith(b"\n"):
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, _set, ready)
        try:
            await ready
        finally:
            loop.remove_reader(fd)
        chunk = os.read(fd, 4096)
        if not chunk:
            return line.decode(errors="replace") if line else None
        line += chunk
        if len(line) > MAX_LINE_BYTES:
            break
    return line.decode(errors="replace").rstrip("\r\n")


def _set(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


class Asker:
    """Called by the renderer on each approval request or question of one execution."""

    def __init__(self, api: Api, execution_id: str) -> None:
        self._api = api
        self._execution_id = execution_id

    async def __call__(self, event: dict[str, Any]) -> None:
        if not await self._still_waits(int(event.get("attempt") or 0)):
            return  # a replayed request (attach to an execution that went on): not asked again
        call_id = str(event.get("call_id", ""))
        if event.get("type") == "input.requested":
            text = await read_line("your answer: ")
            if text is None:
                return  # stdin ended: the question stays open (the line above says how to answer)
            await self._post(f"inputs/{call_id}", {"text": text}, call_id)
            return
        while True:
            answer = await read_line(f"approve {event.get('tool')} (call {call_id})? [y/n] ")
            if answer is None:
                return
            choice = answer.strip().lower()
            if choice in ("y", "yes"):
                await self._post(f"approvals/{call_id}", {"decision": "approve"}, call_id)
                return
            if choice in ("n", "no"):
                reason = await read_line("reason (the model reads it; empty for none): ")
                await self._post(f"approvals/{call_id}", {"decision": "reject", "reason": (reason or "").strip()}, call_id)
                return

    async def _still_waits(self, attempt: int) -> bool:
        """Whether the execution still waits on the request of ``attempt``. The waiting snapshot
        follows the request event by a moment (the attempt parks after announcing it), so a view
        still ``running`` that attempt is polled (bounded; past the bound, asked: a late decision gets
        the API's answer). A later attempt or an end means it went on (a request replayed by attach)."""
        for _ in range(SETTLE_POLLS):
            view = await self._api.call("GET", f"/v1/executions/{self._execution_id}", what=f"execution {self._execution_id}")
            state, now = str(view.get("status")), int(view.get("attempt") or 0)
            if now > attempt or state in ENDED:
                return False
            if state == "waiting":
                return True
            await asyncio.sleep(SETTLE_POLL_S)
        return True

    async def _post(self, path: str, body: dict[str, Any], call_id: str) -> None:
        try:
            await self._api.call("POST", f"/v1/executions/{self._execution_id}/{path}", json=body, what=f"call {call_id}")
        except CliError as exc:  # decided meanwhile (409), or gone: say so, the stream goes on
            err.print(f"[yellow]not sent:[/] {exc}", highlight=False, soft_wrap=True)
