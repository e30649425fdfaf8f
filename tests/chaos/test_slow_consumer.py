"""Slow consumer: the REST system behind the outbound delivery takes 2 s to answer every call
while events arrive six times faster than it can take them.

What must hold, observed from outside the `bus run` process:

- the inbound endpoint keeps accepting at the load's steady rate with low latency: the backlog
  waits in Kafka (the delivery's lag on the admin API grows), not in the bus, whose memory
  stays bounded;
- the delivery never has more calls under way than its `max_in_flight` (counted by the sink),
  and holds at most its bound of records in hand;
- the consumer groups do not rebalance: the broker's group coordinator log shows one join
  (generation 1) for each group and nothing after it until the bus stops, and aiokafka says
  nothing of failed heartbeats or a member left for exceeding max.poll.interval (the delivery
  keeps polling while its partitions are paused);
- once the system is fast again, every accepted event is delivered, once, in the order of its
  key's records on the delivered topic.
"""

import asyncio
import re
import statistics
import time
from pathlib import Path
from typing import Any

import pytest

from bus.local_kafka import LocalKafka
from tests.chaos.conftest import ChaosResults
from tests.chaos.pipeline import Knobs, Pipeline
from tests.chaos.sink import ChaosSink
from tests.chaos.test_outbound_outage import (
    RssSampler,
    admin_item,
    applied_in_log_order,
    dead_letters,
)

DELAY_S = 2.0  # every call of the sink
MAX_IN_FLIGHT = 8  # so the delivery takes at most 4 events a second
RECORDS_IN_HAND = MAX_IN_FLIGHT * 4  # bus.delivery.plan.RECORDS_PER_CALL
RATE = 25.0  # events per second the load driver posts: six times what the sink takes
SLOW_S = 40.0
EVENTS = int(RATE * SLOW_S)
KEYS = 100  # enough keys that the delivery can use every call slot
LATENCY_P95_BOUND_S = 0.5  # an inbound request is one produce to Kafka, whatever the backlog
RSS_BOUND_MIB = 256.0


class TimedPipeline(Pipeline):
    """A Pipeline that also notes, per accepted event, how long the inbound endpoint took to
    accept it (from the first request to the 202, retries included). Built here because the
    shared Pipeline's load driver does not time its requests."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.latencies: list[float] = []

    async def _post_until_accepted(self, seq: int, keys: int) -> None:
        started = time.monotonic()
        await super()._post_until_accepted(seq, keys)
        if seq in self.load.accepted:
            self.latencies.append(time.monotonic() - started)


@pytest.mark.timeout(420)
async def test_slow_consumer_backpressure_keeps_inbound_fast_and_the_group_stable(
    tmp_path: Path, kafka_broker: LocalKafka, chaos_results: ChaosResults
) -> None:
    knobs = Knobs(delivery_max_in_flight=MAX_IN_FLIGHT, timeout="10s")
    broker_log_start = kafka_broker.log_file.stat().st_size
    async with (
        ChaosSink(delay=DELAY_S) as sink,
        TimedPipeline(kafka_broker.bootstrap_servers, tmp_path, sink, knobs) as pipeline,
    ):
        await pipeline.start_bus()
        assert pipeline.pid is not None
        rss = RssSampler(pipeline.pid)
        rss.start()
        out = f"{pipeline.id}-out"
        started = time.monotonic()
        pipeline.start_load(EVENTS, keys=KEYS, rate=RATE, concurrency=20)
        max_in_hand = 0
        while pipeline.load_running:
            item = await admin_item(pipeline, out)
            max_in_hand = max(max_in_hand, int(item["in_flight"] or 0))
            await asyncio.sleep(1.0)
        await pipeline.load_done(within=30)
        load_s = time.monotonic() - started
        # The backlog is in Kafka: what the sink has not applied is the lag, bar the records
        # in hand (the lag of paused partitions is asked every 5 s: allow that much staleness).
        await asyncio.sleep(6.0)
        item = await admin_item(pipeline, out)
        max_in_hand = max(max_in_hand, int(item["in_flight"] or 0))
        slow_s = time.monotonic() - started
        applied_slow = len(sink.unique)
        backlog = len(pipeline.load.accepted) - applied_slow
        lag = int(item["lag"])

        sink.delay = 0.0
        fast = time.monotonic()
        await pipeline.wait_delivered(within=180)
        drained_s = time.monotonic() - fast
        await rss.stop()
        names = [f"bus.{pipeline.id}-out", f"bus.{pipeline.id}-mediate"]
        groups = group_generations(kafka_broker.log_file, broker_log_start, names)
        bus_log = pipeline.own_log()
        assert await pipeline.stop_bus() == 0, pipeline.own_log()[-3000:]
        dead = sum((await dead_letters(pipeline)).values())
        in_order, out_of_order = await applied_in_log_order(pipeline)

    tally = pipeline.tally()
    latencies = sorted(pipeline.latencies)
    p95 = latencies[int(0.95 * (len(latencies) - 1))]
    heartbeat_trouble = [line for line in bus_log.splitlines() if "Heartbeat" in line]
    counts: dict[str, Any] = {
        **tally,
        "sink_delay_s": DELAY_S,
        "max_in_flight": MAX_IN_FLIGHT,
        "sink_max_in_flight": sink.max_in_flight,
        "max_records_in_hand": max_in_hand,
        "load_rate_per_s": RATE,
        "load_s": round(load_s, 1),
        "inbound_latency_p50_s": round(statistics.median(latencies), 3),
        "inbound_latency_p95_s": round(p95, 3),
        "inbound_latency_max_s": round(latencies[-1], 3),
        "slow_phase_s": round(slow_s, 1),
        "applied_in_slow_phase": applied_slow,
        "delivery_rate_slow_per_s": round(applied_slow / slow_s, 2),
        "backlog_after_slow_phase": backlog,
        "lag_after_slow_phase": lag,
        "drained_after_s": round(drained_s, 1),
        "group_coordinator": groups,
        "heartbeat_warnings": len(heartbeat_trouble),
        "dead_lettered": dead,
        "keys_in_order": in_order,
        "rss_peak_mib": round(rss.peak_mib, 1),
        "rss_samples": rss.samples,
    }
    chaos_results.record("slow-consumer", **counts)
    print(f"\nslow-consumer: {counts}")

    # Inbound kept its pace and stayed fast: Kafka took the backlog.
    assert tally["accepted"] == EVENTS, counts
    assert not pipeline.load.refusals, pipeline.load.refusals
    assert load_s <= SLOW_S * 1.25 + 5, counts
    assert p95 <= LATENCY_P95_BOUND_S, counts
    assert applied_slow <= slow_s * MAX_IN_FLIGHT / DELAY_S + MAX_IN_FLIGHT, counts
    assert backlog >= EVENTS / 2, counts
    assert lag >= backlog - RECORDS_IN_HAND - 5 * RATE, counts
    # The bounds held, and were used: the sink saw as many calls at once as allowed.
    assert sink.max_in_flight == MAX_IN_FLIGHT, counts
    assert max_in_hand <= RECORDS_IN_HAND, counts
    assert rss.peak_mib < RSS_BOUND_MIB, counts
    # No rebalance: the join that made generation 1 of each group, none after.
    assert groups == {group: ["rebalance", "generation 1"] for group in groups}, counts
    assert heartbeat_trouble == [], heartbeat_trouble[:5]
    # Nothing lost, nothing repeated, in order.
    assert tally["lost"] == 0, counts
    assert tally["delivered"] == EVENTS, counts
    assert tally["duplicates"] == 0, counts
    assert tally["effective_duplicates"] == 0, counts
    assert dead == 0, counts
    assert out_of_order == [], counts


def group_generations(broker_log: Path, start: int, groups: list[str]) -> dict[str, list[str]]:
    """Per consumer group, what the broker's group coordinator logged (from byte `start` of its
    log on): each rebalance it prepared (`rebalance`) and each generation it stabilized
    (`generation N`). A member that joins, leaves, misses its heartbeats or exceeds
    max.poll.interval starts a rebalance, which stabilizes a new generation."""
    with broker_log.open("rb") as log:
        log.seek(start)
        text = log.read().decode(errors="replace")
    found: dict[str, list[str]] = {group: [] for group in groups}
    pattern = r"(Preparing to rebalance|Stabilized) group (\S+)(?: generation (\d+))?"
    for match in re.finditer(pattern, text):
        if match[2] in found:
            what = "rebalance" if match[1].startswith("Preparing") else f"generation {match[3]}"
            found[match[2]].append(what)
    return found
