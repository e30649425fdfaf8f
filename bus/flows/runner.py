"""A mediation flow on Kafka: one consumer group member, at-least-once or exactly-once.

The loop takes a batch of at most `max_in_flight` records (the backpressure: nothing more is
fetched until the batch is done) and processes each partition's records in order and the
partitions concurrently. What each guarantee promises, and how:

- **At-least-once** (the default): only when every output and dead letter of the batch is
  acknowledged (acks=all) are the offsets after it committed. A crash before the commit
  processes the batch again: outputs may be written twice (with the same event ids, so
  consumers can drop the duplicates), never lost.
- **Exactly-once**: each partition's part of the batch is one Kafka transaction of that
  partition's own transactional producer, its outputs, dead letters and offsets inside it;
  read_committed consumers see all of it or none. A failure aborts the transaction and the
  part is processed again.
- **Order** is kept per partition, hence per key; a rebalance waits for the batch in hand.

Each record is one `mediation` hop (`bus.telemetry.hub`). It ends once its work is durable:
after the offsets were committed (at-least-once) or the transaction committed (exactly-once),
saying where its writes landed; as failed, with the error, when the batch (or its partition's
transaction) failed or its commit did, since the record will be processed again. So a
mediation hop's duration, and `bus_processing_duration_seconds{kind="mediation"}`, is one
record's latency including the wait for its whole batch's acknowledgements and commit, not the
time spent on the record alone.
"""

import asyncio
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

from aiokafka import AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition

from bus import kafka_clients
from bus.errors import BusError
from bus.flows.dead_letters import InputRecord
from bus.flows.model import consumer_group
from bus.flows.processor import FlowProcessor, Output
from bus.kafka_batches import Placed, Write, send_batched
from bus.kafka_clients import durable_producer, group_consumer
from bus.telemetry import hop as hops
from bus.telemetry.hop_scope import HopScope
from bus.telemetry.hub import Telemetry

log = logging.getLogger(__name__)

Guarantee = Literal["at-least-once", "exactly-once"]
# One batch must finish (outputs acknowledged, offsets committed) within BATCH_DEADLINE, which
# stays below the time a rebalance waits for this member and below the transaction timeout:
# otherwise the group would hand the partitions over while the batch still runs, and both
# owners would write its outputs.
BATCH_DEADLINE_S = 40.0  # < REBALANCE_TIMEOUT_MS (bus.kafka_clients)
TRANSACTION_TIMEOUT_MS = 60_000
# One Kafka batch per output partition per batch of records (aiokafka's default is 16 KiB: 16
# one-kilobyte records); below the broker's default message.max.bytes of 1 MiB.
OUTPUT_BATCH_BYTES = 512 * 1024


class BatchTooSlowError(BusError):
    """A batch did not finish within the deadline; it was neither committed nor kept."""


@dataclass(frozen=True)
class FlowPlan:
    """What the runner needs to know about one flow."""

    name: str
    sources: Sequence[str]
    dead_letter_topic: str
    guarantee: Guarantee = "at-least-once"
    max_in_flight: int = 100

    @property
    def group_id(self) -> str:
        return consumer_group(self.name)


@dataclass(slots=True)
class _Sent:
    """A record's hop, and its writes on their way to Kafka (`places`, once queued)."""

    scope: HopScope
    writes: list[Output]
    places: list[Placed] = field(default_factory=list)

    def committed(self) -> None:
        """Every write is acknowledged and committed: the hop ends, saying where they landed."""
        self.scope.hop.outputs = [
            hops.Output(write.event_id, write.topic, place.partition, place.offset)
            for write, place in zip(self.writes, self.places, strict=True)
        ]
        self.scope.end()


class _Committing:
    """The records sent for one commit (a batch, or a partition's transaction): their hops
    end when the `with` block, which ends with the commit, is left: as processed if it
    completed, else as failed (not committed: each record will be processed again)."""

    def __init__(self) -> None:
        self.sent: list[_Sent] = []

    def __enter__(self) -> list[_Sent]:
        return self.sent

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for one in self.sent:
            if error is None:
                one.committed()
            else:
                one.scope.end(error)


class FlowRunner:
    def __init__(
        self,
        plan: FlowPlan,
        processor: FlowProcessor,
        bootstrap_servers: str,
        *,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.plan = plan
        self.processor = processor
        self.bootstrap_servers = bootstrap_servers
        self.telemetry = telemetry or Telemetry.disabled()
        self._idle = asyncio.Event()
        self._idle.set()
        self._in_hand = 0
        self.processed = 0
        self.dead_lettered = 0
        self.batch_size = plan.max_in_flight

    async def run(self, stop: asyncio.Event) -> None:
        """Process until `stop` is set, then finish the batch in hand, commit, and leave."""
        status = self.telemetry.board.item(self.plan.name, "mediation")
        status.dead_letter_topic = self.plan.dead_letter_topic
        status.in_flight = lambda: self._in_hand
        consumer = group_consumer(self.bootstrap_servers, self.plan.group_id)
        exactly_once = self.plan.guarantee == "exactly-once"
        transactional = _PartitionProducers(self.bootstrap_servers, self.plan.name)
        listener = _FinishBeforeRevoke(
            self.plan.name, self._idle, transactional if exactly_once else None
        )
        consumer.subscribe(list(self.plan.sources), listener=listener)
        # linger: the outputs of a batch travel together instead of one request each.
        producer = durable_producer(
            self.bootstrap_servers, linger_ms=5, max_batch_size=OUTPUT_BATCH_BYTES
        )
        if not exactly_once:
            await producer.start()
        try:
            await consumer.start()
            status.consumer = consumer
            try:
                while not stop.is_set():
                    batch = await consumer.getmany(timeout_ms=250, max_records=self.batch_size)
                    if batch:
                        self._idle.clear()
                        self._in_hand = sum(len(records) for records in batch.values())
                        try:
                            async with asyncio.timeout(BATCH_DEADLINE_S):
                                if exactly_once:
                                    await self._transactions(transactional, batch)
                                else:
                                    with _Committing() as sent:
                                        await self._produce(producer, batch, sent)
                                        await consumer.commit(_next_offsets(batch))
                        except TimeoutError as slow:
                            records = sum(len(records) for records in batch.values())
                            raise BatchTooSlowError(
                                f"flow {self.plan.name}: a batch of {records} records took over "
                                f"{BATCH_DEADLINE_S:.0f} s; it will be redone in smaller batches"
                            ) from slow
                        finally:
                            self._in_hand = 0
                            self._idle.set()
            finally:
                status.consumer = None
                await consumer.stop()
        finally:
            await producer.stop()
            await transactional.close()

    async def _transactions(
        self, producers: "_PartitionProducers", batch: dict[TopicPartition, list[Any]]
    ) -> None:
        """Each partition's records, their outputs and offsets: one transaction of its producer."""

        async def in_transaction(partition: TopicPartition, records: list[Any]) -> None:
            producer = await producers.producer_for(partition)
            with _Committing() as sent:  # outside the transaction: its hops end once it ended
                async with producer.transaction():
                    await self._produce(producer, {partition: records}, sent)
                    offsets = {partition: records[-1].offset + 1}
                    await producer.send_offsets_to_transaction(offsets, self.plan.group_id)

        async with asyncio.TaskGroup() as partitions:
            for partition, records in batch.items():
                partitions.create_task(in_transaction(partition, records))

    async def _produce(
        self,
        producer: AIOKafkaProducer,
        batch: dict[TopicPartition, list[Any]],
        sent: list[_Sent],
    ) -> None:
        """Process the batch and send every output, each record's into `sent` (whose hops the
        caller ends after the commit), and wait until Kafka acknowledged them all. The outputs
        go once the whole batch is processed, one Kafka batch per partition (bus.kafka_batches),
        each input partition's in order."""
        handled: list[_Sent] = []

        async def partition_in_order(records: list[Any]) -> None:
            for record in records:
                handled.append(await self._outcome(record))

        # A task group: when one partition fails, the others stop too, rather than going on
        # calling lookups while the flow restarts.
        try:
            async with asyncio.TaskGroup() as partitions:
                for records in batch.values():
                    partitions.create_task(partition_in_order(records))
        finally:
            sent.extend(handled)  # their hops end with the commit, or as failed without it
        writes = [
            Write(write.topic, write.record.key, write.record.value, write.record.headers)
            for one in handled
            for write in one.writes
        ]
        places = iter(await send_batched(producer, writes))
        for one in handled:
            one.places = [next(places) for _ in one.writes]
        batches = {id(place.ack): place.ack for one in handled for place in one.places}
        await asyncio.gather(*batches.values())

    async def _outcome(self, consumed: Any) -> _Sent:
        record = InputRecord(
            topic=consumed.topic,
            partition=consumed.partition,
            offset=consumed.offset,
            key=consumed.key,
            value=consumed.value or b"",
            headers=consumed.headers,
        )
        scope = self.telemetry.consumed(
            "mediation", self.plan.name, record, group=self.plan.group_id
        )
        with scope.active():
            handled = await self.processor.handle(record, scope)
            self.processed += 1
            if handled.dead_letter is not None:
                self.dead_lettered += 1
                reason = handled.dead_letter
                log.warning(
                    "flow %s: %s[%d]@%d dead-lettered at %s: %s: %s",
                    self.plan.name, record.topic, record.partition, record.offset,
                    reason.step, reason.error_type, reason.error,
                )  # fmt: skip
        return _Sent(scope, handled.writes)


def _next_offsets(batch: dict[TopicPartition, list[Any]]) -> dict[TopicPartition, int]:
    return {partition: records[-1].offset + 1 for partition, records in batch.items()}


class _PartitionProducers:
    """Exactly-once: one transactional producer per input partition, its transactional id named
    after the partition. The partition's next owner starts a producer with the same id, which
    fences the previous owner's and aborts its open transaction at once. (aiokafka commits
    offsets in a transaction without the group's generation, KIP-447, so the id must fence.)"""

    def __init__(self, bootstrap_servers: str, flow: str) -> None:
        self._bootstrap_servers = bootstrap_servers
        self._flow = flow
        self._producers: dict[TopicPartition, AIOKafkaProducer] = {}
        self._creating = asyncio.Lock()

    async def producer_for(self, partition: TopicPartition) -> AIOKafkaProducer:
        """The partition's producer, started now if need be: records of a newly assigned
        partition can arrive while the assignment callback is still starting producers."""
        async with self._creating:
            producer = self._producers.get(partition)
            if producer is None:
                producer = kafka_clients.producer(
                    bootstrap_servers=self._bootstrap_servers,
                    transactional_id=f"bus.{self._flow}.{partition.topic}.{partition.partition}",
                    transaction_timeout_ms=TRANSACTION_TIMEOUT_MS,
                    linger_ms=5,
                    max_batch_size=OUTPUT_BATCH_BYTES,
                )
                await producer.start()
                self._producers[partition] = producer
            return producer

    async def assign(self, partitions: Iterable[TopicPartition]) -> None:
        for partition in partitions:
            await self.producer_for(partition)

    async def revoke(self, partitions: Iterable[TopicPartition]) -> None:
        for partition in partitions:
            producer = self._producers.pop(partition, None)
            if producer is not None:
                await producer.stop()

    async def close(self) -> None:
        await self.revoke(list(self._producers))


class _FinishBeforeRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    """A rebalance waits for the batch in hand to be acknowledged and committed, so the new
    owner of a partition starts right after the last record whose work is done."""

    def __init__(
        self, flow: str, idle: asyncio.Event, producers: _PartitionProducers | None
    ) -> None:
        self._flow = flow
        self._idle = idle
        self._producers = producers

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._idle.wait()
        if self._producers is not None:
            await self._producers.revoke(revoked)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        if self._producers is not None:
            await self._producers.assign(assigned)
        # Said here as the delivery runner says it: aiokafka's own line is below WARNING.
        log.info(
            "flow %s: assigned %s",
            self._flow,
            ", ".join(sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned)) or "nothing",
        )
