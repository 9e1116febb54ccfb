"""One error base for what services share.

AgentstreamError
 ├── KafkaUnavailable      (retriable)
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


class PoisonRecord(AgentstreamError):
    retriable = False
