"""Outbound outage: the REST system behind the outbound delivery answers 503 (first case) or is
not there at all (second case, connections refused) for 30 s while events keep arriving.

What must hold, all observed from outside the `bus run` process:

- the circuit breaker opens: the admin API's /flows says `open`, /readyz says not ready
  because every breaker is open (but at the moments of a half-open trial), and the bus log says
  when it opened and each half-open trial;
- the flow pauses: the calls made during the outage are the few that opened the breaker plus
  one trial per `reset_after`, not a retry storm; nothing is applied meanwhile; the records the
  delivery holds stay within its bound while the backlog waits in Kafka (the lag);
- nothing is dead-lettered (read from the dead-letter topics), although the retry policy
  (4 attempts, at most 1 s apart) would exhaust in seconds if an outage counted against events;
- the inbound endpoint keeps accepting at the load's rate throughout;
- the bus process's memory stays bounded (RSS sampled with psutil);
- once the system is back, every accepted event is delivered, in the order of its key's
  records on the delivered topic.
"""

import asyncio
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
from aiokafka import AIOKafkaConsumer
from prometheus_client.parser import text_string_to_metric_families

from bus.kafka_topics import scan, topic_partitions
from tests.chaos.conftest import ChaosResults
from tests.chaos.pipeline import Knobs, Pipeline
from tests.chaos.sink import ChaosSink

OUTAGE_S = 30.0
BEFORE_S = 8.0  # steady delivery before the fault
AFTER_S = 10.0  # the load goes on this long after the system is back
RATE = 20.0  # events per second the load driver posts
KEYS = 40
EVENTS = int(RATE * (BEFORE_S + OUTAGE_S + AFTER_S))
BREAKER_FAILURES = 5
RESET_AFTER_S = 2.0
MAX_IN_FLIGHT = 10
RECORDS_IN_HAND = MAX_IN_FLIGHT * 4  # bus.delivery.plan.RECORDS_PER_CALL
# The bus process idles at ~100-150 MiB (interpreter, aiokafka, the journeys recorder); an
# outage must not make it hold the backlog: the paused delivery leaves it in Kafka.
RSS_BOUND_MIB = 256.0
RSS_GROWTH_BOUND_MIB = 64.0  # over the outage, above what it held just before

OUTAGE_KNOBS = Knobs(
    delivery_max_in_flight=MAX_IN_FLIGHT,
    # Few attempts, close together: without the breaker's pause, every event called during the
    # outage would be dead-lettered within seconds.
    retry_attempts=4,
    backoff_initial="100ms",
    backoff_max="1s",
    breaker_failures=BREAKER_FAILURES,
    breaker_reset_after=f"{RESET_AFTER_S:g}s",
)


@pytest.mark.timeout(420)
@pytest.mark.parametrize("fault", ["503", "down"])
async def test_outbound_outage_pauses_the_flow_and_loses_nothing(
    fault: str, tmp_path: Path, bootstrap_servers: str, chaos_results: ChaosResults
) -> None:
    async with (
        ChaosSink() as sink,
        Pipeline(bootstrap_servers, tmp_path, sink, OUTAGE_KNOBS) as pipeline,
    ):
        await pipeline.start_bus()
        assert pipeline.pid is not None
        rss = RssSampler(pipeline.pid)
        rss.start()
        out = f"{pipeline.id}-out"
        pipeline.start_load(EVENTS, keys=KEYS, rate=RATE, concurrency=20)
        await asyncio.sleep(BEFORE_S)
        assert sink.unique, "nothing delivered before the outage: the pipeline does not run"
        rss_before = rss.peak_mib
        calls_before = await outbound_calls(pipeline, out)
        accepted_before = len(pipeline.load.accepted)
        log_before = len(pipeline.own_log())

        # -- the outage -----------------------------------------------------------------
        if fault == "503":
            sink.unavailable(True)
        else:
            await sink.go_down()
        started = time.monotonic()
        watch = OutageWatch()
        # A call answered in the first moment may still be applied; after that, nothing is.
        await asyncio.sleep(2.0)
        applied_early = len(sink.unique)
        while time.monotonic() - started < OUTAGE_S:
            await watch.look(pipeline, out)
            await asyncio.sleep(1.0)
        applied_during = len(sink.unique) - applied_early
        calls_during = await outbound_calls(pipeline, out) - calls_before
        accepted_during = len(pipeline.load.accepted) - accepted_before
        rss_outage_peak = rss.peak_mib
        if fault == "503":
            sink.unavailable(False)
        else:
            await sink.come_back()
        back = time.monotonic()
        outage_log = pipeline.own_log()[log_before:]

        # -- recovery -------------------------------------------------------------------
        await pipeline.load_done(within=120)
        await pipeline.wait_delivered(within=120)
        drained_s = time.monotonic() - back
        after = await admin_item(pipeline, out)
        ready_after = await readyz(pipeline)
        await rss.stop()
        assert await pipeline.stop_bus() == 0, pipeline.own_log()[-3000:]
        dead_by_topic = await dead_letters(pipeline)
        dead = sum(dead_by_topic.values())
        in_order, out_of_order = await applied_in_log_order(pipeline)

    tally = pipeline.tally()
    opened = outage_log.count(f"outbound {out}: circuit closed -> open")
    trials = outage_log.count(f"outbound {out}: circuit open -> half-open")
    # Before it opened: up to `failures` failures, and calls already under way meanwhile
    # (each failure frees a slot for another event); then one trial per reset_after.
    call_bound = BREAKER_FAILURES + MAX_IN_FLIGHT + math.ceil(OUTAGE_S / RESET_AFTER_S) + 1
    counts: dict[str, Any] = {
        **tally,
        "fault": "HTTP 503 for 30 s" if fault == "503" else "sink not listening for 30 s",
        "dead_lettered": dead,
        "outbound_calls_during_outage": calls_during,
        "outbound_call_bound": call_bound,
        "sink_503_answers": sink.refused,
        "breaker_opened": opened,
        "half_open_trials": trials,
        "breaker_states_seen": sorted(watch.breaker_states),
        "readyz_during_outage": {str(k): v for k, v in sorted(watch.readyz.items())},
        "max_records_in_hand_during_outage": watch.max_in_flight,
        "max_lag_during_outage": watch.max_lag,
        "applied_during_outage": applied_during,
        "accepted_during_outage": accepted_during,
        "drained_after_s": round(drained_s, 1),
        "keys_in_order": in_order,
        "rss_before_mib": round(rss_before, 1),
        "rss_outage_peak_mib": round(rss_outage_peak, 1),
        "rss_peak_mib": round(rss.peak_mib, 1),
        "rss_samples": rss.samples,
    }
    chaos_results.record(f"outbound-outage-{fault}", **counts)
    print(f"\noutbound-outage-{fault}: {counts}")

    assert tally["accepted"] == tally["sent"] == EVENTS, counts
    assert tally["lost"] == 0, counts
    assert tally["delivered"] == EVENTS, counts
    assert tally["effective_duplicates"] == 0, counts
    assert dead == 0, counts
    # The breaker opened once, probed, and the outage showed where an operator looks.
    assert opened >= 1, outage_log[-3000:]
    assert trials >= OUTAGE_S / RESET_AFTER_S / 3, counts
    assert "open" in watch.breaker_states, counts
    # Its only breaker open: nothing can be delivered. Half-open counts as not open (a trial
    # may go out), so a probe landing in a trial's moment may still say ready.
    assert set(watch.readyz) <= {200, 503}, counts
    assert watch.readyz[503] >= 0.8 * watch.readyz.total(), counts
    assert after["breaker"] == "closed", after
    assert ready_after == 200
    # The flow paused: a handful of calls and trials, nothing applied, the backlog in Kafka.
    assert BREAKER_FAILURES <= calls_during <= call_bound, counts
    assert calls_during - trials <= BREAKER_FAILURES + MAX_IN_FLIGHT, counts  # the rest: trials
    if fault == "503":
        assert sink.refused <= call_bound, counts
    assert applied_during == 0, counts
    assert watch.max_in_flight <= RECORDS_IN_HAND, counts
    assert watch.max_lag >= RATE * OUTAGE_S / 2, counts
    # Inbound kept accepting at the load's rate (an outbound outage is no reason to refuse).
    assert accepted_during >= RATE * OUTAGE_S * 0.8, counts
    assert not pipeline.load.refusals, pipeline.load.refusals
    assert out_of_order == [], counts
    assert rss.peak_mib < RSS_BOUND_MIB, counts
    assert rss_outage_peak - rss_before < RSS_GROWTH_BOUND_MIB, counts


async def test_without_the_breaker_the_same_outage_dead_letters(
    tmp_path: Path, bootstrap_servers: str, chaos_results: ChaosResults
) -> None:
    """The control: the same retry policy without a circuit breaker dead-letters what it
    cannot deliver within its attempts, so the outage runs' 0 dead letters is the breaker's
    doing (and the dead-letter count above is able to count)."""
    knobs = Knobs(retry_attempts=2, backoff_initial="100ms", backoff_max="200ms")
    async with ChaosSink() as sink, Pipeline(bootstrap_servers, tmp_path, sink, knobs) as pipeline:
        await pipeline.start_bus()
        sink.unavailable(True)
        await pipeline.send(10, keys=5)
        deadline = time.monotonic() + 60
        while (dead := await dead_letters(pipeline))[f"{pipeline.id}-out.dlq"] < 10:
            assert time.monotonic() < deadline, dead
            await asyncio.sleep(0.5)
        assert await pipeline.stop_bus() == 0, pipeline.own_log()[-3000:]
    chaos_results.record(
        "outbound-outage-no-breaker",
        sent=10,
        accepted=len(pipeline.load.accepted),
        dead_lettered=sum(dead.values()),
        sink_503_answers=sink.refused,
    )
    assert dead == {
        f"{pipeline.id}-{item}.dlq": n for item, n in [("in", 0), ("mediate", 0), ("out", 10)]
    }
    assert sink.refused == 20  # two attempts each
    assert not sink.unique


# -- helpers (test_slow_consumer.py uses them too) --------------------------------------------


@dataclass
class RssSampler:
    """The resident memory of a process (and its children), sampled every `every` seconds."""

    pid: int
    every: float = 0.5
    peak_mib: float = 0.0
    samples: int = 0
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._sample())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def mib(self) -> float:
        process = psutil.Process(self.pid)
        total = process.memory_info().rss
        for child in process.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.NoSuchProcess:  # ended between listing and asking
                continue
        return total / 2**20

    async def _sample(self) -> None:
        while True:
            try:
                self.peak_mib = max(self.peak_mib, self.mib())
                self.samples += 1
            except psutil.NoSuchProcess:
                return
            await asyncio.sleep(self.every)


@dataclass
class OutageWatch:
    """What the admin API said, looked at every second during the outage."""

    breaker_states: set[str] = field(default_factory=set)
    readyz: Counter[int] = field(default_factory=Counter)
    max_in_flight: int = 0
    max_lag: int = 0

    async def look(self, pipeline: Pipeline, item: str) -> None:
        status = await admin_item(pipeline, item)
        self.breaker_states.add(str(status["breaker"]))
        self.max_in_flight = max(self.max_in_flight, int(status["in_flight"] or 0))
        self.max_lag = max(self.max_lag, int(status["lag"] or 0))
        self.readyz[await readyz(pipeline)] += 1


async def admin_get(pipeline: Pipeline, path: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.get(pipeline.admin_url + path) as answer,
    ):
        return answer.status, await answer.json(content_type=None)


async def admin_item(pipeline: Pipeline, item: str) -> dict[str, Any]:
    """The item's entry of the admin API's GET /flows."""
    status, body = await admin_get(pipeline, "/flows")
    assert status == 200, body
    [found] = [entry for entry in body["items"] if entry["name"] == item]
    return dict(found)


async def readyz(pipeline: Pipeline) -> int:
    status, _ = await admin_get(pipeline, "/readyz")
    return status


async def metrics_text(pipeline: Pipeline) -> str:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.get(pipeline.admin_url + "/metrics") as answer,
    ):
        assert answer.status == 200
        return await answer.text()


async def outbound_calls(pipeline: Pipeline, item: str) -> int:
    """`bus_outbound_calls_total` of the item, whatever the status (a refused connection is
    counted too, as "none": the sink cannot count what never reached it)."""
    total = 0.0
    for family in text_string_to_metric_families(await metrics_text(pipeline)):
        if family.name != "bus_outbound_calls":
            continue
        for sample in family.samples:
            if sample.name == "bus_outbound_calls_total" and sample.labels.get("flow") == item:
                total += sample.value
    return int(total)


async def applied_in_log_order(pipeline: Pipeline) -> tuple[int, list[str]]:
    """Per key, whether the sink applied the events in the order of their records on the
    delivered topic (B). Returns how many keys were compared and those out of order."""
    expected = await ids_per_key(pipeline.bootstrap_servers, pipeline.topic_b)
    applied = {
        key: [call.idempotency_key for call in calls]
        for key, calls in pipeline.sink.order_per_key().items()
    }
    keys = expected.keys() | applied.keys()
    wrong = sorted(key for key in keys if expected.get(key) != applied.get(key))
    return len(expected), wrong


async def dead_letters(pipeline: Pipeline) -> dict[str, int]:
    """Records in each of the pipeline's three dead-letter topics (inbound, mediation,
    outbound), which must exist (the bus creates them at start)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=pipeline.bootstrap_servers)
    await consumer.start()
    try:
        counts: dict[str, int] = {}
        for item in ("in", "mediate", "out"):
            topic = f"{pipeline.id}-{item}.dlq"
            tps = await topic_partitions(pipeline.bootstrap_servers, topic)
            assert tps, f"the dead-letter topic {topic} does not exist"
            ends = await consumer.end_offsets(tps)
            starts = await consumer.beginning_offsets(tps)
            counts[topic] = sum(ends[tp] - starts[tp] for tp in tps)
        return counts
    finally:
        await consumer.stop()


async def ids_per_key(bootstrap_servers: str, topic: str) -> dict[str, list[str]]:
    """Every record of `topic`, read from the start: per key, the event ids (ce_id) in log
    order, a repeated id (a record written again) kept at its first place."""
    partitions = await topic_partitions(bootstrap_servers, topic)
    assert partitions, f"the topic {topic} does not exist"
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        starts = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        order: dict[str, list[str]] = {}
        seen: set[str] = set()
        async with asyncio.timeout(60):
            async for record in scan(consumer, {tp: (starts[tp], ends[tp]) for tp in partitions}):
                event_id = dict(record.headers)["ce_id"].decode()
                if event_id not in seen:
                    seen.add(event_id)
                    order.setdefault((record.key or b"").decode(), []).append(event_id)
        return order
    finally:
        await consumer.stop()
