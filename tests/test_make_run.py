"""`make run` from the repository root, as a newcomer types it, stopping after a few inputs:
with no Kafka configured it starts a local broker of its own, runs the demo, prints the
summary with nothing lost, and leaves no process behind, the broker included."""

import json
import os
import signal
import subprocess
from pathlib import Path

import psutil
import pytest

from tests.conftest import free_ports, kafka_cache_dir

ROOT = Path(__file__).resolve().parents[1]
WITHIN = 120.0  # seconds; broker start, demo start, 30 inputs, drain and stop take about 20
STOP_WITHIN = 30.0  # for the demo to stop what it started when the test ends it early


@pytest.mark.timeout(WITHIN + STOP_WITHIN + 15)
def test_make_run_starts_and_stops_cleanly_within_a_time_limit(tmp_path: Path) -> None:
    home = tmp_path / "home"
    summary = tmp_path / "summary.json"
    kafka_port, controller_port = free_ports(2)
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("KAFKA_BOOTSTRAP_SERVERS", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")
    }
    env |= {
        "BUS_HOME": str(home),
        "BUS_CACHE_DIR": str(kafka_cache_dir()),
        "BUS_KAFKA_PORT": str(kafka_port),
        "BUS_KAFKA_CONTROLLER_PORT": str(controller_port),
    }
    make = subprocess.Popen(
        [
            "make",
            "--no-print-directory",
            "run",
            "ARGS=--events 30 --free-ports --view plain --drain-timeout 30 "
            f"--summary-json {summary}",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own group: a timeout or failure ends make and the demo
    )
    try:
        stdout, stderr = make.communicate(timeout=WITHIN)
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGTERM)  # the demo stops what it started
            try:
                make.communicate(timeout=STOP_WITHIN)
            except subprocess.TimeoutExpired:
                os.killpg(make.pid, signal.SIGKILL)
                make.communicate()
    output = stdout + stderr
    assert make.returncode == 0, output
    assert f"starting a local Kafka broker on 127.0.0.1:{kafka_port}" in stdout, output
    assert "lost: 0" in stdout, output
    assert "stopped the local Kafka broker" in stdout, output

    record = json.loads(summary.read_text())
    assert record["summary"]["lost"] == 0
    assert record["kafka"] == {
        "bootstrap_servers": f"127.0.0.1:{kafka_port}",
        "started_by_demo": True,
    }
    # Nothing left: the broker's pid file and process, the systems, bus run; nothing listens
    # on the broker's port.
    assert not (home / "kafka" / "broker.pid").exists()
    assert set(record["pids"]) == {"broker", "systems", "bus"}
    for name, pid in record["pids"].items():
        assert not _alive(pid), f"{name} (pid {pid}) is still running"
    assert not any(
        connection.laddr and connection.laddr.port == kafka_port
        for connection in psutil.net_connections("tcp")
        if connection.status == psutil.CONN_LISTEN
    )
    assert (home / "demo" / "bus-run.log").exists()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
