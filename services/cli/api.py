"""The CLI's HTTP client: every answer that is not the one asked for becomes one ``CliError`` line
that says what to do (nothing listening, a refused key, an unknown agent, a missing variable ...)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import httpx
import orjson

from services.cli.base import CliError, prog


class Api:
    def __init__(self, url: str, api_key: str) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self._client = httpx.AsyncClient(base_url=self.url, timeout=30, headers={"Authorization": f"Bearer {api_key}"})

    async def __aenter__(self) -> Api:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.aclose()

    async def call(self, method: str, path: str, *, what: str = "", **kwargs: Any) -> Any:
        """The JSON of a 2xx answer (None for 204); any other answer or none at all is a CliError."""
        try:
            response = await self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise unreachable(self.url, exc) from exc
        if response.status_code == 204:
            return None
        body = _json(response)
        if response.is_success and body is not None:
            return body
        raise refused(self.url, response, body, what=what)

    async def events(self, execution_id: str, *, cursor: int | None = None) -> AsyncGenerator[dict[str, Any], None]:
        """The execution's events after ``cursor`` (SSE), live until its end."""
        from services.replay import ReplayError, execution_events  # imports aiokafka: only when streaming

        try:
            async for item in execution_events(self.url, self.api_key, execution_id, cursor=cursor):
                yield item
        except httpx.HTTPError as exc:
            raise unreachable(self.url, exc) from exc
        except ReplayError as exc:
            status, _, reason = str(exc).partition(": ")
            raise CliError(_explained(self.url, int(status) if status.isdigit() else 0, reason, f"execution {execution_id}")) from exc


def unreachable(url: str, exc: httpx.HTTPError) -> CliError:
    # httpx.ConnectError is no OSError: it used to escape as a 200-line traceback.
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return CliError(f"nothing answers at {url}: start the server with `{prog()} up`, or point --url (AGENTSTREAM_URL) at yours")
    return CliError(f"the server at {url} did not answer ({type(exc).__name__}: {exc or 'no detail'}): is it overloaded or stopping? retry")


def refused(url: str, response: httpx.Response, body: Any, *, what: str) -> CliError:
    if body is None or not isinstance(body, dict) or "error" not in body:
        kind = response.headers.get("content-type", "no content type")
        return CliError(f"the server at {url} is not agentstream (HTTP {response.status_code}, {kind}): check --url (AGENTSTREAM_URL)")
    detail = body.get("detail")
    if response.status_code == 422 and isinstance(detail, dict) and detail.get("missing"):
        missing = detail["missing"]
        wanted = ", ".join(detail.get("variables", []))
        return CliError(f"{body['error'].split(':')[0]}: pass --var {missing}=VALUE (its variables: {wanted})")
    message = _explained(url, response.status_code, str(body["error"]), what)
    if response.status_code == 429 and response.headers.get("retry-after"):
        message += f" (retry in {response.headers['retry-after']} s)"
    return CliError(message)


def _explained(url: str, status: int, error: str, what: str) -> str:
    if status == 401:
        return f"the server at {url} refused the API key: pass --api-key (AGENTSTREAM_API_KEY); `{prog()} up` accepts dev-key"
    if status == 404 and what:
        return f"{what} not found (for this API key)"
    if status == 422 and error.startswith("unknown agent"):
        return f"{error}: pick one with --agent (`{prog()} agents` lists them)"
    return f"{error} (HTTP {status})" if status else error


def _json(response: httpx.Response) -> Any:
    if "json" not in response.headers.get("content-type", ""):
        return None
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None
