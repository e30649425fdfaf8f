"""`bus kafka start|status|stop` and `bus run`, run as a user runs them: as subprocesses."""

import asyncio
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from bus.local_kafka.distribution import _java_major
from bus.local_kafka.readiness import answers_metadata
from tests.conftest import free_port, kafka_cache_dir

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
    env.update(
        BUS_HOME=str(home),
        BUS_CACHE_DIR=str(kafka_cache_dir()),
        BUS_KAFKA_PORT=str(free_port()),
        BUS_KAFKA_CONTROLLER_PORT=str(free_port()),
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


def test_run_with_configured_cluster_never_starts_a_broker(
    bus: Bus, bootstrap_servers: str, home: Path
) -> None:
    ran = bus("run", KAFKA_BOOTSTRAP_SERVERS=bootstrap_servers)
    assert ran.returncode == 0, ran.stderr
    assert f"Kafka: {bootstrap_servers}" in ran.stdout
    assert "No flows are defined yet" in ran.stdout
    assert not (home / "kafka").exists()
    assert our_java_processes(home) == []


def test_run_with_unreachable_cluster_fails_clearly(bus: Bus, home: Path) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    ran = bus("run", KAFKA_BOOTSTRAP_SERVERS=nowhere)
    assert ran.returncode == 1
    assert f"Kafka at {nowhere} does not answer" in ran.stderr
    assert not (home / "kafka").exists()


async def test_run_without_cluster_starts_the_local_broker(
    bus: Bus, bus_env: dict[str, str], home: Path
) -> None:
    bootstrap = f"127.0.0.1:{bus_env['BUS_KAFKA_PORT']}"
    # Two runs at once on one data directory: one starts the broker, the other waits and uses it.
    both = await asyncio.gather(*(asyncio.to_thread(bus, "run") for _ in range(2)))
    for ran in both:
        assert ran.returncode == 0, ran.stderr
        assert f"Kafka: {bootstrap}" in ran.stdout
        assert "No flows are defined yet" in ran.stdout
        assert "using the local Kafka broker" in ran.stderr
    assert sum("starting the local Kafka broker" in ran.stderr for ran in both) >= 1
    assert len(our_java_processes(home)) == 1
    assert await answers_metadata(bootstrap)

    # A later run finds the running broker instead of starting another.
    again = bus("run")
    assert again.returncode == 0, again.stderr
    assert "starting" not in again.stderr
    assert len(our_java_processes(home)) == 1

    assert bus("kafka", "stop").returncode == 0
    assert our_java_processes(home) == []


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
