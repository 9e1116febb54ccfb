"""Live terminal rendering of one execution's stream (used by `agentstream run`)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import orjson
import websockets
from rich.console import Console

TERMINAL = {"execution.completed", "execution.failed", "execution.cancelled"}


async def stream_execution(console: Console, *, url: str, api_key: str, prompt: str, agent: str, priority: str) -> bool:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        response = await client.post(
            "/v1/executions",
            json={"input": prompt, "agent": agent, "priority": priority},
            headers={"Authorization": f"Bearer {api_key}"},
        )
    if response.status_code != 202:
        console.print(f"[bold red]rejected ({response.status_code}):[/] {response.text}")
        return False
    execution_id = response.json()["execution_id"]
    console.print(f"[dim]execution {execution_id} accepted[/]")
    ws_url = url.replace("http", "ws", 1) + "/v1/stream"
    async with websockets.connect(ws_url, additional_headers={"Authorization": f"Bearer {api_key}"}) as ws:
        await ws.send(orjson.dumps({"type": "subscribe", "execution_id": execution_id}).decode())
        async for raw in ws:
            frame = orjson.loads(raw)
            if frame["type"] == "error":
                console.print(f"[bold red]error:[/] {frame['error']}")
                return False
            for item in frame.get("events", ()):
                done = render_event(console, item["event"])
                if done is not None:
                    return done
    return False


def render_event(console: Console, event: dict[str, Any]) -> bool | None:
    kind = event["type"]
    if kind == "token.delta":
        console.print(event["text"], end="", highlight=False, soft_wrap=True)
    elif kind == "execution.started":
        attempt = f" (attempt {event['attempt']})" if event["attempt"] > 1 else ""
        console.print(f"[dim]started on {event['provider']}/{event['model']}{attempt}[/]")
    elif kind == "tool.call.started":
        console.print(f"\n[cyan]⚙ {event['tool']}[/]([dim]{json.dumps(event['arguments'])}[/]) …")
    elif kind == "tool.call.completed":
        if event.get("error"):
            console.print(f"[red]✗ {event['tool']} failed:[/] {event['error']}")
        else:
            console.print(f"[green]✓ {event['tool']}[/] → {json.dumps(event['result'])} [dim]({event['duration_ms']:.0f} ms)[/]")
    elif kind == "execution.completed":
        usage = event.get("usage") or {}
        console.print(f"\n[green]✓ completed[/] [dim]tokens: {usage.get('total_tokens', 0)} total[/]")
        return True
    elif kind == "execution.failed":
        console.print(f"\n[bold red]✗ failed:[/] {event['reason']}")
        return False
    elif kind == "execution.cancelled":
        console.print(f"\n[yellow]cancelled:[/] {event.get('reason', '')}")
        return False
    return None
