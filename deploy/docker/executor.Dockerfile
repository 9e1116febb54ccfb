# One executor (a member of the consumer group); Prometheus metrics on port 9464.
#   docker build -f deploy/docker/executor.Dockerfile -t agentstream-executor .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY services ./services
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 agentstream
COPY --from=build /install /usr/local
USER agentstream
WORKDIR /home/agentstream
ENV PYTHONUNBUFFERED=1 \
    AGENTSTREAM_EXECUTOR_METRICS_HOST=0.0.0.0 \
    AGENTSTREAM_EXECUTOR_METRICS_PORT=9464
EXPOSE 9464
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/health/live')"
ENTRYPOINT ["agentstream", "executor"]
