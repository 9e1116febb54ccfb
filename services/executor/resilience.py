"""Retries, fallback and timeouts around any provider, the same for all of them.

A model call is tried on the agent's provider, then on each provider of its fallback chain. A
retriable failure (429, 5xx, timeout, a dropped connection, a stream that broke off) is retried on
the same provider with exponential backoff and jitter, honouring the server's Retry-After; when the
attempts are used up, or the failure is not retriable, or Retry-After is longer than we are willing
to wait, the next provider takes over. Before every new try a :class:`Restart` is yielded, so the
loop can tell the client, and whether text of this step was already streamed (and must be dropped).

Timeouts per call: ``first_token_s`` from the request to the first chunk, ``total_s`` to the last.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, replace

from services.common.observability.tracing import traced_llm_call
from services.executor.providers.base import Chunk, ModelRequest, Provider, ProviderError, TextDelta
from services.executor.settings import RetrySettings, TimeoutSettings


@dataclass(frozen=True, slots=True)
class Route:
    provider: str
    model: str


@dataclass(frozen=True, slots=True)
class Restart:
    """The model call starts over: on the same provider (a retry) or the next one (a fallback)."""

    reason: str
    provider: str
    model: str
    previous_provider: str
    previous_model: str
    text_discarded: bool
    delay_s: float

    @property
    def fallback(self) -> bool:
        return (self.provider, self.model) != (self.previous_provider, self.previous_model)


def parse_route(entry: str, providers: dict[str, Provider]) -> Route:
    """``"groq"`` (that provider's default model) or ``"groq:llama-3.1-8b-instant"``."""
    name, _, model = entry.partition(":")
    provider = providers.get(name)
    return Route(name, model or (provider.default_model if provider else ""))


def backoff(attempt: int, error: ProviderError, retry: RetrySettings) -> float:
    if error.retry_after is not None:
        return error.retry_after * random.uniform(1.0, 1.1)  # never earlier than asked
    return min(retry.backoff_s * 2.0**attempt, retry.max_backoff_s) * random.uniform(0.5, 1.0)


async def resilient_stream(
    routes: list[Route],
    request: ModelRequest,
    providers: dict[str, Provider],
    *,
    retry: RetrySettings,
    timeouts: TimeoutSettings,
) -> AsyncGenerator[Chunk | Restart, None]:
    failures: list[str] = []
    previous: Route | None = None
    pending: ProviderError | None = None
    streamed_before = False
    for route in routes:
        provider = providers.get(route.provider)
        if provider is None:
            failures.append(f"{route.provider}: not configured")
            continue
        for attempt in range(retry.attempts):
            streamed = False
            if previous is not None and pending is not None:
                delay = backoff(attempt - 1, pending, retry) if route == previous else 0.0
                yield Restart(str(pending), route.provider, route.model, previous.provider, previous.model, streamed_before, delay)
                if delay:
                    await asyncio.sleep(delay)
            previous, pending = route, None
            try:
                call = _timed(provider, replace(request, model=route.model), timeouts)
                async for chunk in traced_llm_call(call, provider=route.provider, model=route.model):
                    streamed = streamed or isinstance(chunk, TextDelta)
                    yield chunk
                return
            except ProviderError as exc:
                pending, streamed_before = exc, streamed
                failures.append(str(exc))
                too_long = exc.retry_after is not None and exc.retry_after > retry.max_retry_after_s
                if not exc.retriable or too_long:
                    break
    raise ProviderError(
        "every provider failed: " + "; ".join(failures) if failures else "no provider to call",
        retriable=pending.retriable if pending is not None else False,
    )


async def _timed(provider: Provider, request: ModelRequest, timeouts: TimeoutSettings) -> AsyncIterator[Chunk]:
    """The first chunk under a real timeout; after it, the total is checked per chunk (cheap on the hot
    path), and a stream that goes silent is ended by the client's read timeout (``read_s``)."""
    loop = asyncio.get_running_loop()
    end_at = loop.time() + timeouts.total_s
    first_by = min(loop.time() + timeouts.first_token_s, end_at)
    stream = provider.stream(request)
    try:
        try:
            async with asyncio.timeout_at(first_by):
                chunk = await anext(stream)
        except StopAsyncIteration:
            return
        except TimeoutError:
            if first_by < end_at:
                raise ProviderError(f"{provider.name}: no first token within {timeouts.first_token_s:g}s", retriable=True) from None
            raise _too_long(provider, timeouts) from None
        yield chunk
        async for chunk in stream:
            if loop.time() > end_at:
                raise _too_long(provider, timeouts)
            yield chunk
    finally:
        close = getattr(stream, "aclose", None)
        if close is not None:
            await close()


def _too_long(provider: Provider, timeouts: TimeoutSettings) -> ProviderError:
    return ProviderError(f"{provider.name}: the call took longer than {timeouts.total_s:g}s", retriable=True)
