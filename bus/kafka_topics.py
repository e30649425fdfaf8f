"""Reading what a topic holds now, for the commands and admin routes that look into one (dead
letters, journeys): its partitions, and every record of some offset ranges, in offset order.

Errors from Kafka are the callers' to phrase (they know which topic it is to the user); a read
that stops getting records while some are known to be left ends as KafkaUnavailableError, so
that a command never hangs on a cluster that went away.
"""

import asyncio
from collections.abc import AsyncGenerator

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from bus import kafka_clients
from bus.errors import KafkaUnavailableError

STALL_S = 15.0  # how long a read may get no records while some are known to be left
_POLL_MS = 500

Ranges = dict[TopicPartition, tuple[int, int]]  # partition: [first offset, end offset)


async def topic_partitions(bootstrap_servers: str, topic: str) -> list[TopicPartition]:
    """The topic's partitions, in number order; none if the topic does not exist."""
    admin = kafka_clients.admin_client(bootstrap_servers)
    try:
        await admin.start()
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if described.get("error_code"):
        return []
    numbers = sorted(partition["partition"] for partition in described["partitions"])
    return [TopicPartition(topic, number) for number in numbers]


async def scan(
    consumer: AIOKafkaConsumer, ranges: Ranges
) -> AsyncGenerator[ConsumerRecord[bytes, bytes]]:
    """Every record in `ranges`, each partition's in offset order; the consumer is assigned
    exactly the partitions with something in range. A caller may stop early (aclosing)."""
    left = {partition: end for partition, (start, end) in ranges.items() if start < end}
    consumer.assign(list(left))
    for partition in left:
        consumer.seek(partition, ranges[partition][0])
    loop = asyncio.get_running_loop()
    last_progress = loop.time()
    while left:
        batches = await consumer.getmany(*left, timeout_ms=_POLL_MS)
        for partition, messages in batches.items():
            for message in messages:
                if message.offset < left[partition]:
                    yield message
        for partition, end in list(left.items()):
            if await consumer.position(partition) >= end:
                del left[partition]
                consumer.pause(partition)
        if any(batches.values()):
            last_progress = loop.time()
        elif left and loop.time() - last_progress > STALL_S:
            raise KafkaUnavailableError(
                f"reading {', '.join(f'{tp.topic}[{tp.partition}]' for tp in left)} got no "
                f"records for {STALL_S:g} s while some were left; check that the cluster is "
                "up, then try again"
            )
