"""Every Kafka record the services write carries headers (CloudEvents among them): a send without
``headers=`` would write a record no CloudEvents consumer can read. Checked on the source, so a send
added later cannot skip it unnoticed."""

from __future__ import annotations

import ast
from pathlib import Path

SERVICES = Path(__file__).resolve().parents[2] / "services"


def _receiver(node: ast.expr) -> str:
    return ast.unparse(node).lower()


def _sends_without_headers() -> list[str]:
    found = []
    for path in sorted(SERVICES.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            method, receiver = node.func.attr, _receiver(node.func.value)
            if method not in ("send", "send_and_wait") or "producer" not in receiver or receiver == "super()":
                continue
            if not any(keyword.arg == "headers" for keyword in node.keywords):
                found.append(f"{path.relative_to(SERVICES.parent)}:{node.lineno}: {ast.unparse(node.func)}(...)")
    return found


def test_every_producer_send_in_the_services_passes_headers() -> None:
    assert _sends_without_headers() == []


def test_the_check_sees_the_sends() -> None:
    # It must find the sends it checks: the emitter's, the DLQ's, the lifecycle's at least.
    sends = 0
    for path in SERVICES.rglob("*.py"):
        sends += sum(
            1
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("send", "send_and_wait")
            and "producer" in _receiver(node.func.value)
        )
    assert sends >= 10
