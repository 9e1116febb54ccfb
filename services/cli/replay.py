"""`agentstream replay`: an execution or a session through the API, or a topic range straight from Kafka."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any

import typer

from services.cli.base import DEFAULT_KEY, DEFAULT_URL, ApiKey, Url, console, fail, group

replay_app = group("replay", "Replay an execution, a session, or a topic range.")


def _replay(items: Any, *, as_json: bool, url: str) -> None:
    import httpx

    from services.cli.api import unreachable
    from services.cli.render import Transcript
    from services.replay import ReplayError, write_json_line

    transcripts: dict[str, Transcript] = {}  # a session's executions may interleave

    async def main() -> None:
        async for item in items:
            if as_json:
                write_json_line(item)
                continue
            transcript = transcripts.setdefault(item["execution_id"], Transcript())
            for line in transcript.apply(item["event"], cursor=item.get("cursor")):
                console.print(line, highlight=False, soft_wrap=True)
            if transcript.outcome is not None:
                console.print(transcript.summary(), highlight=False, soft_wrap=True)

    try:
        asyncio.run(main())
    except ReplayError as exc:
        fail(str(exc))
    except (httpx.HTTPError, OSError) as exc:  # the WebSocket of a session replay raises OSError
        fail(str(unreachable(url, exc)) if isinstance(exc, httpx.HTTPError) else f"cannot reach agentstream at {url} ({exc})")


@replay_app.command("execution")
def replay_execution(
    execution_id: str,
    cursor: Annotated[int | None, typer.Option(help="Only events after this cursor.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of rendering.")] = False,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = DEFAULT_KEY,
) -> None:
    """Replay one execution's events (finished or live) through the API."""
    from services.replay import execution_events

    _replay(execution_events(url, api_key, execution_id, cursor=cursor), as_json=as_json, url=url)


@replay_app.command("session")
def replay_session(
    session_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of rendering.")] = True,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = DEFAULT_KEY,
) -> None:
    """Replay every execution of a session, then follow it until it is idle."""
    from services.replay import session_events

    _replay(session_events(url, api_key, session_id), as_json=as_json, url=url)


@replay_app.command("topic")
def replay_topic(
    topic: Annotated[str, typer.Option(help="Topic name without the prefix, e.g. executions.events.")] = "executions.events",
    group: Annotated[str | None, typer.Option(help="Your own consumer group: offsets are committed, reruns go on.")] = None,
    from_beginning: Annotated[bool, typer.Option(help="Start at the earliest retained record.")] = False,
    from_time: Annotated[datetime | None, typer.Option(help="Start at this time (ISO 8601).")] = None,
    limit: Annotated[int | None, typer.Option(help="Stop after this many records.")] = None,
) -> None:
    """Read a topic range straight from Kafka as JSON lines (the consumer-group pattern)."""
    from services.common.settings import KafkaSettings
    from services.replay import topic_records

    kafka = KafkaSettings()
    records = topic_records(
        kafka=kafka,
        topic=kafka.topic_prefix + topic,
        group_id=group,
        from_beginning=from_beginning,
        from_time=from_time,
        limit=limit,
    )
    from services.replay import ReplayError, write_json_line

    async def main() -> None:
        async for record in records:
            write_json_line(record)

    try:
        asyncio.run(main())
    except ReplayError as exc:
        fail(str(exc))
