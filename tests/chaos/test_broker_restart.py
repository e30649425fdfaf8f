"""The broker stops for a long outage and starts again while a `bus run` keeps streaming.

The long variant of tests/test_broker_restart.py (which says what is checked): more events, a
faster load and an outage longer than the consumers' session timeout, so that the group
coordinator forgets the mediation and delivery members and they must join again on their own.
"""

import asyncio
from pathlib import Path

import pytest

from tests.chaos.conftest import ChaosResults
from tests.conftest import start_broker
from tests.test_broker_restart import broker_restart_run

EVENTS = 3000
RATE = 60.0  # events per second: the outage falls in the middle of the stream
DOWN_FOR_S = 45.0


@pytest.mark.timeout(900)
async def test_a_long_broker_outage_mid_stream_loses_no_accepted_event(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, chaos_results: ChaosResults
) -> None:
    broker = await start_broker(tmp_path_factory, "kafka-outage")
    try:
        counts = await broker_restart_run(
            broker, tmp_path, events=EVENTS, rate=RATE, down_for=DOWN_FOR_S, concurrency=40
        )
    finally:
        if broker.status().running:
            await asyncio.to_thread(broker.stop)
    chaos_results.record("broker-restart", **counts)
