"""Kafka client settings shared by both services: where the cluster is, how to authenticate, how topics look."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.topics import Topics

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"]


class KafkaSettings(BaseSettings):
    """``AGENTSTREAM_KAFKA_*``. Secrets are ``SecretStr``, so logs and reprs show ``**********``."""

    model_config = SettingsConfigDict(env_prefix="AGENTSTREAM_KAFKA_", extra="ignore")

    bootstrap: str = "127.0.0.1:9092"
    topic_prefix: str = "agentstream."
    partitions: int = 6
    linger_ms: int = 2
    request_timeout_ms: int = 10_000
    # How long the broker holds a long-lived reader's fetch when there is nothing to read (aiokafka's
    # default, 500 ms: two fetches a second per idle reader). Higher makes an idle stack quieter
    # (5 s: orchestrator 1.55 -> 1.35 %, executor a little) but is not free: a partition resumed,
    # seeked or newly assigned while a fetch is out waits for that fetch, and at 5 s a request's
    # path through the lanes and followers took seconds (an e2e test: 4 s -> 26 s). So the default
    # stays at 500 ms until those waits are gone.
    fetch_max_wait_ms: int = 500

    # -- security (docs/kafka.md) ---------------------------------------------------------
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism = "SCRAM-SHA-512"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    # OAUTHBEARER: either an OAuth 2 client-credentials token endpoint (the common managed-cluster
    # setup), or ``module:callable`` returning an aiokafka ``AbstractTokenProvider`` for anything else.
    oauth_token_url: str | None = None
    oauth_client_id: str | None = None
    oauth_client_secret: SecretStr | None = None
    oauth_scope: str | None = None
    oauth_token_provider: str | None = None
    # TLS: the CA that signed the brokers' certificates (the system trust store when unset), and a
    # client certificate and key for mutual TLS.
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_key_password: SecretStr | None = None
    ssl_check_hostname: bool = True

    # -- topics (services/common/topicplan.py) ---------------------------------------------
    # -1: the cluster's default.replication.factor / min.insync.replicas (CreateTopics semantics).
    replication_factor: int = -1
    min_insync_replicas: int | None = None
    # Per-topic overrides, keyed by the topic's name without prefix (e.g. ``executions.events``).
    topic_replication: dict[str, int] = Field(default_factory=dict)
    topic_min_insync_replicas: dict[str, int] = Field(default_factory=dict)
    topic_retention_ms: dict[str, int] = Field(default_factory=dict)

    # The SSL context and the OAUTHBEARER token provider, built once by services.common.kafka so all
    # clients of a process share one CA load and one cached token.
    _security: dict[str, Any] | None = PrivateAttr(default=None)

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @model_validator(mode="after")
    def _complete(self) -> KafkaSettings:
        # Say at start what is missing, rather than letting the broker drop the connection later.
        prefix = "AGENTSTREAM_KAFKA_"
        if self.uses_sasl and self.sasl_mechanism != "OAUTHBEARER" and (not self.sasl_username or self.sasl_password is None):
            raise ValueError(f"{self.sasl_mechanism} needs {prefix}SASL_USERNAME and {prefix}SASL_PASSWORD")
        if self.uses_sasl and self.sasl_mechanism == "OAUTHBEARER" and not (self.oauth_token_url or self.oauth_token_provider):
            raise ValueError(f"OAUTHBEARER needs {prefix}OAUTH_TOKEN_URL (client credentials) or {prefix}OAUTH_TOKEN_PROVIDER")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError(f"mutual TLS needs both {prefix}SSL_CERTFILE and {prefix}SSL_KEYFILE")
        return self
