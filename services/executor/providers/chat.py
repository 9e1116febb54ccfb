"""Chat-completions providers over the official SDKs: ``openai``, ``groq``, ``openai_compatible``.

The SDK builds the request (auth, base URL, headers) and turns a non-2xx answer into its typed
error; the stream itself is read as raw bytes (``with_streaming_response``), cut into SSE lines and
parsed with orjson (see ``sse.py`` for why). SDK retries are off: ``resilience.py`` retries and falls back,
the same way for every provider, also when a stream breaks half-way.

Transport: each SDK's aiohttp-backed client (``DefaultAioHttpClient``, an official option of both
SDKs), not its default httpx pool. Measured (shared/measured/http-clients.md, bench/results): one
httpx pool shared by dozens of concurrent streams queues on itself (~100 req/s at 64 concurrent)
and reading a stream through httpcore/anyio was ~30 % of the executor's CPU at 100 streams. aiohttp
errors still arrive as the SDK's httpx(2) exceptions (the adapter maps them), so the handling below
is the same for both.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

import aiohttp
import groq
import httpx
import httpx2
import openai

from services.executor.providers.base import Chunk, ModelRequest, ProviderError, TextDelta
from services.executor.providers.sse import DONE, TurnAssembler, split_lines
from services.executor.settings import TimeoutSettings

_RETRIABLE_STATUS = frozenset({408, 409, 425, 429})
_BROKEN_STREAM = (httpx.TransportError, httpx2.TransportError)


class ChatCompletionsProvider:
    """One provider over one SDK client (``openai.AsyncOpenAI`` or ``groq.AsyncGroq``)."""

    def __init__(self, *, name: str, client: Any, sdk: ModuleType, default_model: str, stream_options: bool = True) -> None:
        self.name = name
        self.default_model = default_model
        self._client = client
        self._sdk = sdk
        self._stream_options = stream_options

    @property
    def http_client(self) -> Any:
        """The SDK client's HTTP client (its transport: see the module docstring)."""
        return self._client._client

    async def aclose(self) -> None:
        await self._client.close()

    async def stream(self, request: ModelRequest) -> AsyncIterator[Chunk]:
        body: dict[str, Any] = {**request.params, "model": request.model, "messages": list(request.messages), "stream": True}
        if request.tools:
            body["tools"] = [
                {"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}
                for t in request.tools
            ]
        if self._stream_options:
            body["stream_options"] = {"include_usage": True}
        assembler = TurnAssembler()
        try:
            async with self._client.chat.completions.with_streaming_response.create(**body) as response:
                rest = b""
                done = False
                async for chunk in response.iter_bytes():
                    lines, rest = split_lines(rest, chunk)
                    text, done = _text_of(assembler, lines)
                    if text:
                        yield TextDelta(text)
                    if done:
                        break
                if rest and not done:  # a last line without its line end
                    text, _ = _text_of(assembler, [rest])
                    if text:
                        yield TextDelta(text)
        except self._sdk.APIStatusError as exc:
            raise _status_error(self.name, exc) from exc
        except self._sdk.APITimeoutError as exc:
            refused = _not_a_timeout(exc)
            if refused is not None:
                raise ProviderError(f"{self.name}: cannot connect ({refused})", retriable=True) from exc
            raise ProviderError(f"{self.name}: the request timed out", retriable=True) from exc
        except self._sdk.APIConnectionError as exc:
            raise ProviderError(f"{self.name}: cannot connect ({exc.__cause__ or exc})", retriable=True) from exc
        except _BROKEN_STREAM as exc:
            raise ProviderError(f"{self.name}: the stream broke off ({type(exc).__name__}: {exc})", retriable=True) from exc
        yield assembler.end()


def _text_of(assembler: TurnAssembler, lines: list[bytes]) -> tuple[str, bool]:
    """The text of every event in one read of the body, as one delta, and whether ``[DONE]`` came.
    A stream read as it arrives is an event a read; one that waited (a busy executor) hands its
    backlog over at once instead of one delta at a time through every layer up to the emitter."""
    pieces: list[str] = []
    for line in lines:
        piece = assembler.feed(line)
        if piece is None:
            continue
        if piece is DONE:
            return "".join(pieces), True
        pieces.append(piece)  # type: ignore[arg-type]  # feed gives str or the DONE sentinel, handled above; a sentinel object cannot narrow
    return "".join(pieces), False


def _not_a_timeout(exc: BaseException) -> aiohttp.ClientConnectionError | None:
    """The aiohttp connection error behind an SDK "timeout", if it was not one: the adapter maps every
    ``ClientConnectionError`` (a refused port, a server that closed before answering) to ConnectTimeout."""
    cause = exc.__cause__
    while cause is not None:
        if isinstance(cause, aiohttp.ClientConnectionError) and not isinstance(cause, TimeoutError):
            return cause
        cause = cause.__cause__
    return None


def _status_error(name: str, exc: Any) -> ProviderError:
    status: int = exc.status_code
    retriable = status in _RETRIABLE_STATUS or status >= 500
    message = exc.message if isinstance(getattr(exc, "message", None), str) else str(exc)
    return ProviderError(f"{name}: HTTP {status}: {message}", retriable=retriable, retry_after=retry_after(exc.response.headers))


def retry_after(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date); None if absent."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            parsed = email.utils.parsedate_tz(value)
            if parsed is not None:
                return max(0.0, email.utils.mktime_tz(parsed) - time.time())
    return None


def openai_provider(
    *, name: str, api_key: str, base_url: str | None, default_model: str, timeouts: TimeoutSettings
) -> ChatCompletionsProvider:
    timeout = openai.Timeout(timeouts.total_s, connect=timeouts.connect_s, read=timeouts.read_s)
    client = openai.AsyncOpenAI(
        api_key=api_key,
        base_url=base_url,
        max_retries=0,
        timeout=timeout,
        http_client=openai.DefaultAioHttpClient(timeout=timeout),
    )
    return ChatCompletionsProvider(name=name, client=client, sdk=openai, default_model=default_model)


def groq_provider(*, api_key: str, base_url: str | None, default_model: str, timeouts: TimeoutSettings) -> ChatCompletionsProvider:
    timeout = groq.Timeout(timeouts.total_s, connect=timeouts.connect_s, read=timeouts.read_s)
    client = groq.AsyncGroq(
        api_key=api_key,
        base_url=base_url,
        max_retries=0,
        timeout=timeout,
        http_client=groq.DefaultAioHttpClient(timeout=timeout),
    )
    # Groq reports usage in the last chunk's ``x_groq.usage`` and has no stream_options.
    return ChatCompletionsProvider(name="groq", client=client, sdk=groq, default_model=default_model, stream_options=False)
