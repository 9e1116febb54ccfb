"""The bridge service (services/orchestrator/bridgeapp.py) without a broker: what it imports, what it serves."""

from __future__ import annotations

import subprocess
import sys

from starlette.routing import Route, WebSocketRoute
from typer.testing import CliRunner

from services.cli import app as cli
from services.orchestrator.bridgeapp import create_bridge_app
from services.orchestrator.settings import OrchestratorSettings

# The orchestrator's runtime: what the fan-out must run without (it is scaled apart from the API).
RUNTIME = ("runtime", "lifecycle", "limits", "callbacks", "coordinator", "completions", "ingress", "taskfeed", "executions", "routes")


def test_the_bridge_service_imports_none_of_the_orchestrator_runtime() -> None:
    code = "import sys, services.orchestrator.bridgeapp; print(' '.join(m for m in sys.modules if m.startswith('services.')))"
    loaded = set(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split())
    assert "services.orchestrator.streaming" in loaded and "services.orchestrator.auth" in loaded
    assert sorted(m for m in loaded if m.rsplit(".", 1)[-1] in RUNTIME) == []
    assert not any(m.startswith(("services.executor", "services.orchestrator.openai")) for m in loaded)


def test_the_bridge_service_serves_only_the_fan_out() -> None:
    app = create_bridge_app(OrchestratorSettings())
    http = {(r.path, m) for r in app.routes if isinstance(r, Route) for m in (r.methods or ()) if m != "HEAD"}
    ws = {r.path for r in app.routes if isinstance(r, WebSocketRoute)}
    assert http == {
        ("/health/live", "GET"),
        ("/health/ready", "GET"),
        ("/v1/executions/{execution_id}/events", "GET"),
        ("/metrics", "GET"),
    }
    assert ws == {"/v1/stream"}


def test_agentstream_bridge_is_a_command() -> None:
    result = CliRunner().invoke(cli, ["bridge", "--help"])
    assert result.exit_code == 0, result.output
    assert "fan-out" in result.output and "--port" in result.output
