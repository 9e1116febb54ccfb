"""The provider registry: a plain dict of name -> Provider, built from settings in one place."""

from __future__ import annotations

import contextlib

from schemas.agents import AgentSpec
from services.executor.providers.base import Provider
from services.executor.providers.chat import groq_provider, openai_provider
from services.executor.providers.scripted import ScriptedProvider
from services.executor.settings import ExecutorSettings

PROVIDER_NAMES = frozenset({"scripted", "openai", "groq", "openai_compatible"})


def build_providers(settings: ExecutorSettings) -> dict[str, Provider]:
    """``scripted`` always; ``openai`` / ``groq`` when their key is set; ``openai_compatible`` when its URL is."""
    providers: dict[str, Provider] = {"scripted": ScriptedProvider(token_delay_s=settings.scripted_token_delay_ms / 1000)}
    if settings.openai_api_key is not None:
        providers["openai"] = openai_provider(
            name="openai",
            api_key=settings.openai_api_key.get_secret_value(),
            base_url=settings.openai_base_url,
            default_model=settings.openai_default_model,
            timeouts=settings.timeouts,
        )
    if settings.groq_api_key is not None:
        providers["groq"] = groq_provider(
            api_key=settings.groq_api_key.get_secret_value(),
            base_url=settings.groq_base_url,
            default_model=settings.groq_default_model,
            timeouts=settings.timeouts,
        )
    if settings.compatible_base_url:
        providers["openai_compatible"] = openai_provider(
            name="openai_compatible",
            api_key=settings.compatible_api_key.get_secret_value(),
            base_url=settings.compatible_base_url,
            default_model=settings.compatible_default_model,
            timeouts=settings.timeouts,
        )
    return providers


def default_agent(settings: ExecutorSettings) -> AgentSpec:
    """The ``default`` agent: the real model whose key is set (the other as fallback), else scripted."""
    chain: list[tuple[str, str]] = []
    if settings.openai_api_key is not None:
        chain.append(("openai", settings.openai_default_model))
    if settings.groq_api_key is not None:
        chain.append(("groq", settings.groq_default_model))
    if not chain:
        return AgentSpec(name="default")
    (provider, model), rest = chain[0], chain[1:]
    return AgentSpec(
        name="default",
        provider=provider,
        model=model,
        system_prompt="You are a helpful assistant. Use the calculator for arithmetic.",
        fallback=tuple(f"{p}:{m}" for p, m in rest),
    )


async def close_providers(providers: dict[str, Provider]) -> None:
    for provider in providers.values():
        close = getattr(provider, "aclose", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await close()
