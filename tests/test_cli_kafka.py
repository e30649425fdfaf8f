"""`bus kafka start|status|stop` and `bus run`, run as a user runs them: as subprocesses."""

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from bus.local_kafka.broker import new_cluster_id
from bus.local_kafka.distribution import _java_major
from bus.local_kafka.readiness import answers_metadata
from tests.conftest import ROOT, free_port, free_ports, kafka_cache_dir

Bus = Callable[..., subprocess.CompletedProcess[str]]


def our_java_processes(home: Path) -> list[psutil.Process]:
    """Java processes whose command line names a file under `home`."""
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        if "java" in (process.info["name"] or "") and str(home) in command:
            found.append(process)
    return found


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """A project data directory of its own; any broker left running in it is killed afterwards."""
    yield tmp_path
    for process in our_java_processes(tmp_path):
        process.kill()


@pytest.fixture
def bus_env(home: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "KAFKA_BOOTSTRAP_SERVERS"}
    ports = free_ports(2)
    env.update(
        BUS_HOME=str(home),
        BUS_CACHE_DIR=str(kafka_cache_dir()),
        BUS_KAFKA_PORT=str(ports[0]),
        BUS_KAFKA_CONTROLLER_PORT=str(ports[1]),
    )
    return env


@pytest.fixture
def bus(bus_env: dict[str, str]) -> Bus:
    def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bus", *args],
            env={**bus_env, **env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    return run


async def test_start_status_stop(bus: Bus, bus_env: dict[str, str], home: Path) -> None:
    started = bus("kafka", "start")
    assert started.returncode == 0, started.stderr
    bootstrap = f"127.0.0.1:{bus_env['BUS_KAFKA_PORT']}"
    assert started.stdout.strip() == bootstrap
    assert await answers_metadata(bootstrap)
    assert (home / "kafka" / "broker.log").stat().st_size > 0
    [broker] = our_java_processes(home)
    assert (home / "kafka" / "broker.pid").read_text().strip() == str(broker.pid)

    status = bus("kafka", "status")
    assert status.returncode == 0
    assert status.stdout.strip() == f"running (pid {broker.pid}) at {bootstrap}"

    again = bus("kafka", "start")
    assert again.returncode != 0
    assert f"already runs (pid {broker.pid}) at {bootstrap}" in again.stderr
    assert our_java_processes(home) == [broker]

    stopped = bus("kafka", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.strip() == f"stopped the local Kafka broker (pid {broker.pid})"
    assert our_java_processes(home) == []
    assert not broker.is_running()
    assert not (home / "kafka" / "broker.pid").exists()

    after = bus("kafka", "status")
    assert after.returncode == 3
    assert after.stdout.startswith("not running")
    assert bus("kafka", "stop").returncode != 0


def test_start_refuses_a_taken_port(bus: Bus, bus_env: dict[str, str], home: Path) -> None:
    port = int(bus_env["BUS_KAFKA_PORT"])
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        started = bus("kafka", "start")
    assert started.returncode == 1
    assert f"port {port} on 127.0.0.1 is taken by another process" in started.stderr
    assert "BUS_KAFKA_PORT" in started.stderr
    assert our_java_processes(home) == []


def test_failed_start_reports_reason_and_log_tail(bus: Bus, home: Path) -> None:
    # Storage formatted for another node: the broker starts, then exits on the mismatch.
    data = home / "kafka" / "data"
    data.mkdir(parents=True)
    (data / "meta.properties").write_text(
        "version=1\ncluster.id=AAAAAAAAAAAAAAAAAAAAAA\nnode.id=7\n"
        "directory.id=AAAAAAAAAAAAAAAAAAAAAA\n"
    )
    started = bus("kafka", "start", "--timeout", "60")
    assert started.returncode == 1
    assert "the broker exited with code" in started.stderr
    assert f"Last lines of {home / 'kafka' / 'broker.log'}:" in started.stderr
    assert "because the data directory belongs to another node" in started.stderr
    # The broker's own explanation, from the log's tail, not pushed out by stack frames.
    assert "Stored node id 7 doesn't match previous node id 1" in started.stderr
    assert our_java_processes(home) == []
    assert not (home / "kafka" / "broker.pid").exists()


def test_bad_setting_is_one_clear_line(bus: Bus) -> None:
    status = bus("kafka", "status", BUS_KAFKA_PORT="ninety")
    assert status.returncode == 1
    assert status.stderr.startswith("Error: invalid environment setting: BUS_KAFKA_PORT='ninety'")
    assert "Traceback" not in status.stderr


def test_stale_pid_file_is_reported_and_removed(bus: Bus, home: Path) -> None:
    (home / "kafka").mkdir()
    # A live process that is not our broker, as after a reboot reused the pid.
    (home / "kafka" / "broker.pid").write_text(f"{os.getpid()}\n")
    status = bus("kafka", "status")
    assert status.returncode == 3
    assert f"removed a stale pid file: process {os.getpid()} is not this broker" in status.stderr
    assert not (home / "kafka" / "broker.pid").exists()


def test_missing_java_says_what_to_install(bus: Bus, tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    started = bus("kafka", "start", PATH=str(empty), JAVA_HOME=str(tmp_path / "no-jdk"))
    assert started.returncode == 1
    assert "Java 17+ is needed" in started.stderr
    assert "KAFKA_BOOTSTRAP_SERVERS" in started.stderr


def test_missing_maven_says_what_to_install(bus: Bus, tmp_path: Path) -> None:
    java = shutil.which("java")
    assert java, "the test machine has Java, as the README requires"
    empty = tmp_path / "bin"
    empty.mkdir()
    fetched = bus(
        "kafka",
        "fetch",
        PATH=str(empty),
        JAVA_HOME=str(Path(java).resolve().parents[1]),
        BUS_CACHE_DIR=str(tmp_path / "empty-cache"),
    )
    assert fetched.returncode == 1
    assert "Maven is needed once to fetch Apache Kafka" in fetched.stderr
    assert "KAFKA_BOOTSTRAP_SERVERS" in fetched.stderr


# The mediation flow of the example alone: it needs no port and no external system.
FLOWS = str(ROOT / "examples" / "flows" / "customers.yaml")
MEDIATION_ONLY = ("--only", "customer-upserts")


class RunningBus:
    """`bus run` as a subprocess, read line by line until it says it runs."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.stderr: list[str] = []
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, *args: str) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bus", "run", *args,
            env=self.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip

    async def wait_for_line(self, text: str, within: float = 90.0) -> None:
        assert self.process is not None
        assert self.process.stderr is not None
        async with asyncio.timeout(within):
            while not any(text in line for line in self.stderr):
                line = await self.process.stderr.readline()
                if not line:
                    raise AssertionError(f"bus run ended before saying {text!r}: {self.stderr}")
                self.stderr.append(line.decode())

    async def stop(self) -> int:
        assert self.process is not None
        assert self.process.stderr is not None
        self.process.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(self.process.stderr.read(), 60)
        self.stderr.append(rest.decode())
        return await self.process.wait()

    async def kill(self) -> None:
        """End it if it still runs (a test that failed before stopping it leaves nothing)."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


async def test_run_with_configured_cluster_never_starts_a_broker(
    bus_env: dict[str, str], bootstrap_servers: str, home: Path
) -> None:
    running = RunningBus({**bus_env, "KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers})
    await running.start(FLOWS, *MEDIATION_ONLY)
    try:
        await running.wait_for_line(f"running customer-upserts on Kafka {bootstrap_servers}")
        assert await running.stop() == 0
    finally:
        await running.kill()
    assert "stopped: in-flight work finished and committed" in "".join(running.stderr)
    assert not (home / "kafka").exists()
    assert our_java_processes(home) == []


def test_run_with_unreachable_cluster_fails_clearly(bus: Bus, home: Path) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    ran = bus("run", FLOWS, *MEDIATION_ONLY, KAFKA_BOOTSTRAP_SERVERS=nowhere)
    assert ran.returncode == 1
    assert f"Kafka at {nowhere} does not answer" in ran.stderr
    assert not (home / "kafka").exists()


def test_run_with_its_http_port_taken_fails_clearly(
    bus: Bus, bootstrap_servers: str, home: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ran = bus(
            "run",
            str(ROOT / "examples" / "rest" / "webhook-to-rest.yaml"),
            KAFKA_BOOTSTRAP_SERVERS=bootstrap_servers,
            BUS_HTTP_PORT=str(port),
            CRM_WEBHOOK_SECRET="s",
            BILLING_URL="http://127.0.0.1:9",
            BILLING_CLIENT_SECRET="s",
        )
    assert ran.returncode == 1
    assert f"http: cannot listen on 127.0.0.1:{port} (address already in use)" in ran.stderr
    assert "set http.port in the flow files" in ran.stderr
    assert "Traceback" not in ran.stderr


def test_run_needs_flow_files(bus: Bus) -> None:
    ran = bus("run")
    assert ran.returncode == 2
    assert "Missing argument 'FILES...'" in ran.stderr


async def test_run_without_cluster_starts_the_local_broker(
    bus_env: dict[str, str], home: Path
) -> None:
    bootstrap = f"127.0.0.1:{bus_env['BUS_KAFKA_PORT']}"
    # Two runs at once on one data directory: one starts the broker, the other waits and uses it.
    runs = [RunningBus(bus_env), RunningBus(bus_env)]
    for running in runs:
        await running.start(FLOWS, *MEDIATION_ONLY)
    try:
        for running in runs:
            await running.wait_for_line(f"running customer-upserts on Kafka {bootstrap}")
            assert any("using the local Kafka broker" in line for line in running.stderr)
        assert sum("starting the local Kafka broker" in "".join(r.stderr) for r in runs) >= 1
        assert len(our_java_processes(home)) == 1
        assert await answers_metadata(bootstrap)
    finally:
        assert [await running.stop() for running in runs] == [0, 0]
    assert bus_stop(bus_env).returncode == 0
    assert our_java_processes(home) == []


def bus_stop(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bus", "kafka", "stop"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("output", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('openjdk version "25" 2025-09-16', 25),
        ('java version "1.8.0_392"', 8),
        ("no version here", None),
    ],
)
def test_java_major_version(output: str, major: int | None) -> None:
    assert _java_major(output) == major


def test_cluster_ids_never_look_like_an_option() -> None:
    ids = [new_cluster_id() for _ in range(5000)]  # about 78 would start with '-' by chance
    assert all(len(cluster_id) == 22 and not cluster_id.startswith("-") for cluster_id in ids)
    assert len(set(ids)) == len(ids)
