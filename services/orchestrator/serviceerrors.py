"""Errors of the clients of the external services (Query, Embedding)::

    ServiceError (AgentstreamError)
     ├── ServiceUnavailable   retriable: connect error, timeout, 408/425/429/5xx
     ├── CircuitOpen          retriable: too many failures lately; not called until the breaker resets
     ├── ServiceRejected      4xx: the service refused the job
     └── BadServiceAnswer     the answer is not JSON or does not carry our job id

``counts_against_service``: whether the failure counts towards opening the service's circuit breaker.
"""

from __future__ import annotations

from services.common.errors import AgentstreamError


class ServiceError(AgentstreamError):
    counts_against_service = True


class ServiceUnavailable(ServiceError):
    retriable = True


class CircuitOpen(ServiceError):
    retriable = True
    counts_against_service = False


class ServiceRejected(ServiceError):
    counts_against_service = False  # our request was refused; the service itself is fine


class BadServiceAnswer(ServiceError):
    pass
