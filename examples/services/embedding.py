"""The reference Embedding Service: ``input: {texts: [...]}`` -> ``{model, dim, embeddings}``."""

from __future__ import annotations

import asyncio
from typing import Any

from examples.services.embedders import Embedder
from examples.services.jobs import JobService, Reporter


def embedding_service(embedder: Embedder, *, token: str, reporter: Reporter, delay_s: float = 0.3) -> JobService:
    async def work(data: dict[str, Any]) -> tuple[Any, dict[str, int] | None]:
        texts = [str(t) for t in data.get("texts", [])]
        if not texts:
            raise ValueError("texts must be a non-empty list of strings")
        vectors = await asyncio.to_thread(embedder.embed, texts)
        return {"model": embedder.name, "dim": embedder.dim, "embeddings": vectors.tolist()}, None

    return JobService("embedding", work, token=token, reporter=reporter, delay_s=delay_s)
