"""Long-lived services re-execute once on the C allocator (serve.system_allocator), unless told not to."""

from __future__ import annotations

import os
import sys

import pytest

from services.cli import serve


def _exec_calls(monkeypatch: pytest.MonkeyPatch, argv0: str, env: dict[str, str]) -> list[list[str]]:
    calls: list[list[str]] = []
    monkeypatch.setattr(os, "execv", lambda path, args: calls.append([path, *args]))
    monkeypatch.setattr(sys, "argv", [argv0, "orchestrator"])
    monkeypatch.setattr(sys, "orig_argv", [sys.executable, argv0, "orchestrator", "--port", "1"])
    for name in ("PYTHONMALLOC", "AGENTSTREAM_PYMALLOC"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    serve.system_allocator()
    return calls


def test_the_console_script_re_executes_itself_on_malloc_with_the_same_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _exec_calls(monkeypatch, "/venv/bin/agentstream", {})
    assert calls == [[sys.executable, sys.executable, "/venv/bin/agentstream", "orchestrator", "--port", "1"]]
    assert os.environ["PYTHONMALLOC"] == "malloc"  # what the new image starts with: no second exec


@pytest.mark.parametrize("env", [{"PYTHONMALLOC": "pymalloc"}, {"AGENTSTREAM_PYMALLOC": "1"}])
def test_a_chosen_allocator_is_kept(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    assert _exec_calls(monkeypatch, "/venv/bin/agentstream", env) == []


def test_a_process_that_is_not_the_console_script_never_re_executes(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _exec_calls(monkeypatch, "/venv/bin/pytest", {}) == []
