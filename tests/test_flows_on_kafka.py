"""Mediation flows on the real broker: each step, DLQ, ordering, graceful shutdown."""

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from bus.events.codec import record_of
from bus.events.event import Event
from bus.events.publisher import Publisher
from bus.flows import runner
from bus.flows.loading import load_flow_files
from bus.flows.runtime import run_flows
from bus.telemetry.hop import Hop
from bus.telemetry.hub import Telemetry
from bus.telemetry.metrics import BusMetrics
from bus.telemetry.status import StatusBoard
from bus.telemetry.tracing import Tracing
from tests.flow_harness import (
    CATALOG,
    decode,
    headers_of,
    read_all,
    read_records,
    running_flows,
    write_flow,
)

WHEN = "2026-11-24T01:40:06.123Z"


def customer(number: int, country: str, **changes: Any) -> dict[str, Any]:
    return {
        "customerId": f"c-{number}",
        "change": "UPDATED",
        "email": f"c{number}@example.com",
        "name": f"Customer {number}",
        "address": {"line1": "1 Way", "city": "Town", "postalCode": "1", "country": country},
        "changedAt": WHEN,
        **changes,
    }


async def test_filter_route_transform_and_dead_letters(
    tmp_path: Path,
    bootstrap_servers: str,
    topic_name: Callable[[str], str],
    create_topics: Callable[..., Any],
) -> None:
    source, eu, world, dlq = (topic_name(p) for p in ("in", "eu", "world", "dlq"))
    await create_topics(source)
    flow = write_flow(
        tmp_path,
        f"""
mediation:
  - name: upserts
    from: {source}
    dlq: {dlq}
    steps:
      - filter: event.change != "DELETED"
      - transform:
          to: com.acme.erp.CustomerUpsertRequest
          map:
            customerId: event.customerId
            legalName: event.name
            email: event.email
            billingAddress: event.address
            salesRegion: 'event.address.country in ["US", "CA"] ? "US" : "EU"'
            requestedAt: attributes.time
      - route:
          routes:
            - when: event.salesRegion == "EU"
              to: {eu}
            - otherwise: {world}
""",
    )
    async with (
        Publisher(bootstrap_servers, CATALOG, source="/crm") as publisher,
        running_flows(flow, bootstrap_servers),
    ):
        first = await publisher.publish(
            source, "com.acme.crm.CustomerChanged", customer(1, "DE"), key="c-1", subject="c-1"
        )
        await publisher.publish(
            source, "com.acme.crm.CustomerChanged", customer(2, "US"), key="c-2"
        )
        await publisher.publish(
            source, "com.acme.crm.CustomerChanged", customer(3, "FR", change="DELETED"), key="c-3"
        )
        # Poison: not an event; an address missing, so the transform's mapping fails.
        await publisher._producer.send_and_wait(source, b"not avro", key=b"c-4")
        no_address = await publisher.publish(
            source, "com.acme.crm.CustomerChanged", customer(5, "DE", address=None), key="c-5"
        )
        [to_eu] = await decode(await read_records(bootstrap_servers, eu, 1))
        [to_world] = await decode(await read_records(bootstrap_servers, world, 1))
        letters = await read_records(bootstrap_servers, dlq, 2)

    assert to_eu.type == "com.acme.erp.CustomerUpsertRequest"
    assert to_eu.data["customerId"] == "c-1"
    assert to_eu.data["billingAddress"]["country"] == "DE"
    assert to_eu.data["requestedAt"] == first.time
    assert to_eu.key == "c-1"
    assert to_eu.subject == "c-1"
    assert to_eu.source == "/bus/flows/upserts"
    assert to_eu.extensions == {"parentid": first.id, "rootid": first.id}
    assert to_eu.id != first.id
    assert to_world.data["salesRegion"] == "US"

    by_offset = sorted(letters, key=lambda r: headers_of(r)["bus_dlq_offset"])
    reasons = {headers_of(r)["bus_dlq_step"]: headers_of(r) for r in by_offset}
    assert reasons["decode"]["bus_dlq_error_type"] == "BadHeaderError"
    assert reasons["decode"]["bus_dlq_flow"] == "upserts"
    assert reasons["decode"]["bus_dlq_topic"] == source
    garbage = next(r for r in letters if headers_of(r)["bus_dlq_step"] == "decode")
    assert garbage.value == b"not avro"
    assert garbage.key == b"c-4"
    failed = reasons["steps[1].transform"]
    assert failed["bus_dlq_error_type"] == "ExpressionError"
    assert "address" in failed["bus_dlq_error"]
    assert failed["bus_dlq_attempts"] == "1"
    mapped = next(r for r in letters if headers_of(r)["bus_dlq_step"] == "steps[1].transform")
    assert headers_of(mapped)["ce_id"] == no_address.id  # the original record, unchanged


async def test_a_flow_that_does_not_decode_passes_values_on_as_they_are(
    tmp_path: Path,
    bootstrap_servers: str,
    topic_name: Callable[[str], str],
    create_topics: Callable[..., Any],
) -> None:
    """`decode: false`: routed and keyed on attributes, the value never read, so even a value
    that is not Avro passes on byte for byte; a record without CloudEvents headers is still
    dead-lettered (as are a value said to be other than Avro and a tombstone), and outputs are
    new events (ids, source, lineage) like any flow's."""
    source, deletes, others, dlq = (topic_name(p) for p in ("in", "deletes", "others", "dlq"))
    await create_topics(source)
    flow = write_flow(
        tmp_path,
        f"""
mediation:
  - name: switch
    from: {source}
    decode: false
    dlq: {dlq}
    steps:
      - filter: attributes.subject != "skip"
      - set_key: '"routed-" + attributes.key'
      - route:
          routes:
            - when: attributes.subject == "deleted"
              to: {deletes}
            - otherwise: {others}
""",
    )
    async with (
        Publisher(bootstrap_servers, CATALOG, source="/crm") as publisher,
        running_flows(flow, bootstrap_servers),
    ):
        first = await publisher.publish(
            source, "com.acme.crm.CustomerChanged", customer(1, "DE"), key="c-1",
            subject="deleted",
        )  # fmt: skip
        await publisher.publish(
            source, "com.acme.crm.CustomerChanged", customer(2, "US"), key="c-2", subject="skip"
        )
        # Not Avro, but with CloudEvents headers: passed on; no headers at all: a dead letter.
        headers = [(n, v) for n, v in headers_of_record(first) if n != "ce_subject"]
        await publisher._producer.send_and_wait(source, b"opaque", key=b"c-3", headers=headers)
        await publisher._producer.send_and_wait(source, b"bare", key=b"c-4")
        # Said to be JSON, or a tombstone: refused, as decoding would refuse them.
        json_headers = [(n, b"application/json" if n == "content-type" else v) for n, v in headers]
        await publisher._producer.send_and_wait(source, b"{}", key=b"c-5", headers=json_headers)
        await publisher._producer.send_and_wait(source, None, key=b"c-6", headers=headers)
        [deleted] = await read_records(bootstrap_servers, deletes, 1)
        [opaque] = await read_records(bootstrap_servers, others, 1)
        letters = await read_records(bootstrap_servers, dlq, 3)
        consumed = await read_records(bootstrap_servers, source, 6)

    assert deleted.value == next(r.value for r in consumed if r.key == b"c-1")
    assert deleted.key == b"routed-c-1"
    attributes = headers_of(deleted)
    assert attributes["ce_type"] == "com.acme.crm.CustomerChanged"
    assert attributes["ce_source"] == "/bus/flows/switch"
    assert attributes["ce_id"] != first.id
    assert attributes["ce_parentid"] == first.id
    [event] = await decode([deleted])  # the value, untouched, is still the event's data
    assert event.data["customerId"] == "c-1"
    assert opaque.value == b"opaque"
    assert opaque.key == b"routed-c-3"
    by_key = {letter.key: headers_of(letter) for letter in letters}
    assert {reason["bus_dlq_step"] for reason in by_key.values()} == {"decode"}
    assert by_key[b"c-4"]["bus_dlq_error_type"] == "BadHeaderError"
    assert "missing header(s)" in by_key[b"c-4"]["bus_dlq_error"]
    assert next(letter.value for letter in letters if letter.key == b"c-4") == b"bare"
    assert "content-type is 'application/json'" in by_key[b"c-5"]["bus_dlq_error"]
    assert by_key[b"c-6"]["bus_dlq_error_type"] == "EventDecodeError"
    assert "tombstone" in by_key[b"c-6"]["bus_dlq_error"]
    # The skipped record went nowhere.
    assert await read_all(bootstrap_servers, others) == [opaque]


def headers_of_record(event: Event) -> list[tuple[str, bytes]]:
    """The CloudEvents headers bus writes for `event`."""
    return list(record_of(event, b"").headers)


def lookup_account(customerId: str) -> dict[str, Any]:  # noqa: N803 -- the flow's argument name
    return {"tier": "gold" if customerId.endswith("1") else "silver"}


async def tag_line(event: Event) -> Event | None:
    if event.data["quantity"] == 0:
        return None
    return event


async def test_split_set_key_enrich_and_python(
    tmp_path: Path,
    bootstrap_servers: str,
    topic_name: Callable[[str], str],
    create_topics: Callable[..., Any],
) -> None:
    source, lines, dlq = topic_name("orders"), topic_name("lines"), topic_name("dlq")
    await create_topics(source)
    flow = write_flow(
        tmp_path,
        f"""
mediation:
  - name: order-lines
    from: {source}
    to: {lines}
    dlq: {dlq}
    steps:
      - enrich:
          lookup: tests.test_flows_on_kafka:lookup_account
          with: {{customerId: event.customerId}}
          into: account
      - filter: event.account.tier == "gold"
      - split: event.lines
      - python: tests.test_flows_on_kafka:tag_line
      - set_key: event.sku
""",
    )
    order = {
        "orderId": "o-1",
        "customerId": "c-1",
        "channel": "WEB",
        "lines": [
            {"sku": "A", "quantity": 2, "unitPrice": {"amount": "1.25", "currency": "EUR"}},
            {"sku": "B", "quantity": 0, "unitPrice": {"amount": "9.00", "currency": "EUR"}},
            {"sku": "C", "quantity": 1, "unitPrice": {"amount": "0.10", "currency": "EUR"}},
        ],
        "total": {"amount": "2.60", "currency": "EUR"},
        "shippingAddress": {"line1": "1", "city": "Berlin", "postalCode": "1", "country": "DE"},
        "placedAt": WHEN,
    }
    async with (
        Publisher(bootstrap_servers, CATALOG, source="/shop") as publisher,
        running_flows(flow, bootstrap_servers),
    ):
        placed = await publisher.publish(
            source, "com.acme.orders.OrderPlaced", order, key="c-1", subject="o-1"
        )
        # A silver customer's order is filtered out after the enrichment.
        await publisher.publish(
            source, "com.acme.orders.OrderPlaced", {**order, "customerId": "c-2"}, key="c-2"
        )
        events = await decode(await read_records(bootstrap_servers, lines, 2))
        assert await read_all(bootstrap_servers, lines, quiet=2.0) == await read_records(
            bootstrap_servers, lines, 2
        )

    assert [e.type for e in events] == ["com.acme.orders.OrderLine"] * 2
    assert sorted((e.key, e.data["unitPrice"]["amount"]) for e in events) == [
        ("A", Decimal("1.25")),
        ("C", Decimal("0.10")),
    ]
    assert {e.subject for e in events} == {"o-1"}
    assert {e.extensions["parentid"] for e in events} == {placed.id}
    assert len({e.id for e in events}) == 2


async def test_order_per_key_under_concurrency(
    tmp_path: Path,
    bootstrap_servers: str,
    topic_name: Callable[[str], str],
    create_topics: Callable[..., Any],
) -> None:
    source, sink = topic_name("in"), topic_name("out")
    await create_topics(source, sink, partitions=6)
    flow = write_flow(
        tmp_path,
        f"""
mediation:
  - name: passthrough
    from: {source}
    to: {sink}
    max_in_flight: 37
    steps:
      - filter: event.email != ""
""",
    )
    keys = [f"c-{k}" for k in range(12)]
    async with Publisher(bootstrap_servers, CATALOG, source="/crm", linger_ms=5) as publisher:
        sent = [
            publisher.publish(
                source,
                "com.acme.crm.CustomerChanged",
                customer(n, "DE", name=f"{n:04d}", customerId=keys[n % 12]),
                key=keys[n % 12],
            )
            for n in range(600)
        ]
        # Sent concurrently: Kafka's per-partition order is the order of the sends.
        published = await asyncio.gather(*sent)
        async with running_flows(flow, bootstrap_servers):
            outputs = await decode(await read_records(bootstrap_servers, sink, 600))
    inputs = await decode(await read_records(bootstrap_servers, source, 600))

    def names_by_key(events: list[Event]) -> dict[str | None, list[str]]:
        grouped: dict[str | None, list[str]] = defaultdict(list)
        for event in events:
            grouped[event.key].append(event.data["name"])
        return grouped

    assert len(published) == 600
    assert names_by_key(outputs) == names_by_key(inputs)
    assert len({event.id for event in outputs}) == 600


async def test_graceful_stop_commits_what_is_done(
    tmp_path: Path,
    bootstrap_servers: str,
    topic_name: Callable[[str], str],
    create_topics: Callable[..., Any],
) -> None:
    source, sink = topic_name("in"), topic_name("out")
    await create_topics(source, partitions=3)
    flow = write_flow(
        tmp_path,
        f"""
mediation:
  - name: stop-test
    from: {source}
    to: {sink}
    max_in_flight: 10
""",
    )
    async with Publisher(bootstrap_servers, CATALOG, source="/crm") as publisher:
        for n in range(50):
            await publisher.publish(source, "com.acme.crm.CustomerChanged", customer(n, "DE"))
        async with running_flows(flow, bootstrap_servers):
            await read_records(bootstrap_servers, sink, 50)
        # Stopped and started again: nothing is processed twice, the new events are.
        for n in range(50, 60):
            await publisher.publish(source, "com.acme.crm.CustomerChanged", customer(n, "DE"))
        async with running_flows(flow, bootstrap_servers):
            await read_records(bootstrap_servers, sink, 60)
            outputs = await read_all(bootstrap_servers, sink)
    assert len(outputs) == 60


async def test_an_invalid_output_is_dead_lettered(
    tmp_path: Path,
    bootstrap_servers: str,
    topic_name: Callable[[str], str],
    create_topics: Callable[..., Any],
) -> None:
    source, sink, dlq = topic_name("in"), topic_name("out"), topic_name("dlq")
    await create_topics(source, dlq)
    # The enrichment lands in a field CustomerChanged does not have, and nothing maps it away.
    flow = write_flow(
        tmp_path,
        f"""
mediation:
  - name: sloppy
    from: {source}
    to: {sink}
    dlq: {dlq}
    steps:
      - enrich:
          lookup: tests.test_flows_on_kafka:lookup_account
          with: {{customerId: event.customerId}}
          into: account
""",
    )
    async with (
        Publisher(bootstrap_servers, CATALOG, source="/crm") as publisher,
        running_flows(flow, bootstrap_servers),
    ):
        await publisher.publish(source, "com.acme.crm.CustomerChanged", customer(1, "DE"))
        [letter] = await read_records(bootstrap_servers, dlq, 1)
    reason = headers_of(letter)
    assert reason["bus_dlq_step"] == "output"
    assert reason["bus_dlq_error_type"] == "EventValidationError"
    assert "account: not a field of the schema" in reason["bus_dlq_error"]
    assert await read_all(bootstrap_servers, sink, quiet=1.0) == []


async def slow_step(event: Event) -> Event:
    await asyncio.sleep(0.25)
    return event


async def test_a_batch_too_slow_for_its_deadline_is_redone_smaller(
    tmp_path: Path,
    bootstrap_servers: str,
    topic_name: Callable[[str], str],
    create_topics: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 20 records of 0.25 s in one partition miss a 2 s deadline; 5 fit.
    monkeypatch.setattr(runner, "BATCH_DEADLINE_S", 2.0)
    source, sink = topic_name("in"), topic_name("out")
    await create_topics(source)
    flow = write_flow(
        tmp_path,
        f"""
mediation:
  - name: slowpoke
    from: {source}
    to: {sink}
    max_in_flight: 20
    steps:
      - python: tests.test_flows_on_kafka:slow_step
""",
    )
    async with Publisher(bootstrap_servers, CATALOG, source="/crm") as publisher:
        sent = [
            await publisher.publish(source, "com.acme.crm.CustomerChanged", customer(n, "DE"))
            for n in range(20)
        ]
        expected = {event.id for event in sent}
        async with running_flows(flow, bootstrap_servers), asyncio.timeout(90):
            # Counting is not enough: the abandoned batches' outputs may already be written.
            parents: set[str] = set()
            while parents != expected:
                outputs = await decode(await read_all(bootstrap_servers, sink, quiet=1.0))
                parents = {event.extensions["parentid"] for event in outputs}
    assert parents == expected


# -- when a record's hop ends -----------------------------------------------------------------


class DurabilityWitness(BusMetrics):
    """Metrics that ask Kafka, as each mediation hop ends, whether its work is durable yet:
    its offset committed for the group, its outputs readable by read_committed consumers.

    They ask from another thread (and event loop) while the flow's loop waits for the answer,
    so that nothing the flow would do next (committing) can happen meanwhile. They ask again
    for a while: a committed transaction's markers reach the partitions (and the group's
    offsets) shortly after the commit returned, but a transaction still open stays open."""

    def __init__(self, board: StatusBoard, bootstrap_servers: str, group: str) -> None:
        super().__init__(board)
        self.bootstrap_servers = bootstrap_servers
        self.group = group
        self.seen: list[tuple[str | None, bool, bool]] = []  # outcome, committed, readable

    def observe(self, hop: Hop) -> None:
        super().observe(hop)
        if hop.kind == "mediation":
            with ThreadPoolExecutor(1) as thread:
                committed, readable = thread.submit(asyncio.run, self._durable(hop)).result()
            self.seen.append((hop.outcome, committed, readable))

    async def _durable(self, hop: Hop) -> tuple[bool, bool]:
        deadline = time.monotonic() + 5.0
        while True:
            committed, readable = await self._durable_now(hop)
            if (committed and readable) or time.monotonic() > deadline:
                return committed, readable
            await asyncio.sleep(0.1)

    async def _durable_now(self, hop: Hop) -> tuple[bool, bool]:
        assert hop.topic is not None
        assert hop.partition is not None
        assert hop.offset is not None
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap_servers)
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(self.group)
        finally:
            await admin.close()
        committed = offsets.get(TopicPartition(hop.topic, hop.partition))
        outputs = [TopicPartition(output.topic, output.partition) for output in hop.outputs]
        reader = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers, isolation_level="read_committed"
        )
        await reader.start()
        try:
            # Read committed, the end of a partition is its last stable offset: an open
            # transaction's records are beyond it.
            ends = await reader.end_offsets(outputs) if outputs else {}
        finally:
            await reader.stop()
        return (
            committed is not None and committed.offset > hop.offset,
            all(
                output.offset is not None
                and ends[TopicPartition(output.topic, output.partition)] > output.offset
                for output in hop.outputs
            ),
        )


@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
async def test_a_record_s_hop_ends_once_its_work_is_committed(
    tmp_path: Path,
    bootstrap_servers: str,
    topic_name: Callable[[str], str],
    create_topics: Callable[..., Any],
    guarantee: str,
) -> None:
    source, sink = topic_name("in"), topic_name("out")
    await create_topics(source, partitions=2)
    name = f"durable-{guarantee}"
    flow = write_flow(
        tmp_path,
        f"""
mediation:
  - name: {name}
    from: {source}
    to: {sink}
    guarantee: {guarantee}
""",
    )
    board = StatusBoard()
    witness = DurabilityWitness(board, bootstrap_servers, f"bus.{name}")
    telemetry = Telemetry(Tracing.disabled(), None, witness, board)
    async with Publisher(bootstrap_servers, CATALOG, source="/crm") as publisher:
        for n in range(3):
            await publisher.publish(source, "com.acme.crm.CustomerChanged", customer(n, "DE"))
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_flows(
            load_flow_files([flow]),
            CATALOG,
            bootstrap_servers=bootstrap_servers,
            stop=stop,
            telemetry=telemetry,
        )
    )
    try:
        async with asyncio.timeout(60):
            while len(witness.seen) < 3:  # noqa: ASYNC110 -- hops end in the flow's own task
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 60) == []
    assert witness.seen == [("processed", True, True)] * 3
