"""A genuine Apache Kafka (KRaft, broker + controller in one JVM per node) for local use and CI.

One node by default; ``localcluster.LocalCluster`` runs several (a real quorum and replication, on loopback).
A node can also open a SASL_SSL listener (SCRAM, PLAIN and unsecured OAUTHBEARER, certificates made at
start by ``localtls``) with the StandardAuthorizer and ACLs; its PLAINTEXT listener then serves the
brokers themselves and local administration (``User:ANONYMOUS`` is a super user there).

The jars come from Maven Central through ``deploy/kafka/pom.xml``; data, logs and the PID file live
in git-ignored folders under ``deploy/kafka``, keyed by port. Nothing here runs at import.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from services.common.errors import AgentstreamError

DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy" / "kafka"
_JAAS = "org.apache.kafka.common.security"


class LocalKafkaError(AgentstreamError):
    """The local broker could not be fetched, started or stopped; the message says what to do."""


@dataclass(frozen=True, kw_only=True)
class LocalKafka:
    port: int = 9092
    controller_port: int = 9093
    heap: str = "1g"
    home: Path = DEPLOY_DIR
    node_id: int = 1
    # A multi-node quorum: ``1@127.0.0.1:9093,2@...`` (static voters) and the cluster id every node is
    # formatted with; empty for one standalone node.
    voters: str = ""
    cluster_id: str = ""
    # A SASL_SSL listener on this port, with these SCRAM (and PLAIN) users and the ACL authorizer.
    sasl_port: int | None = None
    users: tuple[tuple[str, str], ...] = ()
    overrides: tuple[tuple[str, str], ...] = ()  # extra server properties (e.g. replication defaults)

    @property
    def lib_dir(self) -> Path:
        return self.home / "lib"

    @property
    def data_dir(self) -> Path:
        return self.home / "data" / str(self.port)

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs" / str(self.port)

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"kafka-{self.port}.pid"

    @property
    def config_file(self) -> Path:
        return self.run_dir / f"server-{self.port}.properties"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def sasl_bootstrap(self) -> str:
        return f"localhost:{self.sasl_port}"  # a name the certificate holds, so hostname checks pass

    @property
    def tls_dir(self) -> Path:
        return self.run_dir / f"tls-{self.port}"

    @property
    def ca_file(self) -> Path:
        """The CA clients trust for the SASL_SSL listener (AGENTSTREAM_KAFKA_SSL_CAFILE)."""
        return self.tls_dir / "ca.pem"

    # -- jars -------------------------------------------------------------------------------
    def jars_present(self) -> bool:
        """True if ``lib/`` holds the jars of the pom.xml as it is now (a version bump re-fetches)."""
        stamp = self.lib_dir / ".pom.sha256"
        return any(self.lib_dir.glob("kafka_2.13-*.jar")) and stamp.exists() and stamp.read_text() == self._pom_digest()

    def _pom_digest(self) -> str:
        return hashlib.sha256((self.home / "pom.xml").read_bytes()).hexdigest()

    def fetch_jars(self) -> None:
        """Resolve Kafka's runtime jars from Maven Central into ``lib/`` (cached afterwards)."""
        if self.jars_present():
            return
        mvn = shutil.which("mvn")
        if mvn is None:
            raise LocalKafkaError(
                "Maven (mvn) is not installed: install it (apt-get install maven) so the Kafka jars "
                "can be fetched from Maven Central, or set AGENTSTREAM_KAFKA_BOOTSTRAP to a running broker"
            )
        tmp = self.home / "lib.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        proc = subprocess.run(
            [
                mvn,
                "-q",
                "-B",
                "-f",
                str(self.home / "pom.xml"),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={tmp}",
                "-DincludeScope=runtime",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise LocalKafkaError(
                "could not fetch the Apache Kafka jars from Maven Central "
                f"(mvn exited {proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
            )
        (tmp / ".pom.sha256").write_text(self._pom_digest())
        shutil.rmtree(self.lib_dir, ignore_errors=True)
        tmp.rename(self.lib_dir)

    # -- process ----------------------------------------------------------------------------
    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def is_running(self) -> bool:
        return self.pid() is not None

    def _java(self, main: str, *args: str, heap: str | None = None) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise LocalKafkaError("java is not installed: install OpenJDK 17 or newer (apt-get install openjdk-17-jre-headless)")
        opts = [f"-Xmx{heap}", f"-Xms{heap}"] if heap else ["-Xmx256m"]
        return [
            java,
            *opts,
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={self.logs_dir}",
            f"-Dlog4j2.configurationFile={self.home / 'log4j2.yaml'}",
            "-cp",
            str(self.lib_dir / "*"),
            main,
            *args,
        ]

    def _write_config(self) -> None:
        template = (self.home / "server.properties.template").read_text()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        text = template.format(port=self.port, controller_port=self.controller_port, data_dir=self.data_dir)
        self.config_file.write_text(_override(text, self._properties()))

    def _properties(self) -> dict[str, str | None]:
        """What differs from the single-node template (``None`` removes a line)."""
        props: dict[str, str | None] = {"node.id": str(self.node_id)}
        if self.voters:
            props |= {"controller.quorum.voters": self.voters, "controller.quorum.bootstrap.servers": None}
        if self.sasl_port is not None:
            props |= self._sasl_properties()
        props |= dict(self.overrides)
        return props

    def _sasl_properties(self) -> dict[str, str | None]:
        from services.common.localtls import make_certificates  # cryptography only when asked for

        certs = make_certificates(self.tls_dir) if not self.ca_file.exists() else None
        server = certs.server if certs else self.tls_dir / "server.pem"
        listeners = f"PLAINTEXT://127.0.0.1:{self.port},SASL_SSL://localhost:{self.sasl_port},CONTROLLER://127.0.0.1:{self.controller_port}"
        plain_users = " ".join(f'user_{name}="{password}"' for name, password in self.users)
        scram = f"{_JAAS}.scram.ScramLoginModule required;"
        return {
            "listeners": listeners.replace("localhost:", "127.0.0.1:", 1),
            "advertised.listeners": listeners,
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL",
            "sasl.enabled.mechanisms": "SCRAM-SHA-256,SCRAM-SHA-512,PLAIN,OAUTHBEARER",
            "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config": scram,
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": scram,
            "listener.name.sasl_ssl.plain.sasl.jaas.config": f"{_JAAS}.plain.PlainLoginModule required {plain_users};",
            # Unsecured (unsigned) JWTs, principal = "sub": enough to exercise a token provider locally.
            "listener.name.sasl_ssl.oauthbearer.sasl.jaas.config": f"{_JAAS}.oauthbearer.OAuthBearerLoginModule required;",
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(server),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.ca_file),
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": "User:ANONYMOUS;User:admin",
            "allow.everyone.if.no.acl.found": "false",
        }

    def _format_storage(self) -> None:
        if (self.data_dir / "meta.properties").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        quorum = [] if self.voters else ["--standalone"]
        scram = [
            arg
            for name, password in self.users
            for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512")
            for arg in ("--add-scram", f"{mechanism}=[name={name},password={password}]")
        ]
        proc = subprocess.run(
            self._java(
                "kafka.tools.StorageTool",
                "format",
                # One token (``--cluster-id=ID``): the option's parser never takes the id for an option.
                f"--cluster-id={self.cluster_id or kafka_uuid()}",
                "--config",
                str(self.config_file),
                *quorum,
                *scram,
                "--ignore-formatted",
            ),
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise LocalKafkaError(f"formatting Kafka storage failed:\n{proc.stdout}{proc.stderr}")

    def start(self, *, timeout: float = 90.0, on_step: Callable[[str], None] = lambda _s: None) -> float:
        """Start the broker (fetching jars first if needed); return seconds until it answered metadata."""
        if self.is_running():
            return 0.0
        started = time.monotonic()
        proc = self.launch(on_step=on_step)
        on_step("waiting until the broker answers metadata requests")
        self.wait_ready(proc, deadline=started + timeout)
        return time.monotonic() - started

    def launch(self, *, on_step: Callable[[str], None] = lambda _s: None) -> subprocess.Popen[bytes]:
        """Format (first run) and start the JVM without waiting: the nodes of a quorum start together."""
        if _port_open(self.port):
            raise LocalKafkaError(
                f"port {self.port} is taken by another process: stop it, or start on another port "
                "(agentstream kafka start --port N) and set AGENTSTREAM_KAFKA_BOOTSTRAP"
            )
        on_step("fetching Apache Kafka jars from Maven Central (first run only)")
        self.fetch_jars()
        on_step("writing KRaft config and formatting storage")
        self._write_config()
        self._format_storage()
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        on_step(f"starting Apache Kafka on {self.bootstrap}")
        with open(self.logs_dir / "stdout.log", "ab") as out:
            proc = subprocess.Popen(
                self._java("kafka.Kafka", str(self.config_file), heap=self.heap),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pid_file.write_text(str(proc.pid))
        return proc

    def wait_ready(self, proc: subprocess.Popen[bytes] | None, *, deadline: float) -> None:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise LocalKafkaError(f"Kafka exited with code {proc.returncode}; see {self.logs_dir / 'server.log'}")
            if asyncio.run(answers_metadata(self.bootstrap)):
                return
            time.sleep(0.3)
        raise LocalKafkaError(f"Kafka did not answer within the timeout; see {self.logs_dir / 'server.log'}")

    def stop(self, *, timeout: float = 30.0) -> bool:
        """Stop the broker by its PID (SIGTERM, then SIGKILL); idempotent. True if one was running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            _reap(pid)
            time.sleep(0.2)
        else:
            os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return True

    def kill(self) -> None:
        """SIGKILL, as a crashed machine would: no controlled shutdown, no leadership hand-over."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            while self.pid() is not None:
                _reap(pid)
                time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)

    def reset(self) -> None:
        """Stop and delete all data (topics, offsets) and certificates."""
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        shutil.rmtree(self.tls_dir, ignore_errors=True)


async def answers_metadata(bootstrap: str, *, timeout: float = 3.0) -> bool:
    from aiokafka import AIOKafkaClient  # local import: nothing connects at import time

    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout)
    except (OSError, TimeoutError):
        return False
    writer.close()

    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    try:
        await asyncio.wait_for(client.bootstrap(), timeout)
    except Exception:
        return False
    finally:
        await client.close()
    return True


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def kafka_uuid(seed: str | None = None) -> str:
    """A Kafka cluster id (URL-safe base64 of 16 bytes). Never one that starts with ``-``, as Kafka's
    own ``Uuid.randomUuid`` avoids: ``kafka-storage format --cluster-id -x...`` takes it for an option
    and fails (1 in 64 random ids did)."""
    import base64

    for attempt in range(1000):
        if seed:
            raw = uuid.uuid5(uuid.NAMESPACE_URL, seed if attempt == 0 else f"{seed}#{attempt}")
        else:
            raw = uuid.uuid4()
        text = base64.urlsafe_b64encode(raw.bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text
    raise AssertionError("unreachable: 1000 ids in a row starting with '-'")


def _override(properties: str, changes: dict[str, str | None]) -> str:
    """``key=value`` lines with ``changes`` applied: replaced in place, removed (None) or appended."""
    lines, seen = [], set()
    for line in properties.splitlines():
        key = line.split("=", 1)[0].strip() if "=" in line and not line.lstrip().startswith("#") else None
        if key in changes:
            seen.add(key)
            if changes[key] is not None:
                lines.append(f"{key}={changes[key]}")
            continue
        lines.append(line)
    lines += [f"{k}={v}" for k, v in changes.items() if k not in seen and v is not None]
    return "\n".join(lines) + "\n"
