"""Reading a flow's dead-letter topic, and replaying its records to where they came from.

Each replayed letter is a `replay` hop of the flow that dead-lettered it: its span continues the
letter's trace, and the record sent back carries the span's context (untraced: the letter's own).
"""

from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from bus.errors import BusError
from bus.flows.dead_letters import (
    ATTEMPTS_HEADER,
    REPLAYED_HEADER,
    DeadLetter,
    original_headers,
)
from bus.kafka_clients import durable_producer
from bus.telemetry.hop import Output
from bus.telemetry.hub import HopScope, Telemetry
from bus.telemetry.tracing import TRACE_HEADERS, kafka_carrier


@dataclass(frozen=True, slots=True)
class StoredLetter:
    """A record in a dead-letter topic, where it sits, and why it is there."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Sequence[tuple[str, bytes]]
    reason: DeadLetter | None  # None: a record that bus did not dead-letter

    @property
    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


def replay_group(topic: str) -> str:
    """The consumer group that remembers how far `bus dlq replay --all` got in a topic."""
    return f"bus.dlq-replay.{topic}"


async def read_letters(
    bootstrap_servers: str, topic: str, *, unreplayed: bool = False
) -> list[StoredLetter]:
    """Every record in the topic now, up to the current end of each partition; from the start,
    or with `unreplayed` from where the last `replay --all` stopped."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        group_id=replay_group(topic) if unreplayed else None,
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    try:
        await consumer.start()
        partitions = await _partitions(bootstrap_servers, topic)
        if not partitions:
            raise BusError(
                f"dead-letter topic {topic!r} does not exist; check the flow name, or pass "
                "the flow files that name its dlq topic"
            )
        assigned = [TopicPartition(topic, partition) for partition in sorted(partitions)]
        consumer.assign(assigned)
        for partition in assigned:
            done = await consumer.committed(partition) if unreplayed else None
            if done is None:
                await consumer.seek_to_beginning(partition)
            else:
                consumer.seek(partition, done)
        ends = await consumer.end_offsets(assigned)
        letters: list[StoredLetter] = []
        while [tp for tp in assigned if await consumer.position(tp) < ends[tp]]:
            for batch in (await consumer.getmany(*assigned, timeout_ms=1000)).values():
                letters.extend(
                    StoredLetter(
                        topic=r.topic,
                        partition=r.partition,
                        offset=r.offset,
                        key=r.key,
                        value=r.value or b"",
                        headers=list(r.headers),
                        reason=DeadLetter.from_headers(r.headers),
                    )
                    for r in batch
                    if r.offset < ends[TopicPartition(r.topic, r.partition)]
                )
        return sorted(letters, key=lambda letter: (letter.partition, letter.offset))
    except KafkaError as error:
        raise BusError(f"cannot read dead-letter topic {topic!r}: {error}") from error
    finally:
        await consumer.stop()


async def _partitions(bootstrap_servers: str, topic: str) -> set[int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if described.get("error_code"):
        return set()
    return {partition["partition"] for partition in described["partitions"]}


async def mark_replayed(bootstrap_servers: str, letters: Sequence[StoredLetter]) -> None:
    """Remember that `replay --all` got past these letters, so a second one skips them."""
    if not letters:
        return
    topic = letters[0].topic
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, group_id=replay_group(topic), enable_auto_commit=False
    )
    await consumer.start()
    try:
        last: dict[TopicPartition, int] = {}
        for letter in letters:
            partition = TopicPartition(letter.topic, letter.partition)
            last[partition] = max(last.get(partition, -1), letter.offset + 1)
        consumer.assign(list(last))
        await consumer.commit(last)
    finally:
        await consumer.stop()


async def replay(
    bootstrap_servers: str,
    letters: Sequence[StoredLetter],
    *,
    telemetry: Telemetry | None = None,
) -> list[str]:
    """Send each letter back to the topic it was consumed from, as it was, and say where."""
    telemetry = telemetry or Telemetry.disabled()
    producer = durable_producer(bootstrap_servers)
    await producer.start()
    sent = []
    try:
        for letter in letters:
            reason = _replayable(letter)
            carrier = kafka_carrier(letter.headers)
            with telemetry.producing("replay", reason.flow, reason.topic, carrier=carrier) as scope:
                _replaying(scope, letter)
                headers = [
                    (name, value)
                    for name, value in original_headers(letter.headers)
                    if name not in (ATTEMPTS_HEADER, REPLAYED_HEADER, *TRACE_HEADERS)
                ]
                headers += [(name, value.encode()) for name, value in scope.carrier().items()]
                headers += [
                    (ATTEMPTS_HEADER, str(reason.attempts).encode()),
                    (REPLAYED_HEADER, letter.where.encode()),
                ]
                done = await producer.send_and_wait(
                    reason.topic, letter.value, key=letter.key, headers=headers
                )
                scope.hop.outputs.append(
                    Output(scope.hop.event_id, reason.topic, done.partition, done.offset)
                )
                scope.hop.outcome = "replayed"
            sent.append(f"{letter.where} -> {reason.topic}")
    except KafkaError as error:
        raise BusError(
            f"replay stopped after {len(sent)} record(s): {error}; the rest are still in the "
            "dead-letter topic"
        ) from error
    finally:
        await producer.stop()
    return sent


def _replayable(letter: StoredLetter) -> DeadLetter:
    """The letter's reason, if it can be sent back to where it came from."""
    if letter.reason is None:
        raise BusError(
            f"{letter.where} carries no bus_dlq_* headers, so its origin is unknown; "
            "it was not dead-lettered by bus"
        )
    if letter.reason.partition < 0:
        # A polled item never was a record: its origin is a URL, not a topic.
        raise BusError(
            f"{letter.where} was not consumed from a topic (it came from "
            f"{letter.reason.topic}), so it cannot be sent back; fix the cause and let "
            "the source deliver it again"
        )
    return letter.reason


def _replaying(scope: HopScope, letter: StoredLetter) -> None:
    """The hop reads the letter where it lies in the dead-letter topic."""
    scope.event_from_headers(letter.headers)
    hop = scope.hop
    hop.topic = letter.topic
    hop.partition = letter.partition
    hop.offset = letter.offset
