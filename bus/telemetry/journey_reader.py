"""Reading one journey back from the journey topic, for `bus trace` and the admin API.

Only what the topic holds when the call starts is read (records written later are left for the
next call). A journey's records are keyed by its root event id, so they all sit in the one
partition Kafka's default partitioner (murmur2 of the key, as the recorder's producer uses)
gives that key. A root id is looked up in that partition alone. Any other id, or a root id
that partition does not hold (partitions added to the topic since), takes two passes: the
first, over every partition, finds a record naming the event and so its journey's key; the
second reads only that key's partition.
"""

from contextlib import aclosing
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

from bus import kafka_clients
from bus.errors import JourneyTopicMissingError, KafkaUnavailableError
from bus.kafka_topics import Ranges, scan, topic_partitions
from bus.telemetry.journey_record import decode, names
from bus.telemetry.journey_tree import Journey


async def read_journey(
    bootstrap_servers: str, topic: str, event_id: str, *, since: datetime | None = None
) -> Journey | None:
    """The journey that `event_id` is part of (as its root, or anywhere in it); None when no
    record of the topic names it. With `since`, only records written from then on are read
    (faster on a long topic, but a journey's earlier hops are left out)."""
    consumer = kafka_clients.consumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",  # records deleted by retention meanwhile: go on after them
    )
    try:
        await consumer.start()
        ranges = await _ranges(bootstrap_servers, consumer, topic, since)
        needle = event_id.encode()
        # Where the recorder's producer (aiokafka's default partitioner, the Java client's
        # murmur2) put the records keyed by this id, were it a root id.
        home = DefaultPartitioner()(needle, list(ranges), list(ranges))
        records = await _keyed(consumer, {home: ranges[home]}, needle)
        if records:
            return Journey.from_records(event_id, records)
        found = await _find(consumer, ranges, event_id)
        if found is None:
            return None
        partition, key = found
        records = await _keyed(consumer, {partition: ranges[partition]}, key)
        return Journey.from_records(key.decode(errors="replace"), records)
    except KafkaError as error:
        raise KafkaUnavailableError(
            f"cannot read the journey topic {topic!r} at {bootstrap_servers}: {error}; check "
            "that the cluster is up, then try again"
        ) from error
    finally:
        await consumer.stop()


def parse_since(text: str) -> datetime:
    """An ISO 8601 time as `--since` and `?since=` take it: UTC unless it says otherwise.
    ValueError, saying how to write one, for anything else."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text[:40]!r} is not an ISO 8601 time; write e.g. 2026-11-24T11:59:00Z"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


async def _ranges(
    bootstrap_servers: str, consumer: AIOKafkaConsumer, topic: str, since: datetime | None
) -> Ranges:
    """What to read of every partition of the topic, in partition order (some may be empty)."""
    partitions = await topic_partitions(bootstrap_servers, topic)
    if not partitions:
        raise JourneyTopicMissingError(
            f"the journey topic {topic!r} does not exist: no `bus run` with journeys enabled "
            "has written to this cluster yet, or the topic is another one (--topic, or the flow "
            "files' observability.journeys.topic)"
        )
    ends: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
    if since is None:
        starts: dict[TopicPartition, int] = await consumer.beginning_offsets(partitions)
    else:
        moment = int(since.timestamp() * 1000)
        found = await consumer.offsets_for_times({tp: moment for tp in partitions})
        starts = {tp: ends[tp] if at is None else at.offset for tp, at in found.items()}
    return {tp: (starts[tp], ends[tp]) for tp in partitions}


async def _keyed(consumer: AIOKafkaConsumer, ranges: Ranges, key: bytes) -> list[dict[str, Any]]:
    """The readable records in `ranges` keyed by `key`: one journey's."""
    async with aclosing(scan(consumer, ranges)) as messages:
        return [
            record
            async for message in messages
            if message.key == key and (record := decode(message.value)) is not None
        ]


async def _find(
    consumer: AIOKafkaConsumer, ranges: Ranges, event_id: str
) -> tuple[TopicPartition, bytes] | None:
    """The partition and key of the journey that a record naming `event_id` belongs to."""
    needle = event_id.encode()
    async with aclosing(scan(consumer, ranges)) as messages:
        async for message in messages:
            key, value = message.key, message.value or b""
            # Most records do not mention the id at all: skip them without parsing JSON.
            if key is None or (needle not in value and key != needle):
                continue
            record = decode(value)
            if key == needle or (record is not None and names(record, event_id)):
                return TopicPartition(message.topic, message.partition), key
    return None
