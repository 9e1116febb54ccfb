"""The reference Query Service (retrieval + a tiny extractive "LLM"): embeds a small document set at
start, and for ``input: {query, top_k}`` returns the best matching documents and, as the answer, the
sentence of the best document closest to the query. Usage counts words as tokens.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from examples.services.embedders import Embedder
from examples.services.jobs import JobService, Reporter
from schemas.jobs import QueryInput, QueryResult

DOCS_DIR = Path(__file__).resolve().parents[1] / "docs"


@dataclass(frozen=True)
class Doc:
    id: str
    title: str
    text: str


def load_docs(directory: Path = DOCS_DIR) -> list[Doc]:
    docs = []
    for path in sorted(directory.glob("*.md")):
        lines = path.read_text().strip().splitlines()
        title = lines[0].lstrip("# ").strip() if lines else path.stem
        docs.append(Doc(id=path.stem, title=title, text=" ".join(line.strip() for line in lines[1:] if line.strip())))
    return docs


class Index:
    def __init__(self, docs: list[Doc], embedder: Embedder) -> None:
        self.docs = docs
        self.embedder = embedder
        self.vectors = embedder.embed([f"{d.title}. {d.text}" for d in docs])

    def search(self, query: str, top_k: int) -> dict[str, Any]:
        q = self.embedder.embed([query])[0]
        scores = self.vectors @ q
        best = np.argsort(-scores)[:top_k]
        found = [
            {"id": self.docs[i].id, "title": self.docs[i].title, "text": self.docs[i].text, "score": round(float(scores[i]), 4)}
            for i in best
        ]
        sentences = [s for s in re.split(r"(?<=[.!?])\s+", self.docs[int(best[0])].text) if s]
        sentence_scores = self.embedder.embed(sentences) @ q
        answer = sentences[int(np.argmax(sentence_scores))]
        return {"answer": answer, "documents": found}


def query_service(index: Index, *, token: str, reporter: Reporter, delay_s: float = 0.3) -> JobService:
    async def work(data: dict[str, Any]) -> tuple[Any, dict[str, int] | None]:
        request = QueryInput.model_validate(data)  # a ValidationError is the job's failure reason
        query = request.query.strip()
        if not query:
            raise ValueError("query must be a non-empty string")
        result = await asyncio.to_thread(index.search, query, request.top_k)
        prompt = len(query.split()) + sum(len(d["text"].split()) for d in result["documents"])
        completion = len(result["answer"].split())
        QueryResult.model_validate(result)  # what the orchestrator checks it against
        return result, {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    return JobService("query", work, token=token, reporter=reporter, delay_s=delay_s)
