"""What is still in Kafka for each bus item once `bus run` has stopped: the records of its
source topics past its consumer group's committed offsets. The next `bus run` starts there, so
they are pending, not lost.

Asked of Kafka, not of the admin API: an item whose circuit breaker is open stops fetching, so
the lag it reports is only as fresh as its last fetch (docs/operations.md, Limits).
"""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from aiokafka import TopicPartition

from bus import kafka_clients
from bus.flows.loading import load_flow_files
from bus.flows.model import consumer_group
from bus.kafka_topics import topic_partitions


@dataclass(frozen=True, slots=True)
class ItemTopics:
    """The topics of one mediation flow or outbound delivery."""

    sources: tuple[str, ...]
    dlq: str


def item_topics(flow_files: Sequence[Path]) -> dict[str, ItemTopics]:
    """Each mediation flow's and outbound delivery's source topics and dead-letter topic."""
    flows = load_flow_files(flow_files)
    mediation = {flow.name: ItemTopics(tuple(flow.from_), flow.dlq) for flow in flows.mediation}
    return mediation | {
        delivery.name: ItemTopics(tuple(delivery.from_), delivery.dlq)
        for delivery in flows.outbound
    }


async def end_offsets(bootstrap_servers: str, topics: Iterable[str]) -> dict[TopicPartition, int]:
    """Each partition's end offset, for the topics that exist."""
    partitions = [
        partition
        for topic in sorted(set(topics))
        for partition in await topic_partitions(bootstrap_servers, topic)
    ]
    if not partitions:
        return {}
    consumer = kafka_clients.consumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        ends: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
        return ends
    finally:
        await consumer.stop()


async def uncommitted(bootstrap_servers: str, items: Mapping[str, ItemTopics]) -> dict[str, int]:
    """Per item: records of its source topics its consumer group has not committed."""
    ends = await end_offsets(
        bootstrap_servers, (topic for topics in items.values() for topic in topics.sources)
    )
    if not ends:
        return dict.fromkeys(items, 0)
    consumer = kafka_clients.consumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        starts = await consumer.beginning_offsets(list(ends))
    finally:
        await consumer.stop()
    admin = kafka_clients.admin_client(bootstrap_servers)
    await admin.start()
    try:
        left = {}
        for item, topics in items.items():
            mine = [tp for tp in ends if tp.topic in topics.sources]
            group = consumer_group(item)
            committed = await admin.list_consumer_group_offsets(group, partitions=mine)
            left[item] = sum(ends[tp] - _start(committed.get(tp), starts[tp]) for tp in mine)
    finally:
        await admin.close()
    return left


def _start(committed: object, log_start: int) -> int:
    """Where the group resumes: its committed offset, else (never committed) the log's start."""
    offset = getattr(committed, "offset", -1)
    return offset if isinstance(offset, int) and offset >= 0 else log_start
