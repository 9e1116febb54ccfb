"""One error base for what services share.

AgentstreamError
 ├── KafkaUnavailable      (retriable: nothing answers at the bootstrap address)
 ├── KafkaSecurityError    (not retriable: TLS, SASL or ACLs refuse us; the message says what to set)
 └── PoisonRecord          (not retriable: the record goes to the DLQ)
"""

from __future__ import annotations


class AgentstreamError(Exception):
    retriable: bool = False


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
