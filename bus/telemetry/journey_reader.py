"""Reading one journey back from the journey topic, for `bus trace` and the admin API.

Two passes over what the topic holds when the call starts (records written later are left for
the next call): the first finds any record naming the event and so its journey's key; the
second reads only that key's partition, where all of the journey's records are.
"""

import asyncio
from collections.abc import AsyncGenerator
from contextlib import aclosing
from datetime import datetime

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from bus.errors import BusError
from bus.telemetry.journey_record import decode, names
from bus.telemetry.journey_tree import Journey

STALL_S = 15.0  # how long a read may get no records while some are known to be left
_POLL_MS = 500

Ranges = dict[TopicPartition, tuple[int, int]]  # partition: [first offset, end offset)


async def read_journey(
    bootstrap_servers: str, topic: str, event_id: str, *, since: datetime | None = None
) -> Journey | None:
    """The journey that `event_id` is part of (as its root, or anywhere in it); None when no
    record of the topic names it. With `since`, only records written from then on are read
    (faster on a long topic, but a journey's earlier hops are left out)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",  # records deleted by retention meanwhile: go on after them
    )
    try:
        await consumer.start()
        ranges = await _ranges(bootstrap_servers, consumer, topic, since)
        found = await _find(consumer, ranges, event_id)
        if found is None:
            return None
        partition, key = found
        records = [
            record
            async for message in _scan(consumer, {partition: ranges[partition]})
            if message.key == key and (record := decode(message.value)) is not None
        ]
        return Journey.from_records(key.decode(errors="replace"), records)
    except KafkaError as error:
        raise BusError(
            f"cannot read the journey topic {topic!r} at {bootstrap_servers}: {error}"
        ) from error
    finally:
        await consumer.stop()


async def _ranges(
    bootstrap_servers: str, consumer: AIOKafkaConsumer, topic: str, since: datetime | None
) -> Ranges:
    partitions = [TopicPartition(topic, n) for n in await _partitions(bootstrap_servers, topic)]
    if not partitions:
        raise BusError(
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
    return {tp: (starts[tp], ends[tp]) for tp in partitions if starts[tp] < ends[tp]}


async def _partitions(bootstrap_servers: str, topic: str) -> list[int]:
    """The topic's partition numbers; none if it does not exist."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    try:
        await admin.start()
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if described.get("error_code"):
        return []
    return sorted(partition["partition"] for partition in described["partitions"])


async def _find(
    consumer: AIOKafkaConsumer, ranges: Ranges, event_id: str
) -> tuple[TopicPartition, bytes] | None:
    """The partition and key of the journey that a record naming `event_id` belongs to."""
    needle = event_id.encode()
    async with aclosing(_scan(consumer, ranges)) as messages:
        async for message in messages:
            key, value = message.key, message.value or b""
            # Most records do not mention the id at all: skip them without parsing JSON.
            if key is None or (needle not in value and key != needle):
                continue
            record = decode(value)
            if key == needle or (record is not None and names(record, event_id)):
                return TopicPartition(message.topic, message.partition), key
    return None


async def _scan(
    consumer: AIOKafkaConsumer, ranges: Ranges
) -> AsyncGenerator[ConsumerRecord[bytes, bytes]]:
    """Every record in `ranges`, each partition's in offset order."""
    left = dict(ranges)
    consumer.assign(list(left))
    for partition, (start, _) in left.items():
        consumer.seek(partition, start)
    loop = asyncio.get_running_loop()
    last_progress = loop.time()
    while left:
        batches = await consumer.getmany(*left, timeout_ms=_POLL_MS)
        for partition, messages in batches.items():
            end = left[partition][1]
            for message in messages:
                if message.offset < end:
                    yield message
        for partition, (_, end) in list(left.items()):
            if await consumer.position(partition) >= end:
                del left[partition]
                consumer.pause(partition)
        if any(batches.values()):
            last_progress = loop.time()
        elif left and loop.time() - last_progress > STALL_S:
            raise BusError(
                f"reading the journey topic got no records for {STALL_S:g} s while "
                f"{', '.join(f'{tp.topic}[{tp.partition}]' for tp in left)} had some left; "
                "check that the cluster is up, then run the command again"
            )
