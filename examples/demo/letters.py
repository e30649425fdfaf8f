"""The dead letters one run added, read from Kafka: where each item's dead-letter topic ended
when the run began, and, once `bus run` has stopped (so that none is still being written),
every letter since, with what the accounts know it by (the id of the event in it, its record
key) and the reason bus recorded.

Read the way `bus dlq` reads them (bus.flows.dlq): committed records only, as a dead-letter
topic may be written in Kafka transactions.
"""

from collections.abc import Mapping
from contextlib import aclosing

from aiokafka import ConsumerRecord, TopicPartition

from bus import kafka_clients
from bus.errors import BadHeaderError
from bus.events.cloudevents import from_headers
from bus.flows.dead_letters import DeadLetter
from bus.kafka_topics import scan
from demo.accounting import Letter
from demo.backlog import ItemTopics, end_offsets

Offsets = dict[TopicPartition, int]


async def dead_letter_ends(bootstrap_servers: str, items: Mapping[str, ItemTopics]) -> Offsets:
    """Where each dead-letter topic ends now (one not created yet: nowhere, so from its start)."""
    return await end_offsets(bootstrap_servers, (topics.dlq for topics in items.values()))


async def letters_since(
    bootstrap_servers: str, items: Mapping[str, ItemTopics], since: Offsets
) -> dict[str, list[Letter]]:
    """Per item, the letters its dead-letter topic got after `since`."""
    item_of = {topics.dlq: item for item, topics in items.items()}
    ends = await end_offsets(bootstrap_servers, item_of)
    found: dict[str, list[Letter]] = {item: [] for item in items}
    ranges = {tp: (since.get(tp, 0), end) for tp, end in ends.items() if since.get(tp, 0) < end}
    if not ranges:
        # Not even started: aiokafka fails to stop a consumer whose tasks never ran.
        return found
    consumer = kafka_clients.consumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",  # letters deleted by retention meanwhile: go on after them
    )
    await consumer.start()
    try:
        async with aclosing(scan(consumer, ranges)) as records:
            async for record in records:
                found[item_of[record.topic]].append(_letter(record))
    finally:
        await consumer.stop()
    return found


def _letter(record: "ConsumerRecord[bytes, bytes]") -> Letter:
    try:
        event_id: str | None = from_headers(record.headers)[0].id
    except BadHeaderError:  # not an event: a raw record, known by its key
        event_id = None
    reason = DeadLetter.from_headers(record.headers)
    return Letter(
        event_id=event_id,
        key=record.key.decode(errors="replace") if record.key else None,
        step=reason.step if reason else "",
        error_type=reason.error_type if reason else "",
        error=reason.error if reason else "",
    )
