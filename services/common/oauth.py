"""OAUTHBEARER token providers for aiokafka: OAuth 2 client credentials, or one named by import path."""

from __future__ import annotations

import asyncio
import importlib
import time
from typing import Any

import httpx
from aiokafka.abc import AbstractTokenProvider

from services.common.errors import KafkaSecurityError
from services.common.settings import KafkaSettings


class ClientCredentialsTokens(AbstractTokenProvider):  # type: ignore[misc]  # aiokafka ships no type hints
    """Fetches an access token with the client-credentials grant and reuses it until shortly before it
    expires, so every broker connection of every client does not cost a round trip to the IdP."""

    def __init__(
        self, *, url: str, client_id: str, client_secret: str, scope: str | None = None, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self._url = url
        self._form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": client_secret}
        if scope:
            self._form["scope"] = scope
        self._transport = transport
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()

    async def token(self) -> str:
        async with self._lock:
            if self._token is None or time.monotonic() > self._expires_at:
                self._token, lifetime = await self._fetch()
                # Renew at 80% of the lifetime: a connection opened just before expiry still authenticates.
                self._expires_at = time.monotonic() + lifetime * 0.8
            return self._token

    async def _fetch(self) -> tuple[str, float]:
        async with httpx.AsyncClient(transport=self._transport, timeout=10.0) as client:
            try:
                response = await client.post(self._url, data=self._form)
            except httpx.HTTPError as exc:
                raise KafkaSecurityError(f"OAUTHBEARER: the token endpoint {self._url} is not reachable ({exc})") from exc
        if response.status_code != 200:
            raise KafkaSecurityError(
                f"OAUTHBEARER: the token endpoint {self._url} answered {response.status_code}: "
                "check AGENTSTREAM_KAFKA_OAUTH_CLIENT_ID / _CLIENT_SECRET / _SCOPE"
            )
        body: dict[str, Any] = response.json()
        token = body.get("access_token")
        if not isinstance(token, str) or not token:
            raise KafkaSecurityError(f"OAUTHBEARER: the token endpoint {self._url} answered without an access_token")
        lifetime = body.get("expires_in")
        return token, float(lifetime) if isinstance(lifetime, int | float) and lifetime > 0 else 300.0


def token_provider(settings: KafkaSettings) -> AbstractTokenProvider | None:
    if not settings.uses_sasl or settings.sasl_mechanism != "OAUTHBEARER":
        return None
    if settings.oauth_token_provider:
        return _load(settings.oauth_token_provider)
    assert settings.oauth_token_url  # KafkaSettings' validator: one of the two is set
    secret = settings.oauth_client_secret.get_secret_value() if settings.oauth_client_secret else ""
    return ClientCredentialsTokens(
        url=settings.oauth_token_url, client_id=settings.oauth_client_id or "", client_secret=secret, scope=settings.oauth_scope
    )


def _load(path: str) -> AbstractTokenProvider:
    module_name, _, attr = path.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise KafkaSecurityError(f"AGENTSTREAM_KAFKA_OAUTH_TOKEN_PROVIDER={path!r} is not importable as module:callable ({exc})") from exc
    provider = factory() if not isinstance(factory, AbstractTokenProvider) else factory
    if not isinstance(provider, AbstractTokenProvider):
        raise KafkaSecurityError(f"AGENTSTREAM_KAFKA_OAUTH_TOKEN_PROVIDER={path!r} did not give an aiokafka AbstractTokenProvider")
    return provider
