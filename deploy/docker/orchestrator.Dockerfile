# The orchestrator: HTTP API, WebSocket bridge, /docs, /console, /metrics on port 8000.
#   docker build -f deploy/docker/orchestrator.Dockerfile -t agentstream-orchestrator .
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
    AGENTSTREAM_HOST=0.0.0.0 \
    AGENTSTREAM_PORT=8000 \
    AGENTSTREAM_DATABASE_URL=sqlite+aiosqlite:////home/agentstream/state.db
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health/live')"
ENTRYPOINT ["agentstream", "orchestrator"]
