"""What is still in Kafka for each bus item once `bus run` has stopped: the records of its
source topics past its consumer group's committed offsets. The next `bus run` starts there, so
they are pending, not lost.

Asked of Kafka, not of the admin API: an item whose circuit breaker is open stops fetching, so
the lag it reports is only as fresh as its last fetch (docs/operations.md, Limits).
"""

from collections.abc import Mapping, Sequence
from pathlib import Path

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from bus.flows.loading import load_flow_files
from bus.kafka_topics import topic_partitions


def group_of(item: str) -> str:
    """Mediation flows and outbound deliveries consume as the group `bus.<name>`."""
    return f"bus.{item}"


async def uncommitted(
    bootstrap_servers: str, sources: Mapping[str, Sequence[str]]
) -> dict[str, int]:
    """Per item: records of its source topics (`sources`) its group has not committed."""
    partitions = {
        topic: await topic_partitions(bootstrap_servers, topic)
        for topic in {topic for topics in sources.values() for topic in topics}
    }
    everything = [tp for tps in partitions.values() for tp in tps]
    if not everything:
        return {item: 0 for item in sources}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(everything)
        starts = await consumer.beginning_offsets(everything)
    finally:
        await consumer.stop()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        left = {}
        for item, topics in sources.items():
            mine = [tp for topic in topics for tp in partitions[topic]]
            committed = await admin.list_consumer_group_offsets(group_of(item), partitions=mine)
            left[item] = sum(ends[tp] - _start(committed.get(tp), starts[tp]) for tp in mine)
    finally:
        await admin.close()
    return left


def sources_of(flow_files: Sequence[Path]) -> dict[str, list[str]]:
    """Each mediation flow's and outbound delivery's source topics."""
    flows = load_flow_files(flow_files)
    sources = {flow.name: list(flow.from_) for flow in flows.mediation}
    return sources | {delivery.name: list(delivery.from_) for delivery in flows.outbound}


def _start(committed: object, log_start: int) -> int:
    """Where the group resumes: its committed offset, else (never committed) the log's start."""
    offset = getattr(committed, "offset", -1)
    return offset if isinstance(offset, int) and offset >= 0 else log_start
