"""Worker crash: SIGKILL `bus run` at random moments while events stream through inbound REST,
mediation and outbound REST; every event the bus accepted (202) still reaches the sink.

A SIGKILL takes the inbound endpoint down with the flows, so the load driver sees refused
connections while the bus is down and sends those events again (same `Idempotency-Key`, so
the same event id) once it is back: the accepted set is what got a 202. The kill moments are
random but seeded (`CHAOS_SEED`, printed), so a failing run can be repeated.
"""

import asyncio
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.chaos.conftest import ChaosResults
from tests.chaos.pipeline import Pipeline
from tests.chaos.sink import ChaosSink

EVENTS = 10_000
KILLS = 4
KEYS = 200


async def test_pipeline_delivers_every_accepted_event(
    tmp_path: Path, bootstrap_servers: str
) -> None:
    """The harness itself, no fault: 100 events end to end, each applied once."""
    async with ChaosSink() as sink, Pipeline(bootstrap_servers, tmp_path, sink) as pipeline:
        await pipeline.start_bus()
        await pipeline.send(100, keys=10)
        await pipeline.wait_delivered(within=60)
        assert await pipeline.stop_bus() == 0
        assert "stopped: in-flight work finished and committed" in pipeline.own_log()
    tally = pipeline.tally()
    assert tally["accepted"] == tally["delivered"] == 100, tally
    assert tally["lost"] == tally["effective_duplicates"] == 0, tally
    assert tally["duplicates"] == 0, tally  # nothing went wrong, nothing was repeated
    assert await pipeline.dead_letters() == 0


@pytest.mark.timeout(600)
async def test_sigkill_under_load_loses_nothing(
    tmp_path: Path, bootstrap_servers: str, chaos_results: ChaosResults
) -> None:
    seed = int(os.environ.get("CHAOS_SEED", "20261124"))
    chance = random.Random(seed)  # noqa: S311 -- moments, not secrets
    # Kill when this share of the events has been accepted, plus a random fraction of a second:
    # the moments land while the load runs however fast this machine is today.
    marks = sorted(chance.uniform(0.08, 0.85) for _ in range(KILLS))
    extra = [chance.uniform(0.0, 1.5) for _ in range(KILLS)]
    print(f"\nworker-crash: CHAOS_SEED={seed}, kill after {[round(m, 3) for m in marks]} accepted")
    started = time.monotonic()
    kills: list[dict[str, float]] = []
    async with ChaosSink() as sink, Pipeline(bootstrap_servers, tmp_path, sink) as pipeline:
        await pipeline.start_bus()
        pipeline.start_load(EVENTS, keys=KEYS, concurrency=20)
        for mark, wait in zip(marks, extra, strict=True):
            await until(lambda m=mark: len(pipeline.load.accepted) >= m * EVENTS, within=240)
            await asyncio.sleep(wait)
            accepted, delivered = len(pipeline.load.accepted), len(sink.unique)
            pipeline.kill_bus()
            down = time.monotonic()
            await pipeline.start_bus()
            kills.append(
                {
                    "at_accepted": accepted,
                    "at_delivered": delivered,
                    "down_s": round(time.monotonic() - down, 1),
                }
            )
            print(f"worker-crash: SIGKILL #{len(kills)}: {kills[-1]}")
        await pipeline.load_done(within=300)
        await pipeline.wait_delivered(within=180)
        assert await pipeline.stop_bus() == 0, pipeline.own_log()[-3000:]
        dead = await pipeline.dead_letters()
    tally = pipeline.tally()
    chaos_results.record(
        "worker-crash",
        **tally,
        dead_letters=dead,
        refusals=dict(pipeline.load.refusals),
        kills=len(kills),
        kill_moments=kills,
        seed=seed,
        partitions=pipeline.knobs.partitions,
        delivery_max_in_flight=pipeline.knobs.delivery_max_in_flight,
        seconds=round(time.monotonic() - started),
    )
    assert len(kills) >= 3
    assert tally["sent"] == tally["accepted"] == EVENTS, tally
    assert tally["lost"] == 0, tally
    assert tally["effective_duplicates"] == 0, tally  # a repeat always carries the same key
    assert dead == 0


async def until(condition: Callable[[], bool], within: float) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s")
        await asyncio.sleep(0.05)
