"""The demo launcher (examples/demo/launcher.py) when things go wrong: a child that dies under
way ends the demo with a clear message and nothing left running, and a second Ctrl-C stops
everything at once, saying that what it did not wait for is not verified.

Each test lets the launcher start a local broker of its own (under a temporary BUS_HOME, on
free ports), as `make run` does, so that the broker's cleanup is checked too.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import free_ports, kafka_cache_dir
from tests.test_demo_on_kafka import (
    admin_url,
    assert_gone,
    demo_env,
    running_demo,
    until_delivered,
)

TIMEOUT = 240  # the launcher starts its own broker: up to 90 s on a loaded machine
EXIT_FAILED = 1
EXIT_NOT_VERIFIED = 3
STOPPED_WITHIN = 45.0  # hurried, the launcher promises 26 s; a loaded machine gets more


@contextmanager
def launcher(tmp_path: Path, *extra: str) -> Iterator["subprocess.Popen[bytes]"]:
    """The launcher, running until the block ends (then killed, with its group, if need be)."""
    kafka_port, controller_port = free_ports(2)
    env = demo_env(tmp_path / "home") | {
        "BUS_CACHE_DIR": str(kafka_cache_dir()),
        "BUS_KAFKA_PORT": str(kafka_port),
        "BUS_KAFKA_CONTROLLER_PORT": str(controller_port),
    }
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    command = [sys.executable, "-m", "demo", "--free-ports", "--view", "plain"]
    command += ["--summary-json", str(tmp_path / "summary.json"), "--events", "3000", *extra]
    with running_demo(command, env, tmp_path / "demo.out") as demo:
        yield demo


def systems_pid(log: Path) -> int:
    found = re.search(r"started the demo systems \(pid (\d+)\)", log.read_text())
    assert found, log.read_text()
    return int(found.group(1))


def assert_all_gone(record: dict[str, object], home: Path) -> None:
    pids = record["pids"]
    assert isinstance(pids, dict)
    assert set(pids) == {"broker", "systems", "bus"}
    assert_gone(pids.values())
    assert not (home / "kafka" / "broker.pid").exists()


@pytest.mark.timeout(TIMEOUT)
def test_a_child_that_dies_ends_the_demo_and_nothing_is_left_running(tmp_path: Path) -> None:
    log = tmp_path / "demo.out"
    with launcher(tmp_path, "--rate", "10") as demo:
        admin = admin_url(log, demo, within=120)
        until_delivered(admin, at_least=5, within=30)
        os.kill(systems_pid(log), signal.SIGKILL)
        code = demo.wait(STOPPED_WITHIN)
    text = log.read_text()
    assert code == EXIT_FAILED, text
    assert "the demo systems exited unexpectedly with code -9" in text, text
    assert "Last lines of" in text  # where to look, and what it said last
    assert "summary of run" not in text  # nothing to account for
    record = json.loads((tmp_path / "summary.json").read_text())
    assert record["exit_code"] == EXIT_FAILED
    assert "exited unexpectedly" in record["error"]
    assert_all_gone(record, tmp_path / "home")


@pytest.mark.timeout(TIMEOUT)
def test_a_second_ctrl_c_skips_the_drain_and_the_count_is_not_verified(tmp_path: Path) -> None:
    log = tmp_path / "demo.out"
    [gateway_port] = free_ports(1)
    with launcher(tmp_path, "--rate", "10", "--gateway-port", str(gateway_port)) as demo:
        admin = admin_url(log, demo, within=120)
        until_delivered(admin, at_least=5, within=30)
        # The gateway down: payments wait behind an open breaker, so the drain cannot end.
        outage = urllib.request.Request(
            f"http://127.0.0.1:{gateway_port}/_demo/outage?seconds=120", method="POST"
        )
        with urllib.request.urlopen(outage, timeout=5):  # noqa: S310 -- http://127.0.0.1 only
            pass
        time.sleep(2)
        demo.send_signal(signal.SIGINT)
        until_said(log, "draining", within=60)
        demo.send_signal(signal.SIGINT)
        hurried = time.monotonic()
        code = demo.wait(STOPPED_WITHIN)
    took = time.monotonic() - hurried
    text = log.read_text()
    assert code == EXIT_NOT_VERIFIED, text
    assert "drain skipped (second Ctrl-C)" in text
    assert "everything is stopped within 26 s at most" in text
    assert "NOT VERIFIED" in text
    assert took < 30, text  # far less than the drain's 60 s, or bus run's grace of 35
    record = json.loads((tmp_path / "summary.json").read_text())
    assert record["summary"]["drained"] is False
    assert record["summary"]["lost"] == 0, text
    assert_all_gone(record, tmp_path / "home")


def until_said(log: Path, needle: str, within: float) -> None:
    deadline = time.monotonic() + within
    while needle not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
