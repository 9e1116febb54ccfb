"""The OpenAI-compatible door: Chat Completions, Responses and Models over agentstream executions.

One module per concern: ``chat`` and ``responses`` (the endpoints), ``models`` (agents as models),
``mapping`` (our events -> OpenAI's), ``feed`` (an execution's events from the bridge), ``errors``
(OpenAI-shaped error bodies), ``common`` (field checks and the submission they share). See
docs/openai.md for what is supported.
"""

from __future__ import annotations

from starlette.routing import BaseRoute, Route


def routes() -> list[BaseRoute]:
    from services.orchestrator.openai import chat, models, responses

    return [
        Route("/v1/chat/completions", chat.chat_completions, methods=["POST"]),
        Route("/v1/responses", responses.create_response, methods=["POST"]),
        Route("/v1/responses/{response_id}", responses.get_response, methods=["GET"]),
        Route("/v1/responses/{response_id}", responses.delete_response, methods=["DELETE"]),
        Route("/v1/responses/{response_id}/cancel", responses.cancel_response, methods=["POST"]),
        Route("/v1/models", models.list_models, methods=["GET"]),
        Route("/v1/models/{model}", models.get_model, methods=["GET"]),
    ]
