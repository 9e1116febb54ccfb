"""``python -m examples.services``: both reference services, reporting to an orchestrator over its WebSocket.

python -m examples.services --orchestrator http://127.0.0.1:8000 --query-port 8101 --embedding-port 8102
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os

import uvicorn

from examples.services.embedders import make_embedder
from examples.services.embedding import embedding_service
from examples.services.jobs import WebSocketReporter
from examples.services.query import Index, load_docs, query_service


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--orchestrator", default="http://127.0.0.1:8000")
    parser.add_argument("--query-port", type=int, default=8101)
    parser.add_argument("--embedding-port", type=int, default=8102)
    parser.add_argument("--embedder", default=os.environ.get("EXAMPLES_EMBEDDER", "auto"), choices=["auto", "minilm", "hashing"])
    parser.add_argument("--delay", type=float, default=0.5, help="seconds before a job reports completion")
    args = parser.parse_args()
    ws = args.orchestrator.replace("http", "ws", 1)
    query_token = os.environ.get("EXAMPLES_QUERY_TOKEN", "demo-query-token")
    embedding_token = os.environ.get("EXAMPLES_EMBEDDING_TOKEN", "demo-embedding-token")
    embedder = make_embedder(args.embedder)
    logging.basicConfig(level=logging.INFO)
    logging.info("embedder: %s", embedder.name)
    query = query_service(Index(load_docs(), embedder), token=query_token, reporter=WebSocketReporter(ws, query_token), delay_s=args.delay)
    embedding = embedding_service(embedder, token=embedding_token, reporter=WebSocketReporter(ws, embedding_token), delay_s=args.delay)
    servers = [
        uvicorn.Server(uvicorn.Config(query.app(), host="127.0.0.1", port=args.query_port, log_level="warning")),
        uvicorn.Server(uvicorn.Config(embedding.app(), host="127.0.0.1", port=args.embedding_port, log_level="warning")),
    ]
    await asyncio.gather(*(s.serve() for s in servers))


if __name__ == "__main__":
    asyncio.run(main())
