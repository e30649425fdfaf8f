"""Poison records between good ones, for a mediation flow and for an outbound delivery.

Each source topic gets: a good event, then random bytes, a value written with a schema no one
knows (its fingerprint is unknown), an Avro body cut short, a good value without its CloudEvents
headers, then a good event again. Both consumers must dead-letter each poison record with the
reason of its kind, process the good event after them, and commit past all six records: the
partition moves on.
"""

import asyncio
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import GroupCoordinatorNotAvailableError

from bus.events.codec import EventCodec, KafkaRecord
from bus.events.event import Event
from bus.flows.model import consumer_group
from tests.flow_harness import CATALOG, decode, headers_of, read_records, running_flows, write_flow
from tests.rest_sink import CLIENT_ID, CLIENT_SECRET, RestSink

FLOW, DELIVERY = "poison-flow", "poison-delivery"
# The poison records in the order they are sent, and the error each must be dead-lettered with.
POISON = {
    "random bytes": "WrongMagicError",
    "unknown fingerprint": "UnknownWriterSchemaError",
    "truncated Avro": "TruncatedEventError",
    "no CloudEvents headers": "BadHeaderError",
}


async def good_record(customer: str) -> KafkaRecord:
    event = Event(
        type="com.acme.crm.CustomerChanged",
        data={
            "customerId": customer,
            "change": "UPDATED",
            "email": f"{customer}@example.com",
            "name": customer.upper(),
            "changedAt": datetime(2026, 11, 24, 12, 0, tzinfo=UTC),
        },
        source="/crm",
        key=customer,
    )
    return await EventCodec(CATALOG).encode(event)


async def poison_records() -> dict[str, KafkaRecord]:
    """One record of each kind of POISON, each otherwise as good as it can be."""
    good = await good_record("poison")
    frame = 2 + 8  # single-object encoding: C3 01, then the writer's fingerprint
    return {
        "random bytes": KafkaRecord(good.key, os.urandom(64), good.headers),
        "unknown fingerprint": KafkaRecord(
            good.key, good.value[:2] + os.urandom(8) + good.value[frame:], good.headers
        ),
        "truncated Avro": KafkaRecord(
            good.key, good.value[: frame + (len(good.value) - frame) // 2], good.headers
        ),
        "no CloudEvents headers": KafkaRecord(good.key, good.value, []),
    }


async def fill(bootstrap_servers: str, topic: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all")
    await producer.start()
    try:
        records = [await good_record("c-1"), *(await poison_records()).values()]
        records.append(await good_record("c-2"))
        for record in records:
            await producer.send_and_wait(
                topic, record.value, key=record.key, headers=list(record.headers)
            )
    finally:
        await producer.stop()


async def committed(bootstrap_servers: str, group: str, topic: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    except GroupCoordinatorNotAvailableError:  # the offsets topic is still being made
        return -1
    finally:
        await admin.close()
    found = offsets.get(TopicPartition(topic, 0))
    return -1 if found is None else int(found.offset)


async def until_committed(bootstrap_servers: str, group: str, topic: str, offset: int) -> None:
    async with asyncio.timeout(60):
        while True:
            if await committed(bootstrap_servers, group, topic) >= offset:
                return
            await asyncio.sleep(0.3)


def assert_dead_lettered(letters: list[Any], item: str, source: str) -> None:
    """One letter per poison record, in order, each with the reason of its kind."""
    by_offset = sorted(letters, key=lambda letter: int(headers_of(letter)["bus_dlq_offset"]))
    sent = [*POISON]
    assert [int(headers_of(letter)["bus_dlq_offset"]) for letter in by_offset] == [1, 2, 3, 4]
    for kind, letter in zip(sent, by_offset, strict=True):
        headers = headers_of(letter)
        assert headers["bus_dlq_flow"] == item, kind
        assert headers["bus_dlq_topic"] == source, kind
        assert headers["bus_dlq_step"] == "decode", kind
        assert headers["bus_dlq_error_type"] == POISON[kind], (kind, headers)
        assert headers["bus_dlq_error"], kind
        assert headers["bus_dlq_attempts"] == "1", kind
        assert letter.key == b"poison", kind  # the original record, as it was


async def test_poison_records_are_dead_lettered_with_their_reason_and_the_partition_moves_on(
    tmp_path: Path,
    bootstrap_servers: str,
    topic_name: Callable[[str], str],
    create_topics: Callable[..., Any],
) -> None:
    flow_in, flow_out, flow_dlq, delivery_in, delivery_dlq = (
        topic_name(p) for p in ("flow-in", "flow-out", "flow-dlq", "out-in", "out-dlq")
    )
    await create_topics(flow_in, flow_out, flow_dlq, delivery_in, delivery_dlq)
    await fill(bootstrap_servers, flow_in)
    await fill(bootstrap_servers, delivery_in)
    sink = RestSink()
    await sink.start()
    flow = write_flow(
        tmp_path,
        f"""
mediation:
  - name: {FLOW}
    from: {flow_in}
    to: {flow_out}
    dlq: {flow_dlq}
outbound:
  - name: {DELIVERY}
    from: {delivery_in}
    dlq: {delivery_dlq}
    rest:
      method: PUT
      url: "{sink.url}/customers/{{event.customerId}}"
      auth:
        oauth2:
          token_url: {sink.url}/oauth/token
          client_id: {CLIENT_ID}
          client_secret: {CLIENT_SECRET}
    map: {{email: event.email, name: event.name}}
    retry: {{attempts: 1}}
""",
    )
    try:
        async with running_flows(flow, bootstrap_servers):
            await until_committed(bootstrap_servers, consumer_group(FLOW), flow_in, 6)
            await until_committed(bootstrap_servers, consumer_group(DELIVERY), delivery_in, 6)
            flow_letters = await read_records(bootstrap_servers, flow_dlq, 4)
            delivery_letters = await read_records(bootstrap_servers, delivery_dlq, 4)
            passed_on = await decode(await read_records(bootstrap_servers, flow_out, 2))
    finally:
        await sink.stop()

    assert_dead_lettered(flow_letters, FLOW, flow_in)
    assert_dead_lettered(delivery_letters, DELIVERY, delivery_in)
    # The good events around the poison ones went through, in order.
    assert [event.data["customerId"] for event in passed_on] == ["c-1", "c-2"]
    assert [call.path for call in sink.calls] == ["/customers/c-1", "/customers/c-2"]
    assert sink.calls[0].body == {"email": "c-1@example.com", "name": "C-1"}
