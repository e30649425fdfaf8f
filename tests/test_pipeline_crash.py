"""The fast variants of tests/chaos (make test): one SIGTERM and one SIGKILL of `bus run` while
events go through inbound REST -> mediation -> outbound REST (tests.chaos.pipeline)."""

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bus.delivery.plan import RECORDS_PER_CALL
from tests.chaos.pipeline import STOPPED_CLEANLY, Pipeline
from tests.chaos.sink import ChaosSink


async def until(condition: Callable[[], bool], within: float) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s")
        await asyncio.sleep(0.02)


@pytest.mark.timeout(120)
async def test_sigterm_finishes_the_calls_on_the_wire_and_loses_nothing(
    tmp_path: Path, bootstrap_servers: str
) -> None:
    async with (
        ChaosSink(delay=1.0) as sink,
        Pipeline(bootstrap_servers, tmp_path, sink, partitions=3, delivery_max_in_flight=5) as p,
    ):
        await p.start_bus()
        p.start_load(300, keys=30, concurrency=10)
        await until(lambda: sink.in_flight >= 3 and len(sink.calls) >= 5, within=30)
        signalled = time.monotonic()
        assert await p.stop_bus() == 0
        exited = time.monotonic()
        log = p.own_log()
        assert "SIGTERM: stopping; in-flight work gets 20 s to finish" in log, log[-3000:]
        assert STOPPED_CLEANLY in log, log[-3000:]
        await asyncio.sleep(1.2)  # any call the bus had left behind is answered by now
        on_the_wire = [c for c in sink.calls if c.started < signalled < c.at]
        assert on_the_wire
        # It exited only after the answers to the calls it had under way: none was cut off.
        assert all(call.at <= exited for call in on_the_wire), (on_the_wire, exited)
        sink.delay = 0.0
        await p.start_bus()
        await p.load_done(within=60)
        await p.wait_delivered(within=60)
        assert await p.stop_bus() == 0
    tally = p.tally()
    assert tally["accepted"] == tally["delivered"] == 300, tally
    assert tally["lost"] == tally["effective_duplicates"] == 0, tally
    # Only records done ahead of one given up in the same partition are delivered again.
    assert tally["duplicates"] <= p.knobs.delivery_max_in_flight * RECORDS_PER_CALL, tally


@pytest.mark.timeout(120)
async def test_sigkill_mid_stream_loses_nothing(tmp_path: Path, bootstrap_servers: str) -> None:
    async with (
        ChaosSink() as sink,
        Pipeline(bootstrap_servers, tmp_path, sink, partitions=3) as p,
    ):
        await p.start_bus()
        p.start_load(600, keys=30, concurrency=10)
        await until(lambda: len(sink.unique) >= 100, within=30)
        p.kill_bus()
        await p.start_bus()
        await p.load_done(within=60)
        await p.wait_delivered(within=60)
        assert await p.stop_bus() == 0
    tally = p.tally()
    assert tally["accepted"] == tally["delivered"] == 600, tally
    assert tally["lost"] == tally["effective_duplicates"] == 0, tally
