"""Tools over HTTP: registered HTTP tools (signed requests) and an external Tool Registry client.

An HTTP tool is a URL and a JSON Schema. A call is ``POST url`` with ``{"tool", "arguments"}``; the
body is signed with HMAC-SHA256 over ``"{timestamp}.{body}"`` (headers ``X-Agentstream-Timestamp``
and ``X-Agentstream-Signature: v1=<hex>``), so the receiver can check origin and freshness. URLs
that point at loopback, private, link-local or otherwise non-global addresses are refused (at
registration and, after DNS, at call time) unless ``allow_private`` is set. Those checks give early,
clear answers; what holds is the client: built by ``services.common.urlguard.guarded_client``, it
connects only to an address it checked itself, so a DNS answer that changes after the check (DNS
rebinding) reaches nothing inside.

The Tool Registry: ``GET {base}/tools`` -> ``[{name, description, parameters}]`` and
``POST {base}/tools/{name}/invoke`` with ``{"arguments"}`` -> ``{"result"}`` or ``{"error"}``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import orjson
import yaml

from services.common.urlguard import RefusedAddress, Resolver, SystemResolver, UnresolvedHost, internal_address, public_addresses
from services.executor.providers.base import ToolSpec
from services.executor.tools import Tool, ToolDefinitionError, ToolError, check_schema, current_tool_call

log = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 1 << 20  # a tool's answer goes to the model: more than this is refused, not read


def check_url(url: str, *, allow_private: bool) -> str:
    """Refuse non-http(s) URLs and literal non-public addresses (names are checked at call time)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ToolDefinitionError(f"tool URL {url!r} must be an absolute http(s) URL")
    if allow_private:
        return url
    host = parts.hostname
    if host == "localhost" or host.endswith(".localhost"):
        raise ToolDefinitionError(f"tool URL {url!r} points at loopback; allow it with AGENTSTREAM_EXECUTOR_ALLOW_PRIVATE_TOOL_URLS")
    try:
        private = internal_address(host)
    except ValueError:
        return url  # a name: resolved and checked per call
    if private:
        raise ToolDefinitionError(
            f"tool URL {url!r} points at a private or loopback address; allow it with AGENTSTREAM_EXECUTOR_ALLOW_PRIVATE_TOOL_URLS"
        )
    return url


async def _check_resolved(url: str, resolver: Resolver) -> None:
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        await public_addresses(host, parts.port or 443, resolver, allow_private=False)
    except UnresolvedHost as exc:
        raise ToolError(f"cannot resolve {host!r}: {exc}", retriable=True) from exc
    except RefusedAddress as exc:
        raise ToolError(f"{host!r} resolves to a private or loopback address; refused") from exc


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    return "v1=" + hmac.new(secret, b"%d." % timestamp + body, hashlib.sha256).hexdigest()


async def _read_bounded(response: httpx.Response, url: str) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_RESPONSE_BYTES:
        raise ToolError(f"{url} answered {declared} bytes; more than {MAX_RESPONSE_BYTES} is refused")
    content = bytearray()
    async for chunk in response.aiter_bytes():
        content += chunk
        if len(content) > MAX_RESPONSE_BYTES:
            raise ToolError(f"{url} answered more than {MAX_RESPONSE_BYTES} bytes; refused")
    return bytes(content)


async def _post(client: httpx.AsyncClient, url: str, payload: dict[str, Any], secret: bytes | None) -> Any:
    body = orjson.dumps(payload)
    headers = {"content-type": "application/json"}
    call = current_tool_call.get()
    if call is not None and call.idempotency_key:
        # The same for every run of this call (execution id + call id), also after a resume: the
        # service can tell a call interrupted mid-way and run again from a new one (loop.py).
        headers["idempotency-key"] = call.idempotency_key
    if secret is not None:
        timestamp = int(time.time())
        headers |= {"x-agentstream-timestamp": str(timestamp), "x-agentstream-signature": sign(secret, body, timestamp)}
    # The whole exchange is bounded (httpx's timeouts are per read: a server dribbling bytes never trips them).
    deadline = client.timeout.read or 10.0
    try:
        async with asyncio.timeout(deadline), client.stream("POST", url, content=body, headers=headers) as response:
            status = response.status_code
            if response.is_redirect:  # never followed: the target would escape the address checks
                raise ToolError(f"{url} answered a redirect (HTTP {status}); redirects are not followed")
            content = await _read_bounded(response, url)
    except httpx.HTTPError as exc:
        raise ToolError(f"calling {url} failed: {type(exc).__name__}: {exc}", retriable=True) from exc
    except RefusedAddress as exc:  # the guarded client's own check, at connect time (the name changed since)
        raise ToolError(f"calling {url} refused: {exc}") from exc
    except TimeoutError as exc:
        raise ToolError(f"{url} gave no complete answer within {deadline:g}s", retriable=True) from exc
    if status >= 400:
        retriable = status in (408, 429) or status >= 500
        raise ToolError(f"{url} answered HTTP {status}: {content[:500].decode(errors='replace')}", retriable=retriable)
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        raise ToolError(f"{url} answered with something that is not JSON") from exc
    if isinstance(data, dict) and data.get("error"):
        raise ToolError(str(data["error"]))
    return data.get("result") if isinstance(data, dict) and "result" in data else data


class HttpTool:
    def __init__(
        self,
        spec: ToolSpec,
        url: str,
        *,
        client: httpx.AsyncClient,
        secret: bytes | None = None,
        allow_private: bool = False,
        resolver: Resolver | None = None,
    ) -> None:
        check_schema(spec.name, spec.parameters)
        self.spec = spec
        self.url = check_url(url, allow_private=allow_private)
        self._client = client
        self._secret = secret
        self._allow_private = allow_private
        self._resolver = resolver or SystemResolver()

    async def __call__(self, arguments: dict[str, Any]) -> Any:
        if not self._allow_private:
            await _check_resolved(self.url, self._resolver)
        return await _post(self._client, self.url, {"tool": self.spec.name, "arguments": arguments}, self._secret)


def load_http_tools(
    path: Path, *, client: httpx.AsyncClient, secret: bytes | None = None, allow_private: bool = False, resolver: Resolver | None = None
) -> dict[str, Tool]:
    """A YAML file ``tools: {name: {url, description, parameters}}``; any bad entry fails the load."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ToolDefinitionError(f"cannot read tools file {path}: {exc}") from exc
    entries = raw.get("tools", raw) if isinstance(raw, dict) else None
    if not isinstance(entries, dict):
        raise ToolDefinitionError(f"{path}: expected a mapping `tools: {{name: {{url: ..., parameters: ...}}}}`")
    tools: dict[str, Tool] = {}
    for name, body in entries.items():
        if not isinstance(body, dict) or "url" not in body:
            raise ToolDefinitionError(f"{path}: tool {name!r} needs at least a url")
        spec = ToolSpec(name=name, description=str(body.get("description", "")), parameters=body.get("parameters", {"type": "object"}))
        tools[name] = HttpTool(spec, str(body["url"]), client=client, secret=secret, allow_private=allow_private, resolver=resolver)
    return tools


class RegistryTool:
    def __init__(self, spec: ToolSpec, registry: ToolRegistry) -> None:
        self.spec = spec
        self._registry = registry

    async def __call__(self, arguments: dict[str, Any]) -> Any:
        return await self._registry.invoke(self.spec.name, arguments)


class ToolRegistry:
    """Client of an external Tool Registry service."""

    def __init__(
        self,
        base_url: str,
        *,
        client: httpx.AsyncClient,
        secret: bytes | None = None,
        allow_private: bool = False,
        resolver: Resolver | None = None,
    ) -> None:
        self.base_url = check_url(base_url, allow_private=allow_private).rstrip("/")
        self._client = client
        self._secret = secret
        self._allow_private = allow_private
        self._resolver = resolver or SystemResolver()

    async def list(self) -> dict[str, Tool]:
        try:
            if not self._allow_private:
                await _check_resolved(self.base_url, self._resolver)
            response = await self._client.get(f"{self.base_url}/tools")
            response.raise_for_status()
            entries = orjson.loads(response.content)
        except (httpx.HTTPError, orjson.JSONDecodeError, ToolError, RefusedAddress) as exc:
            raise ToolDefinitionError(f"the tool registry at {self.base_url} cannot list tools: {exc}") from exc
        tools: dict[str, Tool] = {}
        for entry in entries if isinstance(entries, list) else []:
            name = str(entry.get("name", ""))
            try:
                parameters = check_schema(name, entry.get("parameters", {"type": "object"}))
            except ToolDefinitionError as exc:
                log.warning("tool registry: skipping %s", exc)  # one bad entry does not hide the others
                continue
            tools[name] = RegistryTool(ToolSpec(name=name, description=str(entry.get("description", "")), parameters=parameters), self)
        return tools

    async def invoke(self, name: str, arguments: dict[str, Any]) -> Any:
        if not self._allow_private:
            await _check_resolved(self.base_url, self._resolver)
        return await _post(self._client, f"{self.base_url}/tools/{quote(name, safe='')}/invoke", {"arguments": arguments}, self._secret)
