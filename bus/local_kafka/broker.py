"""The local single-node Kafka broker (KRaft, controller and broker in one JVM) on 127.0.0.1.

Its state lives in one folder: `server.properties`, the KRaft log directory `data/`, the
`broker.log` that takes the JVM's stdout and stderr, and `broker.pid` naming the process that
`start` launched, so that `stop` ends exactly that process and nothing else.
"""

import asyncio
import base64
import contextlib
import fcntl
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import psutil

from bus.errors import BrokerAlreadyRunningError, BrokerNotRunningError, BrokerStartError
from bus.kafka_security import PLAINTEXT
from bus.local_kafka.distribution import KafkaDistribution, find_java
from bus.local_kafka.readiness import answers_metadata
from bus.processes import die_with_parent, port_is_free

LOG_TAIL_LINES = 30
_STACK_FRAME = re.compile(r"\s+(at |\.\.\. \d+ more)")

# Log lines that explain a failed start better than "it exited"; first match wins.
_KNOWN_FAILURES: tuple[tuple[str, str], ...] = (
    ("Address already in use", "a port it needs is taken by another process"),
    ("UnsupportedClassVersionError", "the Java in use is too old for this Kafka release"),
    ("InconsistentClusterIdException", "the data directory belongs to another cluster"),
    ("Invalid cluster.id", "the data directory belongs to another cluster"),
    ("doesn't match previous node id", "the data directory belongs to another node"),
    ("Could not reserve enough space", "the JVM could not reserve its heap"),
    ("OutOfMemoryError", "the JVM ran out of memory"),
    ("No readable meta.properties", "the data directory was not formatted"),
)


def single_node_properties(client_port: int, controller_port: int, log_dir: Path) -> dict[str, str]:
    """A KRaft node that is its own controller, with every replication factor set to 1."""
    return {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{client_port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{client_port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(log_dir),
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        # A lone developer's consumer group should not wait 3 s for members that never come.
        "group.initial.rebalance.delay.ms": "0",
    }


@dataclass(frozen=True)
class SecureListener:
    """A SASL_SSL client listener beside the PLAINTEXT one (which stays the inter-broker
    listener): TLS from one PEM file, and SCRAM users created when the storage is formatted.

    `keystore` holds the broker's private key in PKCS#8 PEM (`BEGIN PRIVATE KEY`, or `BEGIN
    ENCRYPTED PRIVATE KEY` with `key_password`) followed by its certificate chain; Kafka's PEM
    key store takes no other key format (not `BEGIN EC PRIVATE KEY` or `BEGIN RSA ...`).
    Users are added only when the data directory is first formatted.

    With `mtls_port` and `client_ca`, an SSL listener (TLS, no SASL) with the same key store is
    opened there too, which asks every client for a certificate signed by `client_ca` (PEM).
    """

    port: int
    keystore: Path
    users: Mapping[str, str]  # name: password
    mechanism: Literal["SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    key_password: str | None = None
    mtls_port: int | None = None
    client_ca: Path | None = None


def secure_listener_properties(
    properties: Mapping[str, str], listener: SecureListener
) -> dict[str, str]:
    """`properties` with the SASL_SSL listener added to the PLAINTEXT and CONTROLLER ones."""
    address = f"SASL_SSL://127.0.0.1:{listener.port}"
    prefix = "listener.name.sasl_ssl."
    mechanism = listener.mechanism.lower()
    added = {
        "listeners": f"{properties['listeners']},{address}",
        "advertised.listeners": f"{properties['advertised.listeners']},{address}",
        "listener.security.protocol.map": (
            f"{properties['listener.security.protocol.map']},SASL_SSL:SASL_SSL"
        ),
        f"{prefix}sasl.enabled.mechanisms": listener.mechanism,
        f"{prefix}{mechanism}.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        ),
        f"{prefix}ssl.keystore.type": "PEM",
        f"{prefix}ssl.keystore.location": str(listener.keystore),
    }
    if listener.key_password is not None:
        added[f"{prefix}ssl.key.password"] = listener.key_password
    if (listener.mtls_port is None) != (listener.client_ca is None):
        raise ValueError("an mTLS listener needs both mtls_port and client_ca")
    if listener.mtls_port is not None and listener.client_ca is not None:
        mtls = f"SSL://127.0.0.1:{listener.mtls_port}"
        tls_prefix = "listener.name.ssl."
        added |= {
            "listeners": f"{added['listeners']},{mtls}",
            "advertised.listeners": f"{added['advertised.listeners']},{mtls}",
            "listener.security.protocol.map": f"{added['listener.security.protocol.map']},SSL:SSL",
            f"{tls_prefix}ssl.keystore.type": "PEM",
            f"{tls_prefix}ssl.keystore.location": str(listener.keystore),
            f"{tls_prefix}ssl.truststore.type": "PEM",
            f"{tls_prefix}ssl.truststore.location": str(listener.client_ca),
            f"{tls_prefix}ssl.client.auth": "required",
        }
        if listener.key_password is not None:
            added[f"{tls_prefix}ssl.key.password"] = listener.key_password
    return {**properties, **added}


@dataclass(frozen=True)
class BrokerStatus:
    running: bool
    pid: int | None
    bootstrap_servers: str
    log_file: Path


@dataclass
class LocalKafka:
    """One local broker whose state lives under `state_dir`."""

    state_dir: Path
    distribution: KafkaDistribution
    client_port: int = 9092
    controller_port: int = 9093
    overrides: Mapping[str, str] = field(default_factory=dict)
    heap: str = "1g"
    # Tests set this so that a killed test run cannot leave a broker behind.
    die_with_parent: bool = False
    # The nodes of one cluster share it; a lone broker makes up its own when it formats.
    cluster_id: str | None = None
    # A SASL_SSL listener for clients, besides the PLAINTEXT one (tests of Kafka security).
    secure: SecureListener | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def secure_bootstrap_servers(self) -> str:
        """The SASL_SSL listener's address (ValueError if the broker has none)."""
        if self.secure is None:
            raise ValueError("this broker has no secure listener")
        return f"127.0.0.1:{self.secure.port}"

    @property
    def mtls_bootstrap_servers(self) -> str:
        """The SSL listener's address, which asks for client certificates (ValueError if none)."""
        if self.secure is None or self.secure.mtls_port is None:
            raise ValueError("this broker has no mTLS listener")
        return f"127.0.0.1:{self.secure.mtls_port}"

    @property
    def properties_file(self) -> Path:
        return self.state_dir / "server.properties"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "broker.log"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "broker.pid"

    @property
    def data_dir(self) -> Path:
        return self.state_dir / "data"

    def status(self) -> BrokerStatus:
        pid = self._running_pid()
        return BrokerStatus(
            running=pid is not None,
            pid=pid,
            bootstrap_servers=self._recorded_bootstrap() if pid else self.bootstrap_servers,
            log_file=self.log_file,
        )

    async def start(self, ready_within: float = 60.0) -> BrokerStatus:
        """Launch the broker and return once it answers a metadata request."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # Two `bus run` started together must not launch two brokers on one data directory:
        # the second waits here, then finds the first one's broker running.
        with (self.state_dir / "start.lock").open("w") as lock:
            await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
            pid = self._running_pid()
            if pid is not None:
                raise BrokerAlreadyRunningError(
                    f"the local Kafka broker already runs (pid {pid}) at "
                    f"{self._recorded_bootstrap()}; use it as it is, or end it with "
                    "`bus kafka stop`"
                )
            command = await asyncio.to_thread(self._prepare)
            process = self._launch(command)
            try:
                await self._wait_until_ready(process, ready_within)
            except BaseException:
                self._terminate(process.pid, grace=5.0)
                self.pid_file.unlink(missing_ok=True)
                raise
        return self.status()

    def stop(self, timeout: float = 30.0) -> int:
        """End the broker that `start` launched (and only it); return its pid."""
        pid = self._running_pid()
        if pid is None:
            raise BrokerNotRunningError(f"no local Kafka broker runs from {self.state_dir}")
        self._terminate(pid, grace=timeout)
        self.pid_file.unlink(missing_ok=True)
        return pid

    def _prepare(self) -> list[str]:
        """Everything before launch that blocks: Java, jars, free ports, config and format."""
        java = find_java()
        libs = self.distribution.ensure()
        ports = [self.client_port, self.controller_port]
        if self.secure is not None:
            ports += [self.secure.port, *filter(None, [self.secure.mtls_port])]
        for port in ports:
            if not port_is_free(port):
                raise BrokerStartError(
                    f"port {port} on 127.0.0.1 is taken by another process, so the local broker "
                    "cannot listen there; stop that process or choose free ports with "
                    "BUS_KAFKA_PORT and BUS_KAFKA_CONTROLLER_PORT"
                )
        properties = single_node_properties(self.client_port, self.controller_port, self.data_dir)
        if self.secure is not None:
            properties = secure_listener_properties(properties, self.secure)
        properties.update(self.overrides)
        self.properties_file.write_text(
            "".join(f"{key}={value}\n" for key, value in properties.items())
        )
        classpath = [
            str(java),
            f"-Dlog4j2.configurationFile={self.distribution.log4j_config}",
            "-cp",
            f"{libs}/*",
        ]
        if not (self.data_dir / "meta.properties").exists():
            cluster_id = self.cluster_id or new_cluster_id()
            formatted = subprocess.run(
                [
                    *classpath,
                    "kafka.tools.StorageTool",
                    "format",
                    "--cluster-id",
                    cluster_id,
                    "--config",
                    str(self.properties_file),
                    *self._scram_users(),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if formatted.returncode != 0:
                raise BrokerStartError(
                    f"formatting the KRaft storage in {self.data_dir} failed "
                    f"(exit {formatted.returncode}); delete that folder to start afresh\n"
                    + _tail(formatted.stdout + formatted.stderr)
                )
        return [
            classpath[0],
            "-Xms256m",
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            *classpath[1:],
            "kafka.Kafka",
            str(self.properties_file),
        ]

    def _scram_users(self) -> list[str]:
        if self.secure is None:
            return []
        mechanism = self.secure.mechanism
        return [
            argument
            for name, password in self.secure.users.items()
            for argument in ("--add-scram", f"{mechanism}=[name={name},password={password}]")
        ]

    def _launch(self, command: list[str]) -> "subprocess.Popen[bytes]":
        with self.log_file.open("ab") as log:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own session: Ctrl-C in the terminal that ran `bus kafka start` does not
                # reach it, and `stop` can end its whole process group.
                start_new_session=True,
                preexec_fn=die_with_parent if self.die_with_parent else None,  # noqa: PLW1509
            )
        self.pid_file.write_text(f"{process.pid}\n")
        return process

    async def _wait_until_ready(
        self, process: "subprocess.Popen[bytes]", ready_within: float
    ) -> None:
        deadline = time.monotonic() + ready_within
        while True:
            if process.poll() is not None:
                exited = f"the broker exited with code {process.returncode}"
                raise BrokerStartError(self._failure(exited))
            # The client port is PLAINTEXT whatever the process's KAFKA_SECURITY_* say.
            if await answers_metadata(self.bootstrap_servers, security=PLAINTEXT):
                return
            if time.monotonic() > deadline:
                silent = (
                    f"the broker did not answer at {self.bootstrap_servers} "
                    f"within {ready_within:.0f} s"
                )
                raise BrokerStartError(self._failure(silent))
            await asyncio.sleep(0.25)

    def _failure(self, what: str) -> str:
        log = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
        reason = next((why for needle, why in _KNOWN_FAILURES if needle in log), None)
        because = f" because {reason}" if reason else ""
        return f"{what}{because}. Last lines of {self.log_file}:\n{_tail(log)}"

    def _running_pid(self) -> int | None:
        """The pid in the pid file if that process is our broker; a stale pid file is removed."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        if _is_our_broker(pid, self.properties_file):
            return pid
        self.pid_file.unlink(missing_ok=True)
        self.notes.append(f"removed a stale pid file: process {pid} is not this broker any more")
        return None

    def _recorded_bootstrap(self) -> str:
        """The address the running broker was started with, which today's settings may not match."""
        with contextlib.suppress(FileNotFoundError):
            for line in self.properties_file.read_text().splitlines():
                key, _, value = line.partition("=")
                if key == "advertised.listeners":
                    return value.split("://", 1)[-1]
        return self.bootstrap_servers

    @staticmethod
    def _terminate(pid: int, grace: float) -> None:
        """SIGTERM (a clean shutdown), then SIGKILL to the whole process group after `grace`."""
        try:
            process = psutil.Process(pid)
            process.terminate()
            process.wait(timeout=grace)
        except psutil.TimeoutExpired:
            pass
        except psutil.NoSuchProcess:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(psutil.NoSuchProcess, psutil.TimeoutExpired):
            psutil.Process(pid).wait(timeout=5)


def _is_our_broker(pid: int, properties_file: Path) -> bool:
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        command = process.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return "kafka.Kafka" in command and str(properties_file) in command


def _tail(text: str) -> str:
    """The log's last lines without Java stack frames, which would push the cause out of view."""
    lines = [line for line in text.rstrip().splitlines() if not _STACK_FRAME.match(line)]
    return "\n".join(lines[-LOG_TAIL_LINES:])


def new_cluster_id() -> str:
    """A random KRaft cluster id, as Kafka's own Uuid.randomUuid makes them: URL-safe base64 of
    16 random bytes that does not start with '-' (the storage tool would read it as an option:
    one start in 64 failed with "argument --cluster-id: expected one argument")."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id
