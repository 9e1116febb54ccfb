"""The reference Embedding Service: ``input: {texts: [...]}`` -> ``{model, dim, embeddings}``."""

from __future__ import annotations

import asyncio
from typing import Any

from examples.services.embedders import Embedder
from examples.services.jobs import JobService, Reporter
from schemas.jobs import EmbeddingInput, EmbeddingResult


def embedding_service(embedder: Embedder, *, token: str, reporter: Reporter, delay_s: float = 0.3) -> JobService:
    async def work(data: dict[str, Any]) -> tuple[Any, dict[str, int] | None]:
        texts = EmbeddingInput.model_validate(data).texts  # a ValidationError is the job's failure reason
        vectors = await asyncio.to_thread(embedder.embed, texts)
        result = EmbeddingResult(model=embedder.name, embeddings=vectors.tolist())
        return {"model": result.model, "dim": embedder.dim, "embeddings": result.embeddings}, None

    return JobService("embedding", work, token=token, reporter=reporter, delay_s=delay_s)
