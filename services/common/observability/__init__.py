"""Traces, metrics and structured logs for both services.

- ``tracing``: OpenTelemetry spans joined across Kafka through the W3C ``traceparent`` header.
- ``metrics``: Prometheus metrics, one registry per service, served on ``/metrics``.
- ``logs``: JSON log lines carrying tenant, execution and trace ids; configured secrets redacted.
- ``settings``: ``TelemetrySettings`` and ``configure``, called once by a process's entry point.
"""
