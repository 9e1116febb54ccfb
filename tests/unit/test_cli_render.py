"""The CLI's stream fold (services/cli/render.py) and the calm log filter of `agentstream up`."""

from __future__ import annotations

import io
import logging
from typing import Any, Literal

from rich.console import Console

from services.cli.render import Transcript
from services.common.observability.calm import CalmFilter


def _printed(transcript: Transcript, events: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None)
    for cursor, event in enumerate(events):
        for line in transcript.apply(event, cursor=cursor):
            console.print(line)
    return out.getvalue()


def test_text_a_restart_voids_is_taken_back_and_tool_cards_keep_stream_order() -> None:
    transcript = Transcript()
    printed = _printed(
        transcript,
        [
            {"type": "execution.started", "attempt": 1, "provider": "openai", "model": "m"},
            {"type": "token.delta", "text": "Let me compute.", "step": 0},
            {"type": "tool.call.started", "tool": "calculator", "arguments": {"expression": "6*7"}},
            {"type": "tool.call.completed", "tool": "calculator", "result": 42, "duration_ms": 3},
            {"type": "token.delta", "text": "VOIDED HALF ANSWER", "step": 1},
            {"type": "execution.restarted", "step": 1, "reason": "stream broke", "provider": "groq", "model": "g", "text_discarded": True},
            {"type": "token.delta", "text": "It is 42.", "step": 1},
            {"type": "execution.completed", "output": "It is 42.", "usage": {"prompt_tokens": 9, "completion_tokens": 4}},
        ],
    )
    assert "VOIDED" not in printed
    assert printed.index("Let me compute.") < printed.index("calculator") < printed.index("It is 42.")
    assert "restarted" in printed and transcript.succeeded and transcript.cursor == 7
    assert transcript.first_token_s is not None
    summary = transcript.summary().plain
    assert summary.startswith("✓ completed in ") and "first token" in summary and "tokens 9 in / 4 out" in summary


def test_a_new_attempt_starts_the_answer_again_and_a_restart_that_keeps_text_keeps_it() -> None:
    transcript = Transcript()
    printed = _printed(
        transcript,
        [
            {"type": "execution.started", "attempt": 1},
            {"type": "token.delta", "text": "from the executor that died", "step": 0},
            {"type": "execution.started", "attempt": 2},
            {"type": "token.delta", "text": "kept ", "step": 0},
            {"type": "execution.restarted", "step": 0, "text_discarded": False},
            {"type": "token.delta", "text": "and more", "step": 0},
            {"type": "execution.failed", "reason": "no provider left"},
        ],
    )
    assert "died" not in printed and "attempt 2" in printed and "kept and more" in printed
    assert not transcript.succeeded and "no provider left" in transcript.summary().plain


def _record(message: str, *, logger: str = "aiokafka", level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(logger, level, __file__, 1, message, None, None)


def test_calm_filter_says_a_kafka_outage_once_then_backs_off() -> None:
    now = [0.0]
    calm = CalmFilter(kafka_hint=": start it", clock=lambda: now[0])
    passed: list[str] = []
    for i in range(2500):  # 25 s of ten clients failing every 100 ms
        now[0] = i * 0.01
        if i % 2:
            record = _record(f'Unable connect to "127.0.0.1:{9000 + i % 10}": [Errno 111] Connect call failed')
        else:  # what consumers say about the same outage
            record = _record("Failed fetch messages from 1: NodeNotReadyError: node 1 not ready", logger="aiokafka.consumer.fetcher")
        if calm.filter(record):
            passed.append(record.getMessage())
    assert passed[0].startswith("Kafka does not answer") and passed[0].endswith("; retrying")
    assert 1 < len(passed) <= 6, passed  # 1 s, 2 s, 4 s, 8 s, 16 s gaps
    assert "held back" in passed[1] and ": start it" in passed[1]
    other = _record("a different warning", logger="services.x", level=logging.WARNING)
    assert calm.filter(other) and calm.filter(_record("info is never held", level=logging.INFO))


class _Terminal(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_up_logs_coloured_lines_on_a_terminal_and_json_elsewhere_or_when_asked(monkeypatch: Any) -> None:
    from services.common.observability.settings import TelemetrySettings, configure

    root = logging.getLogger()
    kept, level = list(root.handlers), root.level
    try:
        cases: list[tuple[bool, Literal["json"] | None, bool]] = [(True, None, False), (False, None, True), (True, "json", True)]
        for tty, asked, json_expected in cases:
            stream = _Terminal(tty)
            monkeypatch.setattr("sys.stderr", stream)
            configure("agentstream", settings=TelemetrySettings(log_format=asked), default_format="auto")
            logging.getLogger("services.test").warning("the orchestrator is up")
            line = stream.getvalue().strip()
            assert line.startswith("{") is json_expected, line
            assert ("\x1b[" in line) is not json_expected and "the orchestrator is up" in line
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in kept:
            root.addHandler(handler)
        root.setLevel(level)


def test_a_resumed_attempt_says_what_it_reused() -> None:
    printed = _printed(
        Transcript(),
        [
            {"type": "execution.started", "attempt": 1},
            {"type": "execution.started", "attempt": 2},
            {"type": "execution.resumed", "attempt": 2, "from_step": 2, "reused_calls": 1, "rerun_calls": ["c2"]},
        ],
    )
    assert "resumed from step 2: the steps above stand (1 finished tool call(s) reused, 1 interrupted one(s) run again)" in printed


def test_an_approval_request_says_how_to_decide_and_the_decision_is_shown() -> None:
    transcript = Transcript()
    printed = _printed(
        transcript,
        [
            {"type": "execution.started", "attempt": 1, "provider": "openai", "model": "m"},
            {"type": "token.delta", "text": "Booking.", "step": 0},
            {
                "type": "tool.call.approval_requested",
                "execution_id": "ex1",
                "call_id": "call_1",
                "tool": "book",
                "arguments": {"item": "A"},
                "deadline": "2026-12-01T17:00:00+00:00",
                "default": "reject",
            },
            {"type": "tool.call.approval_decided", "call_id": "call_1", "decision": "reject", "reason": "too expensive", "by": "user"},
        ],
    )
    assert printed.index("Booking.") < printed.index("approval needed: book")
    assert "agentstream approve|reject ex1 call_1" in printed
    assert "call call_1 rejected: too expensive" in printed
    assert transcript.status == "waiting for approval"


HANDOFF = {"type": "agent.handoff", "from_agent": "triage", "to_agent": "billing", "reason": "an invoice", "step": 0}


def test_a_handoff_says_who_takes_over_and_why() -> None:
    transcript = Transcript()
    printed = _printed(
        transcript,
        [
            {"type": "execution.started", "attempt": 1, "provider": "openai", "model": "m"},
            {"type": "token.delta", "text": "Let me get billing.", "step": 0},
            HANDOFF | {"provider": "groq", "model": "g"},
        ],
    )
    assert transcript.status == "billing is answering on groq/g"
    printed += _printed(
        transcript,
        [
            {"type": "token.delta", "text": "Billing here.", "step": 1},
            {"type": "execution.completed", "output": "Billing here.", "handed_off_to": "billing"},
        ],
    )
    assert "⇄ handed off from triage to billing: an invoice" in printed
    assert printed.index("Let me get billing.") < printed.index("handed off") < printed.index("Billing here.")
