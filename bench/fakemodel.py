"""The fake model in its own process: tests/fakes' FakeOpenAI, its reply chosen by the model name.

Model ``bench-<rate>-<tokens>-<first_token_delay_ms>`` streams ``tokens`` content deltas at ``rate``
tokens/s after the first-token delay; each delta is ``"<send time>;"`` so any hop that forwards the
text keeps the stamp.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import uvloop

from tests.fakes.openai_server import FakeOpenAI, Reply

TOKEN = "{sent_at};"


def model_name(rate: float, tokens: int, first_token_delay_ms: float) -> str:
    return f"bench-{rate:g}-{tokens}-{first_token_delay_ms:g}"


def reply_for(body: dict[str, Any]) -> Reply:
    _, rate, tokens, delay_ms = str(body.get("model", "bench-50-10-0")).split("-")
    return Reply(
        text=(TOKEN,) * int(tokens),
        token_delay_s=1 / float(rate),
        first_token_delay_s=float(delay_ms) / 1000,
        stamp_tokens=True,
    )


# asyncio's default listen backlog is 100: 500 streams connecting at once overflowed it (Linux counted
# ~500 ListenOverflows per 500-stream step), and each dropped handshake waits >= 1 s for a SYN-ACK
# retransmit, which slowed the floor (and the executor's model calls) by the bench's model, not by theirs.
BACKLOG = 2048


class BenchModel(FakeOpenAI):
    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, backlog=BACKLOG)
        self.port = self._server.sockets[0].getsockname()[1]


async def serve(port: int) -> None:
    fake = BenchModel(port=port, default=reply_for)
    async with fake:
        print(fake.port, flush=True)
        while True:
            await asyncio.sleep(5)  # nobody reads them here
            fake.requests.clear()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
