"""Graceful shutdown under load: SIGTERM `bus run` while events stream through inbound REST,
mediation and outbound REST. Each time it drains (the inbound answers the requests under way,
the mediation finishes and commits its batch, the delivery finishes its calls on the wire and
commits), exits 0, and is started again; in the end nothing accepted is lost, and the calls made
twice stay within what a shutdown may repeat: the records a delivery holds in hand
(`max_in_flight` x 4, see docs/flows.md#shutdown) per shutdown.
"""

import os
import random
import time
from pathlib import Path
from typing import Any

import pytest

from bus.delivery.plan import RECORDS_PER_CALL
from tests.chaos.conftest import ChaosResults
from tests.chaos.pipeline import STOPPED_CLEANLY, Pipeline
from tests.chaos.sink import ChaosSink
from tests.chaos.test_worker_crash import until

EVENTS = 6_000
SHUTDOWNS = 3
KEYS = 200
SINK_DELAY_S = 0.05


@pytest.mark.timeout(600)
async def test_sigterm_under_load_drains_and_loses_nothing(
    tmp_path: Path, bootstrap_servers: str, chaos_results: ChaosResults
) -> None:
    seed = int(os.environ.get("CHAOS_SEED", "20261124"))
    chance = random.Random(seed)  # noqa: S311 -- moments, not secrets
    marks = sorted(chance.uniform(0.1, 0.85) for _ in range(SHUTDOWNS))
    print(f"\ngraceful-shutdown: CHAOS_SEED={seed}, SIGTERM after {[round(m, 3) for m in marks]}")
    started = time.monotonic()
    stops: list[dict[str, Any]] = []
    async with ChaosSink() as sink, Pipeline(bootstrap_servers, tmp_path, sink) as pipeline:
        # A call takes a while, so that a SIGTERM finds calls on the wire (to be finished) and
        # records waiting for a call slot (to be given up and delivered after the restart).
        sink.delay = SINK_DELAY_S
        await pipeline.start_bus()
        pipeline.start_load(EVENTS, keys=KEYS, concurrency=20)
        for mark in marks:
            await until(lambda m=mark: len(pipeline.load.accepted) >= m * EVENTS, within=240)
            backlog = len(pipeline.load.accepted) - len(sink.unique)
            on_the_wire, calls_before = sink.in_flight, len(sink.calls)
            asked = time.monotonic()
            code = await pipeline.stop_bus()
            took = time.monotonic() - asked
            calls_while_stopping = len(sink.calls) - calls_before
            # Counted from the moment the signal was sent, before the bus could handle it.
            started_after = sum(1 for call in sink.calls if call.started > asked)
            log = pipeline.own_log()
            assert code == 0, log[-3000:]
            assert STOPPED_CLEANLY in log, log[-3000:]
            await pipeline.start_bus()
            stops.append(
                {
                    "exit_code": code,
                    "stop_s": round(took, 1),
                    "backlog_at_sigterm": backlog,
                    "calls_on_the_wire": on_the_wire,
                    "calls_while_stopping": calls_while_stopping,
                    "calls_started_after_sigterm": started_after,
                }
            )
            print(f"graceful-shutdown: SIGTERM #{len(stops)}: {stops[-1]}")
        await pipeline.load_done(within=300)
        await pipeline.wait_delivered(within=180)
        assert await pipeline.stop_bus() == 0, pipeline.own_log()[-3000:]
        dead = await pipeline.dead_letters()
        stored = await pipeline.records_in(pipeline.topic_a)
    tally = pipeline.tally()
    bound = SHUTDOWNS * pipeline.knobs.delivery_max_in_flight * RECORDS_PER_CALL
    chaos_results.record(
        "graceful-shutdown",
        **tally,
        dead_letters=dead,
        refusals=dict(pipeline.load.refusals),
        stored_twice=stored - tally["accepted"],
        shutdowns=stops,
        duplicate_bound=bound,
        seed=seed,
        sink_delay_s=SINK_DELAY_S,
        partitions=pipeline.knobs.partitions,
        delivery_max_in_flight=pipeline.knobs.delivery_max_in_flight,
        seconds=round(time.monotonic() - started),
    )
    assert tally["sent"] == tally["accepted"] == EVENTS, tally
    assert tally["lost"] == tally["effective_duplicates"] == dead == 0, tally
    assert tally["duplicates"] <= bound, (tally, stops)
