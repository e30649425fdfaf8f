"""Prometheus metrics: known hops and calls give exact samples; the board's gauges follow a real
consumer on the test broker, a circuit breaker on a fake clock and the items' states."""

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import prometheus_client.metrics
import pytest
from aiokafka import TopicPartition
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from bus.kafka_clients import durable_producer, group_consumer
from bus.resilience import CircuitBreaker, FakeClock
from bus.telemetry.hop import Hop, HopKind, Outcome, Output
from bus.telemetry.metrics import BusMetrics
from bus.telemetry.status import ItemState, StatusBoard

T = 1_700_000_000.0  # hops start here: whole seconds, so latencies come out exact

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(metrics: BusMetrics) -> Samples:
    """Every sample of the exposition, by sample name and labels, as Prometheus parses it."""
    body, _ = metrics.exposition()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    assert key in samples, f"no sample {name}{labels}; {name} has {series(samples, name)}"
    return samples[key]


def series(samples: Samples, name: str) -> list[dict[str, str]]:
    """The label sets of every sample called `name`."""
    return [dict(labels) for sample_name, labels in samples if sample_name == name]


def hop(
    kind: HopKind,
    flow: str,
    outcome: Outcome,
    *,
    outputs: int = 0,
    attempts: int = 1,
    step: str | None = None,
    duration: float = 0.01,
    event_time: datetime | None = None,
) -> Hop:
    return Hop(
        kind=kind,
        flow=flow,
        started=T,
        event_id="e-1",
        outcome=outcome,
        outputs=[Output(f"o-{n}", "out.v1") for n in range(outputs)],
        attempts=attempts,
        step=step,
        duration=duration,
        event_time=event_time,
    )


def seconds_before_start(seconds: float) -> datetime:
    return datetime.fromtimestamp(T - seconds, UTC)


# -- hops -------------------------------------------------------------------------------------


def test_hops_count_events_in_out_failed_dead_lettered_and_retried_per_item() -> None:
    board = StatusBoard()
    metrics = BusMetrics(board)
    for done in (
        hop("inbound", "crm-hook", "accepted", outputs=1),
        hop("inbound", "crm-hook", "accepted", outputs=1),
        hop("mediation", "router", "processed", outputs=2),
        hop("mediation", "router", "processed", outputs=1),
        hop("mediation", "router", "filtered"),
        hop("mediation", "router", "failed", step="route"),
        hop("outbound", "erp", "delivered", outputs=1, attempts=3),
        hop("outbound", "erp", "dead-lettered", outputs=1, attempts=4, step="call"),
        hop("outbound", "erp", "dead-lettered", outputs=1, step="decode"),
        hop("outbound", "erp", "dead-lettered", outputs=1, step="decode"),
        hop("replay", "erp", "replayed", outputs=1),
    ):
        metrics.observe(done)

    samples = scrape(metrics)

    def item(name: str, flow: str, kind: str) -> float:
        return value(samples, name, flow=flow, kind=kind)

    assert item("bus_events_in_total", "crm-hook", "inbound") == 2
    assert item("bus_events_out_total", "crm-hook", "inbound") == 2
    assert item("bus_events_in_total", "router", "mediation") == 4
    assert item("bus_events_out_total", "router", "mediation") == 3
    assert item("bus_events_failed_total", "router", "mediation") == 1
    assert item("bus_events_in_total", "erp", "outbound") == 4
    # The dead letters a hop wrote are not its outputs: only the reply counts as out.
    assert item("bus_events_out_total", "erp", "outbound") == 1
    assert item("bus_events_failed_total", "erp", "outbound") == 3
    assert item("bus_retries_total", "erp", "outbound") == 2 + 3
    assert item("bus_retries_total", "router", "mediation") == 0
    assert series(samples, "bus_events_dead_lettered_total") == [
        {"flow": "erp", "kind": "outbound", "step": "call"},
        {"flow": "erp", "kind": "outbound", "step": "decode"},
    ]
    dead = "bus_events_dead_lettered_total"
    assert value(samples, dead, flow="erp", kind="outbound", step="call") == 1
    assert value(samples, dead, flow="erp", kind="outbound", step="decode") == 2
    assert item("bus_events_in_total", "erp", "replay") == 1
    assert item("bus_events_out_total", "erp", "replay") == 1

    # The board's counters say the same, and a replay is not the outbound item's own work.
    counters = {status.name: (status.kind, status.counters.as_dict()) for status in board}
    assert counters == {
        "crm-hook": (
            "inbound",
            {"in": 2, "out": 2, "failed": 0, "dead_lettered": 0, "retried": 0},
        ),
        "router": (
            "mediation",
            {"in": 4, "out": 3, "failed": 1, "dead_lettered": 0, "retried": 0},
        ),
        "erp": ("outbound", {"in": 4, "out": 1, "failed": 3, "dead_lettered": 3, "retried": 5}),
    }


def test_processing_latency_histogram_puts_each_hop_in_its_bucket() -> None:
    metrics = BusMetrics(StatusBoard())
    for duration in (0.0005, 0.003, 0.003, 0.2, 45.0):
        metrics.observe(hop("mediation", "router", "processed", duration=duration))

    samples = scrape(metrics)

    name = "bus_processing_duration_seconds"
    buckets = {
        labels["le"]: value(samples, f"{name}_bucket", **labels)
        for labels in series(samples, f"{name}_bucket")
    }
    assert buckets == {
        "0.001": 1,
        "0.0025": 1,
        "0.005": 3,
        "0.01": 3,
        "0.025": 3,
        "0.05": 3,
        "0.1": 3,
        "0.25": 4,
        "0.5": 4,
        "1.0": 4,
        "2.5": 4,
        "5.0": 4,
        "10.0": 4,
        "30.0": 4,
        "60.0": 5,
        "120.0": 5,
        "300.0": 5,
        "600.0": 5,
        "+Inf": 5,
    }
    assert value(samples, f"{name}_count", flow="router", kind="mediation") == 5
    assert value(samples, f"{name}_sum", flow="router", kind="mediation") == pytest.approx(45.2065)


def test_a_duration_on_a_bound_counts_in_that_bucket_and_created_series_follow_the_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Prometheus buckets are "less than or equal"; the per-item series are ours (not
    prometheus_client children), so they must also honour PROMETHEUS_DISABLE_CREATED_SERIES."""
    metrics = BusMetrics(StatusBoard())
    metrics.observe(hop("mediation", "router", "processed", duration=0.001))
    name = "bus_processing_duration_seconds"
    samples = scrape(metrics)
    assert value(samples, f"{name}_bucket", flow="router", kind="mediation", le="0.001") == 1
    assert value(samples, "bus_events_in_created", flow="router", kind="mediation") > 0
    assert value(samples, f"{name}_created", flow="router", kind="mediation") > 0

    monkeypatch.setattr(prometheus_client.metrics, "_use_created", False)
    body = metrics.exposition()[0].decode()
    assert "bus_events_in_total" in body
    assert "bus_events_in_created" not in body
    assert f"{name}_created" not in body


def test_end_to_end_latency_runs_from_ce_time_to_the_end_of_the_hop_that_finished_it() -> None:
    metrics = BusMetrics(StatusBoard())
    # 3 s in Kafka, then 0.5 s of work: 3.5 s.
    metrics.observe(
        hop("mediation", "router", "processed", duration=0.5, event_time=seconds_before_start(3))
    )
    # 100 s waiting out an outage, then a 20 s call: 120 s.
    metrics.observe(
        hop("outbound", "erp", "delivered", duration=20.0, event_time=seconds_before_start(100))
    )
    # Hops that did not finish their event leave the end-to-end latency alone.
    metrics.observe(hop("mediation", "router", "filtered", event_time=seconds_before_start(1)))
    metrics.observe(hop("outbound", "erp", "failed", event_time=seconds_before_start(1)))
    metrics.observe(hop("outbound", "erp", "dead-lettered", event_time=seconds_before_start(1)))
    # An event stamped by a clock ahead of ours took no time, rather than negative time.
    metrics.observe(hop("mediation", "router", "processed", event_time=seconds_before_start(-5)))
    # An event without ce_time cannot say.
    metrics.observe(hop("mediation", "router", "processed"))
    metrics.observe(hop("inbound", "crm-hook", "accepted", event_time=seconds_before_start(1)))

    samples = scrape(metrics)

    name = "bus_end_to_end_latency_seconds"
    router = {"flow": "router", "kind": "mediation"}
    erp = {"flow": "erp", "kind": "outbound"}
    assert value(samples, f"{name}_count", **router) == 2
    assert value(samples, f"{name}_sum", **router) == 3.5
    assert value(samples, f"{name}_bucket", **router, le="0.001") == 1
    assert value(samples, f"{name}_bucket", **router, le="2.5") == 1
    assert value(samples, f"{name}_bucket", **router, le="5.0") == 2
    assert value(samples, f"{name}_count", **erp) == 1
    assert value(samples, f"{name}_sum", **erp) == 120.0
    assert value(samples, f"{name}_bucket", **erp, le="60.0") == 0
    assert value(samples, f"{name}_bucket", **erp, le="120.0") == 1
    # Inbound hops never finish an event: no series at all for them.
    assert {labels["flow"] for labels in series(samples, f"{name}_count")} == {"router", "erp"}


# -- calls ------------------------------------------------------------------------------------


def test_outbound_calls_count_by_status_with_none_for_no_answer_and_time_by_flow() -> None:
    metrics = BusMetrics(StatusBoard())
    metrics.outbound_call("erp", 200, 0.05)
    metrics.outbound_call("erp", 200, 0.1)
    metrics.outbound_call("erp", 503, 0.3)
    metrics.outbound_call("erp", None, 30.0)
    metrics.outbound_call("crm", 429, 0.002)

    samples = scrape(metrics)

    calls = "bus_outbound_calls_total"
    assert {
        (labels["flow"], labels["status"]): value(samples, calls, **labels)
        for labels in series(samples, calls)
    } == {("erp", "200"): 2, ("erp", "503"): 1, ("erp", "none"): 1, ("crm", "429"): 1}
    duration = "bus_outbound_call_duration_seconds"
    assert value(samples, f"{duration}_count", flow="erp") == 4
    assert value(samples, f"{duration}_bucket", flow="erp", le="0.1") == 2
    assert value(samples, f"{duration}_bucket", flow="erp", le="0.5") == 3
    assert value(samples, f"{duration}_bucket", flow="erp", le="30.0") == 4
    assert value(samples, f"{duration}_sum", flow="erp") == pytest.approx(30.45)
    assert value(samples, f"{duration}_count", flow="crm") == 1


def test_inbound_requests_count_by_route_method_and_status() -> None:
    metrics = BusMetrics(StatusBoard())
    metrics.inbound_request("/hooks/crm", "POST", 202, 0.004)
    metrics.inbound_request("/hooks/crm", "POST", 202, 0.02)
    metrics.inbound_request("/hooks/crm", "POST", 400, 0.001)
    metrics.inbound_request("/publish", "POST", 503, 0.8)

    samples = scrape(metrics)

    requests = "bus_inbound_requests_total"
    assert value(samples, requests, route="/hooks/crm", method="POST", status="202") == 2
    assert value(samples, requests, route="/hooks/crm", method="POST", status="400") == 1
    assert value(samples, requests, route="/publish", method="POST", status="503") == 1
    duration = "bus_inbound_request_duration_seconds"
    assert value(samples, f"{duration}_count", route="/hooks/crm", method="POST") == 3
    assert value(samples, f"{duration}_bucket", route="/hooks/crm", method="POST", le="0.005") == 2
    assert value(samples, f"{duration}_bucket", route="/publish", method="POST", le="0.5") == 0
    assert value(samples, f"{duration}_bucket", route="/publish", method="POST", le="1.0") == 1


def test_dropped_journey_records_are_counted() -> None:
    metrics = BusMetrics(StatusBoard())
    assert value(scrape(metrics), "bus_journey_records_dropped_total") == 0

    for _ in range(3):
        metrics.journey_dropped()

    assert value(scrape(metrics), "bus_journey_records_dropped_total") == 3


# -- the board --------------------------------------------------------------------------------


async def test_lag_per_partition_assigned_partitions_and_in_flight_follow_a_real_consumer(
    bootstrap_servers: str,
    topic_name: Callable[[str], str],
    create_topics: Callable[..., Awaitable[None]],
) -> None:
    topic = topic_name("orders")
    await create_topics(topic, partitions=2)
    producer = durable_producer(bootstrap_servers)
    await producer.start()
    try:
        sent = [
            await producer.send(topic, b"order", partition=partition)
            for partition, count in ((0, 10), (1, 6))
            for _ in range(count)
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
    board = StatusBoard()
    metrics = BusMetrics(board)
    status = board.item("order-router", "mediation")
    status.in_flight = lambda: 3
    consumer = group_consumer(bootstrap_servers, topic_name("group"))
    consumer.subscribe([topic])
    await consumer.start()
    try:
        status.consumer = consumer
        # Take 4 records of partition 0 and 2 of partition 1: 6 and 4 are left.
        for partition, wanted in ((0, 4), (1, 2)):
            taken = 0
            async with asyncio.timeout(60):
                while taken < wanted:
                    batches = await consumer.getmany(
                        TopicPartition(topic, partition), timeout_ms=500, max_records=wanted - taken
                    )
                    taken += sum(len(batch) for batch in batches.values())
            assert taken == wanted

        samples = scrape(metrics)

        item = {"flow": "order-router", "kind": "mediation"}
        assert {
            labels["partition"]: value(samples, "bus_consumer_lag_records", **labels)
            for labels in series(samples, "bus_consumer_lag_records")
            if labels["topic"] == topic
        } == {"0": 6, "1": 4}
        assert value(samples, "bus_assigned_partitions", **item) == 2
        assert value(samples, "bus_in_flight_events", **item) == 3
    finally:
        await consumer.stop()

    # Without a consumer (the runner stopped it), there is no lag to speak of.
    status.consumer = None
    samples = scrape(metrics)
    assert series(samples, "bus_consumer_lag_records") == []
    assert series(samples, "bus_assigned_partitions") == []


def test_circuit_breaker_state_is_one_for_the_current_state_as_it_changes() -> None:
    board = StatusBoard()
    metrics = BusMetrics(board)
    clock = FakeClock()
    breaker = CircuitBreaker(failures=2, reset_after=30.0, clock=clock)
    board.item("erp", "outbound").breaker = breaker
    board.item("router", "mediation")  # no breaker: no breaker series

    def states() -> dict[str, float]:
        samples = scrape(metrics)
        name = "bus_circuit_breaker_state"
        assert {labels["flow"] for labels in series(samples, name)} == {"erp"}
        return {
            state: value(samples, name, flow="erp", kind="outbound", state=state)
            for state in ("closed", "open", "half-open")
        }

    assert states() == {"closed": 1, "open": 0, "half-open": 0}
    breaker.record_failure()
    breaker.record_failure()
    assert states() == {"closed": 0, "open": 1, "half-open": 0}
    clock.advance(30.0)
    assert states() == {"closed": 0, "open": 0, "half-open": 1}
    assert breaker.allow()
    breaker.record_success()
    assert states() == {"closed": 1, "open": 0, "half-open": 0}


def test_item_state_restarts_and_time_in_state_come_from_the_board() -> None:
    board = StatusBoard()
    metrics = BusMetrics(board)
    status = board.item("router", "mediation")
    item = {"flow": "router", "kind": "mediation"}

    def states() -> dict[str, float]:
        samples = scrape(metrics)
        return {
            state.value: value(samples, "bus_item_state", **item, state=state.value)
            for state in ItemState
        }

    assert states() == {"starting": 1, "running": 0, "restarting": 0, "stopped": 0}
    status.enter(ItemState.RUNNING)
    assert states() == {"starting": 0, "running": 1, "restarting": 0, "stopped": 0}
    status.enter(ItemState.RESTARTING, RuntimeError("broker gone"))
    status.enter(ItemState.RUNNING)
    status.enter(ItemState.RESTARTING, RuntimeError("broker gone again"))
    assert states() == {"starting": 0, "running": 0, "restarting": 1, "stopped": 0}

    status.since = time.time() - 42.0
    samples = scrape(metrics)

    assert value(samples, "bus_item_restarts_total", **item) == 2
    # The scrape reads the clock a moment after `since` was set: 42 s and a little.
    assert 42.0 <= value(samples, "bus_item_state_age_seconds", **item) < 52.0


# -- registries -------------------------------------------------------------------------------


def test_two_instances_in_one_process_do_not_share_values() -> None:
    first = BusMetrics(StatusBoard())
    second = BusMetrics(StatusBoard())

    first.observe(hop("mediation", "router", "processed", outputs=1))
    first.outbound_call("erp", 200, 0.1)
    first.journey_dropped()
    second.observe(hop("mediation", "other", "processed"))

    one, two = scrape(first), scrape(second)
    assert first.registry is not second.registry
    assert series(one, "bus_events_in_total") == [{"flow": "router", "kind": "mediation"}]
    assert series(two, "bus_events_in_total") == [{"flow": "other", "kind": "mediation"}]
    assert series(two, "bus_outbound_calls_total") == []
    assert value(one, "bus_journey_records_dropped_total") == 1
    assert value(two, "bus_journey_records_dropped_total") == 0
    # Each has the process metrics of its own registry too.
    assert value(two, "process_start_time_seconds") > 0


def test_a_registry_passed_in_holds_only_the_bus_metrics_in_the_latest_text_format() -> None:
    registry = CollectorRegistry()
    metrics = BusMetrics(StatusBoard(), registry=registry)
    metrics.observe(hop("inbound", "crm-hook", "accepted", outputs=1))

    body, content_type = metrics.exposition()

    assert metrics.registry is registry
    assert content_type == CONTENT_TYPE_LATEST
    names = {family.name for family in text_string_to_metric_families(body.decode())}
    assert names, body
    assert all(name.startswith("bus_") for name in names), names
    assert "bus_events_in" in names
