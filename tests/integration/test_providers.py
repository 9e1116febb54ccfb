"""Providers over the real openai and groq SDKs against the fake OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import groq
import openai
import orjson
import pytest

from services.executor.providers.base import ModelRequest, Provider, ProviderError, TextDelta, ToolCall, TurnEnd
from services.executor.providers.chat import ChatCompletionsProvider, groq_provider, openai_provider
from services.executor.resilience import Restart, Route, resilient_stream
from services.executor.settings import RetrySettings, TimeoutSettings
from tests.fakes.openai_server import FakeOpenAI, FakeToolCall, Reply

TIMEOUTS = TimeoutSettings(connect_s=2, first_token_s=2, total_s=10, read_s=5)
FAST_RETRY = RetrySettings(attempts=3, backoff_s=0.01, max_backoff_s=0.05, max_retry_after_s=5)
HELLO: tuple[dict[str, object], ...] = ({"role": "user", "content": "hi"},)


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


@pytest.fixture
async def providers(fake: FakeOpenAI) -> AsyncIterator[dict[str, Provider]]:
    made = {
        "openai": openai_provider(name="openai", api_key="sk-test", base_url=fake.openai_url, default_model="gpt", timeouts=TIMEOUTS),
        "groq": groq_provider(api_key="gsk-test", base_url=fake.url, default_model="llama", timeouts=TIMEOUTS),
    }
    yield dict(made)
    for provider in made.values():
        await provider.aclose()


async def _collect(provider: Provider, model: str, **kw: object) -> tuple[str, TurnEnd]:
    chunks = [c async for c in provider.stream(ModelRequest(model=model, messages=HELLO, **kw))]  # type: ignore[arg-type]
    end = chunks[-1]
    assert isinstance(end, TurnEnd)
    return "".join(c.text for c in chunks if isinstance(c, TextDelta)), end


async def test_openai_streams_text_and_reports_usage(fake: FakeOpenAI, providers: dict[str, Provider]) -> None:
    fake.script("m", Reply(text=["Hel", "lo", " world"], usage=(7, 3)))
    text, end = await _collect(providers["openai"], "m")
    assert text == "Hello world"
    assert (end.usage.prompt_tokens, end.usage.completion_tokens, end.usage.total_tokens) == (7, 3, 10)
    seen = fake.requests[-1]
    assert seen.path == "/v1/chat/completions" and seen.headers["authorization"] == "Bearer sk-test"
    assert seen.body["stream"] is True and seen.body["stream_options"] == {"include_usage": True}


async def test_model_streams_ride_on_the_sdks_aiohttp_transport(fake: FakeOpenAI, providers: dict[str, Provider]) -> None:
    compatible = openai_provider(name="openai_compatible", api_key="k", base_url=fake.openai_url, default_model="m", timeouts=TIMEOUTS)
    try:
        made = {"openai": providers["openai"], "openai_compatible": compatible, "groq": providers["groq"]}
        for name, provider in made.items():
            assert isinstance(provider, ChatCompletionsProvider)
            sdk = groq if name == "groq" else openai
            assert isinstance(provider.http_client, sdk.DefaultAioHttpClient), name
            fake.script("m", Reply(text=["x", "y"]))
            text, _ = await _collect(provider, "m")
            assert text == "xy"
    finally:
        await compatible.aclose()


async def test_groq_streams_text_and_reads_usage_from_x_groq(fake: FakeOpenAI, providers: dict[str, Provider]) -> None:
    fake.script("l", Reply(text=["a", "b"], usage=(4, 2), usage_in_x_groq=True))
    text, end = await _collect(providers["groq"], "l")
    assert text == "ab" and end.usage.total_tokens == 6
    assert fake.requests[-1].path == "/openai/v1/chat/completions"
    assert "stream_options" not in fake.requests[-1].body


async def test_tool_call_deltas_are_assembled(fake: FakeOpenAI, providers: dict[str, Provider]) -> None:
    calls = [FakeToolCall("calculator", '{"expression": "2+2"}', id="c1"), FakeToolCall("clock", "{}", id="c2")]
    fake.script("m", Reply(text=["thinking"], tool_calls=calls))
    _, end = await _collect(providers["openai"], "m")
    assert end.tool_calls == (ToolCall("c1", "calculator", '{"expression": "2+2"}'), ToolCall("c2", "clock", "{}"))
    assert fake.requests[-1].body["model"] == "m"


@pytest.mark.parametrize(("status", "retriable"), [(429, True), (500, True), (503, True), (400, False), (401, False)])
async def test_status_errors_map_to_retriable(fake: FakeOpenAI, providers: dict[str, Provider], status: int, retriable: bool) -> None:
    fake.script("m", Reply(status=status, retry_after=1.5 if status == 429 else None))
    with pytest.raises(ProviderError) as info:
        await _collect(providers["openai"], "m")
    assert info.value.retriable is retriable
    assert f"HTTP {status}" in str(info.value) and "sk-test" not in str(info.value)
    assert info.value.retry_after == (1.5 if status == 429 else None)


async def test_mid_stream_disconnect_is_a_retriable_error(fake: FakeOpenAI, providers: dict[str, Provider]) -> None:
    for name, model in (("openai", "m"), ("groq", "g")):
        fake.script(model, Reply(text=["a", "b", "c", "d"], disconnect_after=3))
        with pytest.raises(ProviderError, match="broke off") as info:
            await _collect(providers[name], model)
        assert info.value.retriable


async def test_connection_refused_is_retriable(providers: dict[str, Provider]) -> None:
    dead = openai_provider(name="openai", api_key="k", base_url="http://127.0.0.1:9/v1", default_model="m", timeouts=TIMEOUTS)
    try:
        with pytest.raises(ProviderError, match="cannot connect") as info:
            await _collect(dead, "m")
        assert info.value.retriable
    finally:
        await dead.aclose()


async def _resilient(providers: dict[str, Provider], routes: list[Route], **kw: object) -> list[object]:
    retry = kw.pop("retry", FAST_RETRY)
    timeouts = kw.pop("timeouts", TIMEOUTS)
    stream = resilient_stream(routes, ModelRequest(model="", messages=HELLO), providers, retry=retry, timeouts=timeouts)  # type: ignore[arg-type]
    return [c async for c in stream]


async def test_429_is_retried_after_retry_after(fake: FakeOpenAI, providers: dict[str, Provider]) -> None:
    fake.script("m", Reply(status=429, retry_after=0.4), Reply(text=["ok"]))
    chunks = await _resilient(providers, [Route("openai", "m")])
    first, second = fake.requests
    assert second.at - first.at >= 0.4  # backoff alone would have waited ~10 ms
    restart = chunks[0]
    assert isinstance(restart, Restart) and not restart.fallback and not restart.text_discarded and restart.delay_s >= 0.4
    assert [c.text for c in chunks if isinstance(c, TextDelta)] == ["ok"]


async def test_500s_are_retried_with_backoff_then_succeed(fake: FakeOpenAI, providers: dict[str, Provider]) -> None:
    fake.script("m", Reply(status=500), Reply(status=502), Reply(text=["fine"]))
    chunks = await _resilient(providers, [Route("openai", "m")])
    assert sum(isinstance(c, Restart) for c in chunks) == 2 and len(fake.requests) == 3


async def test_fallback_mid_stream_restarts_the_text(fake: FakeOpenAI, providers: dict[str, Provider]) -> None:
    broken = Reply(text=["Par", "tial", " text"], disconnect_after=3)
    fake.script("primary", *(broken for _ in range(FAST_RETRY.attempts)))
    fake.script("backup", Reply(text=["Whole", " answer"]))
    chunks = await _resilient(providers, [Route("groq", "primary"), Route("openai", "backup")])
    restarts = [c for c in chunks if isinstance(c, Restart)]
    assert [r.fallback for r in restarts] == [False, False, True]
    assert all(r.text_discarded for r in restarts)
    last = restarts[-1]
    assert (last.previous_provider, last.previous_model, last.provider, last.model) == ("groq", "primary", "openai", "backup")
    after = chunks[chunks.index(last) + 1 :]
    assert "".join(c.text for c in after if isinstance(c, TextDelta)) == "Whole answer"


async def test_not_retriable_goes_straight_to_fallback(fake: FakeOpenAI, providers: dict[str, Provider]) -> None:
    fake.script("primary", Reply(status=401, error_message="bad key"))
    fake.script("backup", Reply(text=["ok"]))
    chunks = await _resilient(providers, [Route("openai", "primary"), Route("groq", "backup")])
    assert len(fake.bodies("primary")) == 1
    assert isinstance(chunks[0], Restart) and chunks[0].fallback and "bad key" in chunks[0].reason


async def test_every_provider_failing_is_one_clear_error(fake: FakeOpenAI, providers: dict[str, Provider]) -> None:
    fake.default = Reply(status=503)
    with pytest.raises(ProviderError, match="every provider failed") as info:
        await _resilient(providers, [Route("openai", "a"), Route("groq", "b"), Route("nope", "c")])
    assert "nope: not configured" in str(info.value) and info.value.retriable


async def test_slow_first_token_times_out_and_is_retried(fake: FakeOpenAI, providers: dict[str, Provider]) -> None:
    fake.script("m", Reply(text=["late"], first_token_delay_s=1.0), Reply(text=["quick"]))
    timeouts = TimeoutSettings(connect_s=1, first_token_s=0.2, total_s=5, read_s=5)
    chunks = await _resilient(providers, [Route("openai", "m")], timeouts=timeouts)
    assert isinstance(chunks[0], Restart) and "no first token within 0.2s" in chunks[0].reason
    assert [c.text for c in chunks if isinstance(c, TextDelta)] == ["quick"]


async def test_total_timeout_of_one_call(fake: FakeOpenAI, providers: dict[str, Provider]) -> None:
    fake.script("m", Reply(text=["a"] * 50, token_delay_s=0.02))
    timeouts = TimeoutSettings(connect_s=1, first_token_s=1, total_s=0.3, read_s=5)
    with pytest.raises(ProviderError, match=r"longer than 0\.3s"):
        await _resilient(providers, [Route("openai", "m")], timeouts=timeouts, retry=RetrySettings(attempts=1))


async def test_a_stream_line_that_is_not_json_is_a_clear_error(providers: dict[str, Provider]) -> None:
    from services.executor.providers.sse import TurnAssembler

    with pytest.raises(ProviderError, match="not JSON"):
        TurnAssembler().feed("data: {oops")
    assembler = TurnAssembler()
    assert assembler.feed(": keep-alive") is None
    assert assembler.feed("data: " + orjson.dumps({"choices": [{"delta": {"content": "x"}}]}).decode()) == "x"


async def test_a_stream_cut_anywhere_with_crlf_line_ends_reads_the_same() -> None:
    """A server that writes its SSE body in odd pieces: inside a multi-byte character, between CR and LF,
    the last line without its line end. The text comes out whole, through the real SDK."""
    events = [{"choices": [{"delta": {"content": piece}}]} for piece in ("hé", "llo ", "wörld")]
    body = b"".join(b"data: " + orjson.dumps(e) + b"\r\n\r\n" for e in events) + b"data: [DONE]"
    cuts = [3, 20, body.index("é".encode()) + 1, body.index(b"\r\n") + 1, len(body) - 2]
    pieces = [body[a:b] for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), len(body)], strict=True)]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(h.split(b":")[1]) for h in head.lower().split(b"\r\n") if h.startswith(b"content-length:"))
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n")
        for piece in pieces:
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            await asyncio.sleep(0.01)  # separate reads on the client side
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    made = [
        openai_provider(name="openai", api_key="k", base_url=f"http://127.0.0.1:{port}/v1", default_model="m", timeouts=TIMEOUTS),
        groq_provider(api_key="k", base_url=f"http://127.0.0.1:{port}", default_model="m", timeouts=TIMEOUTS),
    ]
    try:
        for provider in made:
            text, end = await _collect(provider, "m")
            assert text == "héllo wörld" and end.tool_calls == ()
    finally:
        for provider in made:
            await provider.aclose()
        server.close()
        await server.wait_closed()


async def test_a_stream_that_goes_silent_ends_at_the_read_timeout(fake: FakeOpenAI) -> None:
    """``read_s`` is the transport's: the silence between two chunks, also half-way (resilience.py relies on it)."""
    timeouts = TimeoutSettings(connect_s=2, first_token_s=10, total_s=60, read_s=0.3)
    made = [
        openai_provider(name="openai", api_key="k", base_url=fake.openai_url, default_model="m", timeouts=timeouts),
        groq_provider(api_key="k", base_url=fake.url, default_model="m", timeouts=timeouts),
    ]
    try:
        for provider in made:
            fake.script("m", Reply(text=["a", "b", "c"], token_delay_s=5.0))
            with pytest.raises(ProviderError) as info:
                await _collect(provider, "m")
            assert info.value.retriable and ("broke off" in str(info.value) or "timed out" in str(info.value)), str(info.value)
    finally:
        for provider in made:
            await provider.aclose()


async def test_the_events_of_one_read_come_out_as_one_delta() -> None:
    """A backlog (a busy executor reads late) is one delta per read, not one per event; the text is the same."""
    events = [{"choices": [{"delta": {"content": piece}}]} for piece in ("a", "b", "c")]
    body = b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(h.split(b":")[1]) for h in head.lower().split(b"\r\n") if h.startswith(b"content-length:"))
        await reader.readexactly(length)
        head_out = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
        writer.write(head_out % len(body) + body)  # the whole stream in one write: one read on the other side
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    provider = openai_provider(name="openai", api_key="k", base_url=f"http://127.0.0.1:{port}/v1", default_model="m", timeouts=TIMEOUTS)
    try:
        chunks = [c async for c in provider.stream(ModelRequest(model="m", messages=HELLO))]
        assert [c.text for c in chunks if isinstance(c, TextDelta)] == ["abc"]
        assert isinstance(chunks[-1], TurnEnd)
    finally:
        await provider.aclose()
        server.close()
        await server.wait_closed()
