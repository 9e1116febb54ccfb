"""Configuration of the executor: agents, tool definitions, provider registry, settings."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from pydantic import SecretStr

from services.common.agents import AgentCatalogError, load_agents
from services.executor.httptools import HttpTool, check_url, load_http_tools, sign
from services.executor.providers.base import ProviderError, ToolSpec
from services.executor.providers.registry import PROVIDER_NAMES, build_providers, default_agent
from services.executor.providers.sse import DONE, TurnAssembler
from services.executor.resilience import Route, backoff, parse_route
from services.executor.settings import ExecutorSettings, RetrySettings
from services.executor.tools import ToolDefinitionError, check_schema


def test_agents_yaml_with_unknown_provider_is_refused_at_load(tmp_path: Path) -> None:
    path = tmp_path / "agents.yaml"
    path.write_text("agents:\n  a:\n    provider: opneai\n    model: gpt\n")
    with pytest.raises(AgentCatalogError, match="agent 'a' names unknown provider 'opneai'; known providers: "):
        load_agents(path, providers=PROVIDER_NAMES)
    path.write_text("agents:\n  a:\n    provider: openai\n    fallback: [groq, 'nope:m']\n")
    with pytest.raises(AgentCatalogError, match="unknown provider 'nope'"):
        load_agents(path, providers=PROVIDER_NAMES)


def test_agents_yaml_loads_templates_timeouts_and_fallback(tmp_path: Path) -> None:
    path = tmp_path / "agents.yaml"
    path.write_text(
        "agents:\n  support:\n    provider: groq\n    model: llama\n    system_prompt: 'Help {{ customer }}'\n"
        "    first_token_timeout_s: 5\n    fallback: ['openai:gpt-4o-mini']\n    tools: [calculator]\n"
    )
    spec = load_agents(path, providers=PROVIDER_NAMES)["support"]
    assert (spec.provider, spec.fallback, spec.first_token_timeout_s, spec.tools) == ("groq", ("openai:gpt-4o-mini",), 5, ("calculator",))


@pytest.mark.parametrize("body", ["agents: [1, 2]", "agents:\n  a:\n    max_steps: 0\n", "agents:\n  a:\n    colour: red\n", ": : :"])
def test_bad_agents_yaml_is_a_clear_error(tmp_path: Path, body: str) -> None:
    path = tmp_path / "agents.yaml"
    path.write_text(body)
    with pytest.raises(AgentCatalogError, match=str(path)):
        load_agents(path, providers=PROVIDER_NAMES)


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"type": "objekt"}, "not a valid JSON Schema"),
        ({"type": "object", "properties": {"x": {"type": 5}}}, "not a valid JSON Schema"),
        ({"type": "object", "required": "x"}, "not a valid JSON Schema"),
        ({"type": "string"}, "must describe an object"),
        ("{}", "must be a JSON Schema object"),
    ],
)
def test_tool_schema_that_is_not_json_schema_is_refused(parameters: object, message: str) -> None:
    with pytest.raises(ToolDefinitionError, match=message):
        check_schema("t", parameters)


def test_http_tools_file_with_a_bad_schema_fails_the_load(tmp_path: Path) -> None:
    import httpx

    path = tmp_path / "tools.yaml"
    path.write_text(
        "tools:\n  lookup:\n    url: https://tools.example.com/lookup\n    parameters: {type: object, properties: {q: {type: 7}}}\n"
    )
    with pytest.raises(ToolDefinitionError, match="tool 'lookup': parameters are not a valid JSON Schema"):
        load_http_tools(path, client=httpx.AsyncClient())


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/x",
        "http://localhost/x",
        "http://10.1.2.3/x",
        "http://192.168.0.1/",
        "http://169.254.169.254/latest",
        "http://[::1]/x",
    ],
)
def test_http_tool_urls_to_private_ranges_are_refused(url: str) -> None:
    with pytest.raises(ToolDefinitionError, match=r"loopback|private"):
        check_url(url, allow_private=False)
    assert check_url(url, allow_private=True) == url


def test_http_tool_url_must_be_http() -> None:
    with pytest.raises(ToolDefinitionError, match="absolute http"):
        check_url("file:///etc/passwd", allow_private=True)
    assert check_url("https://tools.example.com/x", allow_private=False)


def test_http_tool_refuses_private_at_registration() -> None:
    import httpx

    spec = ToolSpec(name="t", description="", parameters={"type": "object"})
    with pytest.raises(ToolDefinitionError):
        HttpTool(spec, "http://127.0.0.1:1/t", client=httpx.AsyncClient())


def test_signature_is_hmac_sha256_over_timestamp_and_body() -> None:
    import hashlib
    import hmac

    body = orjson.dumps({"tool": "t", "arguments": {}})
    expected = hmac.new(b"s3cret", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign(b"s3cret", body, 1700000000) == f"v1={expected}"


def test_default_agent_follows_the_keys() -> None:
    assert default_agent(ExecutorSettings()).provider == "scripted"
    only_groq = default_agent(ExecutorSettings(groq_api_key=SecretStr("g")))
    assert (only_groq.provider, only_groq.fallback) == ("groq", ())
    both = default_agent(ExecutorSettings(openai_api_key=SecretStr("o"), groq_api_key=SecretStr("g")))
    assert (both.provider, both.model, both.fallback) == ("openai", "gpt-4o-mini", ("groq:llama-3.3-70b-versatile",))


async def test_providers_exist_only_when_configured() -> None:
    assert set(build_providers(ExecutorSettings())) == {"scripted"}
    made = build_providers(ExecutorSettings(openai_api_key=SecretStr("o"), compatible_base_url="http://127.0.0.1:1/v1"))
    assert set(made) == {"scripted", "openai", "openai_compatible"}
    for provider in made.values():
        close = getattr(provider, "aclose", None)
        if close is not None:
            await close()


def test_api_keys_come_from_the_usual_env_names_and_are_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-very-secret")
    monkeypatch.setenv("GROQ_API_KEY", "gsk-very-secret")
    settings = ExecutorSettings()
    assert settings.openai_api_key is not None and settings.openai_api_key.get_secret_value() == "sk-very-secret"
    assert "very-secret" not in repr(settings) and "very-secret" not in settings.model_dump_json()


def test_fallback_entries_name_a_provider_and_optionally_a_model() -> None:
    assert parse_route("openai:gpt-4o", {}) == Route("openai", "gpt-4o")
    assert parse_route("ollama:llama3:8b", {}) == Route("ollama", "llama3:8b")


def test_backoff_grows_with_jitter_and_honours_retry_after() -> None:
    retry = RetrySettings(backoff_s=0.1, max_backoff_s=1.0)
    error = ProviderError("x", retriable=True)
    assert 0.05 <= backoff(0, error, retry) <= 0.1
    assert 0.2 <= backoff(2, error, retry) <= 0.4
    assert backoff(10, error, retry) <= 1.0
    assert 2.0 <= backoff(0, ProviderError("x", retriable=True, retry_after=2.0), retry) <= 2.2


def test_sse_assembler() -> None:
    assembler = TurnAssembler()
    assert assembler.feed("") is None and assembler.feed(": keep-alive") is None
    assert assembler.feed('data: {"choices":[{"delta":{"content":"x"}}]}') == "x"
    assert assembler.feed("data: [DONE]") is DONE
    with pytest.raises(ProviderError, match="not JSON"):
        assembler.feed("data: {oops")
    with pytest.raises(ProviderError, match="reported an error: overloaded"):
        assembler.feed('data: {"error": {"message": "overloaded"}}')


async def test_the_executors_producer_does_not_linger_by_default() -> None:
    from services.common.settings import KafkaSettings
    from services.executor.app import Executor

    kafka = KafkaSettings(linger_ms=2)  # the other producers' linger stays theirs
    for settings, linger_s in ((ExecutorSettings(kafka=kafka), 0.0), (ExecutorSettings(kafka=kafka, events_linger_ms=5), 0.005)):
        executor = Executor(settings)
        try:
            assert executor.producer._message_accumulator._linger_time == linger_s  # aiokafka keeps it there, in seconds
        finally:
            await executor.stop()
            await executor.producer.stop()  # never started: stop() leaves it to start()'s unwinding
