"""Writing many records at once: one aiokafka batch per partition instead of one `send` each.

`AIOKafkaProducer.send` costs tens of microseconds a record in Python (metadata wait, partition,
accumulator, a future each); a flow's batch of outputs is known at once, so it is partitioned
here and appended to one `BatchBuilder` per partition (the record encoding is aiokafka's C
extension), each sent with one `send_batch`. Records land where `send` would put them: the
default partitioner (murmur2 of the key, as the Java clients) over the topic's partitions.
A partition's batches go out in order, so per-key order is kept. The producer's settings apply
unchanged (acks=all, idempotence, transactions: a transactional producer's batches are part of
its open transaction).
"""

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from bus.errors import BusError

_PARTITIONER = DefaultPartitioner()


@dataclass(frozen=True, slots=True)
class Write:
    topic: str
    key: bytes | None
    value: bytes
    headers: Sequence[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class Placed:
    """Where one record lands, once its batch is acknowledged: `await` the batch's `ack`."""

    ack: "asyncio.Future[Any]"
    partition: int
    index: int  # its place in the batch

    @property
    def offset(self) -> int:
        """Its offset (only once `ack` is done)."""
        return int(self.ack.result().offset) + self.index


class BatchTooBigError(BusError):
    """A record does not fit in an empty batch (the producer's max_batch_size)."""


async def send_batched(producer: AIOKafkaProducer, writes: Sequence[Write]) -> list[Placed]:
    """Queue `writes` (in order) and return where each will land; the acks come later."""
    partitions: dict[str, list[int]] = {}
    open_batches: dict[TopicPartition, Any] = {}
    in_order: list[tuple[TopicPartition, Any]] = []  # every batch, in the order it was opened
    slots: list[tuple[TopicPartition, Any, int]] = []
    for write in writes:
        choices = partitions.get(write.topic)
        if choices is None:
            choices = partitions[write.topic] = sorted(await producer.partitions_for(write.topic))
        partition = _PARTITIONER(write.key, choices, choices)
        where = TopicPartition(write.topic, partition)
        batch = open_batches.get(where)
        appended = None
        if batch is not None:
            appended = batch.append(
                timestamp=None, key=write.key, value=write.value, headers=write.headers
            )
        if appended is None:  # no batch yet for this partition, or it is full
            batch = open_batches[where] = producer.create_batch()
            in_order.append((where, batch))
            appended = batch.append(
                timestamp=None, key=write.key, value=write.value, headers=write.headers
            )
            if appended is None:
                raise BatchTooBigError(
                    f"a record of {len(write.value)} bytes for {write.topic} does not fit in a "
                    "batch; raise the producer's max_batch_size"
                )
        slots.append((where, batch, appended.offset))
    acks: dict[int, asyncio.Future[Any]] = {}
    for where, batch in in_order:
        acks[id(batch)] = await producer.send_batch(batch, where.topic, partition=where.partition)
    return [Placed(acks[id(batch)], where.partition, index) for where, batch, index in slots]
