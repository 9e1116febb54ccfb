"""Which agent a session may be addressed by after handoffs (issue 20).

A handoff makes its target the session's agent (finalize.py). The AG-UI and A2A doors name the agent
in the path and check that the thread or context runs it; after a handoff the session runs the
target, yet the client still addresses the agent it started with. So a door accepts an agent whose
handoffs (directly or through a chain) reach the session's agent, and the message runs the
session's agent: the conversation continues where the handoff left it.
"""

from __future__ import annotations

from collections.abc import Mapping

from schemas.agents import AgentSpec


def addressable(agents: Mapping[str, AgentSpec], addressed: str, current: str) -> bool:
    """True if a session running ``current`` may take a message addressed to ``addressed``."""
    seen, todo = {addressed}, [addressed]
    while todo:  # bounded by the number of agents: each one is visited once
        name = todo.pop()
        if name == current:
            return True
        spec = agents.get(name)
        for target in spec.handoffs if spec is not None else ():
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return False
