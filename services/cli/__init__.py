"""The ``agentstream`` command line: it only wires the services together (and renders).

One module per concern: ``base`` (the app, errors), ``kafka``, ``serve`` (the services and ``up``),
``client`` (daily use over HTTP: run, ls, status, attach, cancel, sessions, agents), ``replay``,
``admin`` (tenants and keys), ``contracts`` (docs, schemas), ``ingress``, ``demo`` (and bench).
"""

from __future__ import annotations

from services.cli import admin, client, contracts, demo, ingress, kafka, replay, serve
from services.cli.base import app

__all__ = ["admin", "app", "client", "contracts", "demo", "ingress", "kafka", "replay", "serve"]
