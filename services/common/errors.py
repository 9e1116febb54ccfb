"""One error base for the whole project: every exception class under ``services/`` descends from
``AgentstreamError`` (``tests/unit/test_error_tree.py`` walks them), and each says whether trying
again can help (``retriable``).

The domain raises what happened (``DomainError``'s kinds); one place per edge says what that means
there: ``services/orchestrator/problems.py`` for HTTP (status, ``{"error", "detail"}``, ``Retry-After``)
and WebSocket close codes, the readers' DLQ for Kafka (the message is the reason).

AgentstreamError                      retriable
 ├── DomainError                       (mapped by the edges: HTTP status / WebSocket close code)
 │    ├── InvalidInput                  no    422 / 1008   the request is understood but not acceptable
 │    │    └── CallbackURLError         no    422          orchestrator/callbacks.py: a refused callback_url
 │    ├── Unauthorized                  no    401 / 4401   no or a revoked credential
 │    ├── NotFound                      no    404 / 4404   nothing of this tenant's has that id
 │    ├── Conflict                      no    409 / 4409   the state does not allow it (finished, taken, busy)
 │    ├── Gone                          no    410 / 4410   past the topic's retention (the bridge)
 │    ├── RateLimited                   yes   429 / 4429   a tenant limit; ``retry_after`` seconds
 │    ├── Unavailable                   yes   503 / 1013   Kafka or the store did not answer; ``retry_after``
 │    └── HTTPError                     by status          orchestrator/http.py: the HTTP edge's own refusals
 ├── KafkaUnavailable                  yes   nothing answers at the bootstrap address
 ├── KafkaSecurityError                no    TLS, SASL or ACLs refuse us; the message says what to set
 ├── AclRefused                        no    common/acls.py: the cluster refused an ACL change
 ├── PoisonRecord                      no    the record goes to the DLQ
 ├── TopicMisfit, TopicCreationRefused no    common/topicplan.py: the cluster's topics do not fit the plan
 ├── RefusedAddress                    no    common/urlguard.py: a user's URL points where it may not
 ├── UnresolvedHost                    yes   common/urlguard.py: DNS gave no answer
 ├── AgentCatalogError                 no    common/agents.py: the agents file or service is wrong
 ├── AgentServiceUnavailable           yes   common/agents.py
 ├── LocalKafkaError                   no    common/localkafka.py: the local broker cannot be fetched or run
 ├── Parked                          no    executor/approvals.py: not a failure; the attempt ends waiting for an approval
 ├── ReplayError                       no    replay.py: the server refused a replay
 ├── SignatureRejected                 no    orchestrator/signatures.py: an ingress record is not signed right
 ├── StoreError                        yes   orchestrator/store/: the database did not answer
 ├── MigrationError                    no    orchestrator/store/migrations.py
 ├── ServiceError                      -     orchestrator/coordinator.py: the external services' clients
 │    ├── ServiceUnavailable           yes
 │    ├── CircuitOpen                  yes
 │    ├── ServiceRejected              no
 │    └── BadServiceAnswer             no
 ├── Fenced                            yes   executor/fence.py: a newer attempt owns the record
 ├── ProviderError                     per   executor/providers/base.py: a model call failed
 ├── ExecutionError                    per   executor/loop.py: the execution cannot finish
 ├── ToolError                         per   executor/tools.py: the tool's error goes back to the model
 └── ToolDefinitionError               no    executor/tools.py: a tool cannot be registered
"""

from __future__ import annotations

from typing import Any


class AgentstreamError(Exception):
    retriable: bool = False


class DomainError(AgentstreamError):
    """What the domain refuses, in its own words; the edges map the kind (problems.py). ``detail`` is
    shown to the client as is (JSON); ``retry_after`` (seconds) becomes ``Retry-After``."""

    def __init__(self, message: str, *, detail: Any = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.detail = detail
        self.retry_after = retry_after

    @property
    def error(self) -> str:
        return str(self)


class InvalidInput(DomainError):
    pass


class Unauthorized(DomainError):
    pass


class NotFound(DomainError):
    pass


class Conflict(DomainError):
    pass


class Gone(DomainError):
    pass


class RateLimited(DomainError):
    retriable = True

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message, detail={"retry_after_s": round(retry_after, 3)}, retry_after=retry_after)


class Unavailable(DomainError):
    retriable = True


class KafkaUnavailable(AgentstreamError):
    retriable = True

    def __init__(self, bootstrap: str, cause: BaseException | None = None) -> None:
        super().__init__(
            f"Kafka is not reachable at {bootstrap}: run `agentstream kafka start` "
            f"or set AGENTSTREAM_KAFKA_BOOTSTRAP" + (f" ({cause})" if cause else "")
        )
        self.bootstrap = bootstrap


class KafkaSecurityError(AgentstreamError):
    """The cluster answers but refuses this client: a wrong password, an untrusted certificate, a
    missing ACL. Retrying cannot help; the one-line message names the setting to fix."""

    retriable = False


class PoisonRecord(AgentstreamError):
    retriable = False
