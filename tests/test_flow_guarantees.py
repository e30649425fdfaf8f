"""What a flow promises when things go wrong: processes killed, rebalanced, dead letters replayed.

These run `bus run` as real subprocesses against the test broker and SIGKILL or SIGTERM them.
"""

import asyncio
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bus.events.publisher import Publisher
from tests.flow_harness import CATALOG, ROOT, decode, headers_of, read_all, read_records, write_flow
from tests.test_flows_on_kafka import customer


class BusProcess:
    """`bus run` in a subprocess, its output kept in a log file."""

    def __init__(self, flow: Path, bootstrap_servers: str, log: Path, **env: str) -> None:
        self.log = log
        # Several processes share the log: look only at what this one writes.
        self.log_start = log.stat().st_size if log.exists() else 0
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bus", "run", str(flow), "--shutdown-grace", "20"],
            env={
                **os.environ,
                "KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers,
                "BUS_SCHEMAS_DIR": str(ROOT / "schemas"),
                **env,
            },
            stdout=subprocess.DEVNULL,
            stderr=log.open("ab"),
        )

    async def wait_until_running(self, within: float = 60.0) -> None:
        async with asyncio.timeout(within):
            while ": assigned " not in self._own_log():  # the runner logs its partitions
                assert self.process.poll() is None, self.log.read_text()
                await asyncio.sleep(0.2)

    def _own_log(self) -> str:
        with self.log.open("rb") as log:
            log.seek(self.log_start)
            return log.read().decode(errors="replace")

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(60)


def passthrough(folder: Path, source: str, sink: str, guarantee: str = "at-least-once") -> Path:
    return write_flow(
        folder,
        f"""
mediation:
  - name: guarded-{abs(hash(source)) % 10**8}
    from: {source}
    to: {sink}
    guarantee: {guarantee}
    max_in_flight: 50
    steps:
      - filter: event.email != ""
""",
    )


async def publish_many(
    bootstrap_servers: str, topic: str, count: int, pause: float = 0.0
) -> set[str]:
    """Publish `count` events in chunks of 100, with `pause` seconds between chunks."""
    async with Publisher(bootstrap_servers, CATALOG, source="/crm", linger_ms=5) as publisher:
        ids: set[str] = set()
        for start in range(0, count, 100):
            events = await asyncio.gather(
                *(
                    publisher.publish(
                        topic,
                        "com.acme.crm.CustomerChanged",
                        customer(n, "DE"),
                        key=f"c-{n % 40}",
                    )
                    for n in range(start, min(count, start + 100))
                )
            )
            ids.update(event.id for event in events)
            await asyncio.sleep(pause)
    return ids


async def parents_in(bootstrap_servers: str, topic: str, count: int) -> Counter[str]:
    """How often each input event id appears as the parent of an output."""
    await read_records(bootstrap_servers, topic, count, within=120)
    outputs = await decode(await read_all(bootstrap_servers, topic))
    return Counter(event.extensions["parentid"] for event in outputs)


async def stream_with_kills(
    flow: Path,
    bootstrap_servers: str,
    *,
    source: str,
    sink: str,
    log: Path,
    count: int,
    **env: str,
) -> tuple[set[str], Counter[str]]:
    """Publish `count` events over some seconds while the flow runs and is SIGKILLed at random
    moments (three times) and restarted; then let the last run finish and stop it gracefully.
    Returns the input ids and how often each became an output's parent."""
    publishing = asyncio.create_task(publish_many(bootstrap_servers, source, count, pause=0.25))
    for _ in range(3):
        process = BusProcess(flow, bootstrap_servers, log, **env)
        await process.wait_until_running()
        await asyncio.sleep(random.uniform(0.5, 2.0))  # noqa: S311 -- a moment, not a secret
        process.kill()
    last = BusProcess(flow, bootstrap_servers, log, **env)
    # Running before it is stopped: the earlier runs may have done all the work already, and a
    # SIGTERM while it still imports would end it by the signal, before it could stop cleanly.
    await last.wait_until_running()
    inputs = await publishing
    parents = await parents_in(bootstrap_servers, sink, count)
    assert await asyncio.to_thread(last.terminate) == 0, "see bus.log in tmp_path"
    return inputs, parents


@pytest.mark.timeout(400)
async def test_at_least_once_when_killed(
    tmp_path: Path,
    bootstrap_servers: str,
    topic_name: Callable[[str], str],
    create_topics: Callable[..., Any],
) -> None:
    source, sink = topic_name("in"), topic_name("out")
    await create_topics(source, sink, partitions=6)
    flow = passthrough(tmp_path, source, sink)
    log = tmp_path / "bus.log"
    inputs, parents = await stream_with_kills(
        flow, bootstrap_servers, source=source, sink=sink, log=log, count=3000
    )
    assert set(parents) == inputs  # nothing lost
    duplicates = sum(parents.values()) - len(parents)
    print(f"at-least-once after 3 SIGKILLs: {duplicates} duplicate output(s) of 3000")
    # Outputs of one input always carry the same id: consumers can drop the duplicates.
    by_id = Counter(e.id for e in await decode(await read_all(bootstrap_servers, sink)))
    assert len(by_id) == 3000


@pytest.mark.timeout(400)
async def test_exactly_once_when_killed(
    tmp_path: Path,
    bootstrap_servers: str,
    topic_name: Callable[[str], str],
    create_topics: Callable[..., Any],
) -> None:
    source, sink = topic_name("in"), topic_name("out")
    await create_topics(source, sink, partitions=6)
    flow = passthrough(tmp_path, source, sink, guarantee="exactly-once")
    # The partition's next owner fences the killed process's open transaction at once.
    inputs, parents = await stream_with_kills(
        flow, bootstrap_servers, source=source, sink=sink, log=tmp_path / "bus.log", count=2000
    )
    assert set(parents) == inputs
    assert max(parents.values()) == 1  # a read_committed reader sees each output once


@pytest.mark.timeout(300)
@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
async def test_rebalance_between_two_processes(
    tmp_path: Path,
    bootstrap_servers: str,
    topic_name: Callable[[str], str],
    create_topics: Callable[..., Any],
    guarantee: str,
) -> None:
    source, sink = topic_name("in"), topic_name("out")
    await create_topics(source, sink, partitions=6)
    flow = passthrough(tmp_path, source, sink, guarantee)
    inputs = await publish_many(bootstrap_servers, source, 2000)
    first = BusProcess(flow, bootstrap_servers, tmp_path / "first.log")
    await first.wait_until_running()
    second = BusProcess(flow, bootstrap_servers, tmp_path / "second.log")
    await second.wait_until_running()  # the group rebalanced over both
    assert first.terminate() == 0  # and again: the second takes every partition
    parents = await parents_in(bootstrap_servers, sink, 2000)
    assert second.terminate() == 0
    assert set(parents) == inputs
    # Revocation waits for the batch in hand and commits it: a graceful handoff repeats nothing.
    assert max(parents.values()) == 1


async def test_dead_letters_list_show_and_replay(
    tmp_path: Path,
    bootstrap_servers: str,
    topic_name: Callable[[str], str],
    create_topics: Callable[..., Any],
) -> None:
    source, sink, dlq = topic_name("in"), topic_name("out"), topic_name("dlq")
    await create_topics(source, dlq)
    flow = write_flow(
        tmp_path,
        f"""
mediation:
  - name: picky
    from: {source}
    to: {sink}
    dlq: {dlq}
    steps:
      - filter: event.address.country == "DE"
""",
    )
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers}

    def bus(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bus", "dlq", *args, "--flow-file", str(flow)],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    async with Publisher(bootstrap_servers, CATALOG, source="/crm") as publisher:
        bad = await publisher.publish(
            source, "com.acme.crm.CustomerChanged", customer(1, "DE", address=None), key="c-1"
        )
        process = BusProcess(flow, bootstrap_servers, tmp_path / "bus.log")
        await process.wait_until_running()
        await read_records(bootstrap_servers, dlq, 1)

        listed = await asyncio.to_thread(bus, "list", "picky")
        assert listed.returncode == 0, listed.stderr
        assert f"{dlq}[0]@0" in listed.stdout
        assert "steps[0].filter  ExpressionError" in listed.stdout
        assert f"(from {source}[0]@0, attempts 1)" in listed.stdout

        shown = await asyncio.to_thread(bus, "show", "picky", "0")
        assert f"from:    {source}[0]@0" in shown.stdout
        assert f"header:  ce_id: {bad.id}" in shown.stdout

        replayed = await asyncio.to_thread(bus, "replay", "picky", "--offset", "0")
        assert replayed.stdout.strip() == f"replayed {dlq}[0]@0 -> {source}"
        # Still failing: back in the DLQ, counted as the second attempt, its origin recorded.
        [_, again] = await read_records(bootstrap_servers, dlq, 2)

        # --all replays what no earlier --all did: both letters now, then only their successors.
        everything = await asyncio.to_thread(bus, "replay", "picky", "--all")
        assert everything.stdout.splitlines() == [
            f"replayed {dlq}[0]@0 -> {source}",
            f"replayed {dlq}[0]@1 -> {source}",
        ]
        await read_records(bootstrap_servers, dlq, 4)
        rest = await asyncio.to_thread(bus, "replay", "picky", "--all")
        assert rest.stdout.splitlines() == [
            f"replayed {dlq}[0]@2 -> {source}",
            f"replayed {dlq}[0]@3 -> {source}",
        ]
        assert process.terminate() == 0
    assert headers_of(again)["bus_dlq_attempts"] == "2"
    assert headers_of(again)["bus_replayed_from"] == f"{dlq}[0]@0"
    assert headers_of(again)["ce_id"] == bad.id
    neither = await asyncio.to_thread(bus, "replay", "picky")
    assert neither.returncode == 2
    assert "give --offset N (one or more) or --all" in neither.stderr
