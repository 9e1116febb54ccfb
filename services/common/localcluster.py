"""Several local KRaft nodes as one cluster: a real quorum and real replication, on loopback."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from services.common.localkafka import DEPLOY_DIR, LocalKafka, kafka_uuid


@dataclass(frozen=True, kw_only=True)
class LocalCluster:
    """``brokers`` KRaft nodes (each broker and controller, three JVMs for three) on loopback: node i
    listens on ``port + 10*i`` (PLAINTEXT), ``+1`` (controller), ``+2`` (SASL_SSL when ``sasl``).
    Topics get replication ``min(3, brokers)`` and ``min.insync.replicas`` one less, by default."""

    brokers: int = 3
    port: int = 29092
    heap: str = "384m"
    sasl: bool = False
    users: tuple[tuple[str, str], ...] = ()
    home: Path = DEPLOY_DIR

    @property
    def nodes(self) -> list[LocalKafka]:
        voters = ",".join(f"{i + 1}@127.0.0.1:{self.port + 10 * i + 1}" for i in range(self.brokers))
        replication = min(3, self.brokers)
        overrides = (
            ("default.replication.factor", str(replication)),
            ("min.insync.replicas", str(max(1, replication - 1))),
            ("offsets.topic.replication.factor", str(replication)),
            ("transaction.state.log.replication.factor", str(replication)),
            ("transaction.state.log.min.isr", str(max(1, replication - 1))),
            ("share.coordinator.state.topic.replication.factor", str(replication)),
            ("share.coordinator.state.topic.min.isr", str(max(1, replication - 1))),
        )
        return [
            LocalKafka(
                port=self.port + 10 * i,
                controller_port=self.port + 10 * i + 1,
                heap=self.heap,
                home=self.home,
                node_id=i + 1,
                voters=voters,
                cluster_id=kafka_uuid(f"agentstream-local-cluster-{self.port}-{self.brokers}"),
                sasl_port=self.port + 10 * i + 2 if self.sasl else None,
                users=self.users,
                overrides=overrides,
            )
            for i in range(self.brokers)
        ]

    @property
    def bootstrap(self) -> str:
        return ",".join(node.bootstrap for node in self.nodes)

    @property
    def sasl_bootstrap(self) -> str:
        return ",".join(node.sasl_bootstrap for node in self.nodes)

    def start(self, *, timeout: float = 120.0, on_step: Callable[[str], None] = lambda _s: None) -> float:
        started = time.monotonic()
        nodes = self.nodes
        if self.sasl:
            self._share_certificates(nodes)
        procs = [None if node.is_running() else node.launch(on_step=on_step) for node in nodes]
        on_step(f"waiting until the {len(nodes)} brokers answer metadata requests")
        for node, proc in zip(nodes, procs, strict=True):
            node.wait_ready(proc, deadline=started + timeout)
        return time.monotonic() - started

    def _share_certificates(self, nodes: list[LocalKafka]) -> None:
        # One CA for the whole cluster, so a client trusts every broker with one file.
        from services.common.localtls import make_certificates

        first = nodes[0]
        if not first.ca_file.exists():
            make_certificates(first.tls_dir)
        for node in nodes[1:]:
            node.tls_dir.mkdir(parents=True, exist_ok=True)
            for name in ("ca.pem", "server.pem"):
                shutil.copy2(first.tls_dir / name, node.tls_dir / name)

    def stop(self) -> bool:
        return any([node.stop() for node in self.nodes])

    def reset(self) -> None:
        for node in self.nodes:
            node.reset()
