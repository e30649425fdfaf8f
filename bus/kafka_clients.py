"""The Kafka clients every part of the bus builds the same way, so the guarantees are set once.

- `durable_producer`: acks=all and the idempotent producer: a send that returns is on every
  in-sync replica, and a retried send is not written twice.
- `group_consumer`: a member of a consumer group that commits by hand, only after the work for
  a record is done, reads only committed transactions, and starts from the beginning of a topic
  it has never read (so nothing produced before the group first ran is skipped).
"""

from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

REBALANCE_TIMEOUT_MS = 60_000  # how long the group waits for a member to finish and hand over


def durable_producer(bootstrap_servers: str, **options: Any) -> AIOKafkaProducer:
    """A producer whose sends are acknowledged by every in-sync replica; callers may tune
    anything but the two settings the guarantee rests on."""
    options = {**options, "acks": "all", "enable_idempotence": True}
    return AIOKafkaProducer(bootstrap_servers=bootstrap_servers, **options)


def group_consumer(bootstrap_servers: str, group_id: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        rebalance_timeout_ms=REBALANCE_TIMEOUT_MS,
    )
