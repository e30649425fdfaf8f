"""Reading a flow's dead-letter topic (its letters up to a limit, one letter alone, or only
their counts), and replaying its records to where they came from.

Each replayed letter is a `replay` hop of the flow that dead-lettered it: its span continues the
letter's trace, and the record sent back carries the span's context (untraced: the letter's own).
"""

from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from bus import kafka_clients
from bus.errors import (
    DeadLetterNotFoundError,
    DeadLetterTopicMissingError,
    KafkaUnavailableError,
    NotReplayableError,
)
from bus.flows.dead_letters import (
    ATTEMPTS_HEADER,
    REPLAYED_HEADER,
    DeadLetter,
    original_headers,
)
from bus.kafka_clients import durable_producer
from bus.kafka_topics import scan, topic_partitions
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


@dataclass(frozen=True, slots=True)
class LetterCounts:
    """How many letters a dead-letter topic holds, and how many no replay-all sent back yet."""

    letters: int
    unreplayed: int


async def read_letters(
    bootstrap_servers: str, topic: str, *, unreplayed: bool = False, limit: int | None = None
) -> list[StoredLetter]:
    """The records in the topic now (up to the current end of each partition), in (partition,
    offset) order; from the start, or with `unreplayed` from where the last `replay --all`
    stopped. With `limit`, only the first `limit` of them: reading stops once it has them."""
    read = stream_letters(bootstrap_servers, topic, unreplayed=unreplayed, limit=limit)
    async with aclosing(read) as letters:
        return [letter async for letter in letters]


async def stream_letters(
    bootstrap_servers: str, topic: str, *, unreplayed: bool = False, limit: int | None = None
) -> AsyncGenerator[StoredLetter]:
    """The letters read_letters returns, one at a time, so that a caller keeping a part of
    each (a listing: not the values, of up to a megabyte each) holds one whole letter at a
    time. Close it (aclosing) when stopping before the end."""
    if limit == 0:
        return
    async with _reader(bootstrap_servers, topic, group=unreplayed) as (consumer, partitions):
        starts = await _starts(consumer, partitions, unreplayed=unreplayed)
        ends = await consumer.end_offsets(partitions)
        count = 0
        # One partition after the other, so that a limit takes the first letters in order.
        for partition in partitions:
            span = {partition: (starts[partition], ends[partition])}
            async with aclosing(scan(consumer, span)) as records:
                async for record in records:
                    yield _stored(record)
                    count += 1
                    if count == limit:
                        return


async def read_letter(
    bootstrap_servers: str, topic: str, partition: int, offset: int
) -> StoredLetter:
    """The letter at `partition` and `offset`, read alone (a topic may hold thousands, each of
    up to a megabyte)."""
    async with _reader(bootstrap_servers, topic, group=False) as (consumer, partitions):
        where = TopicPartition(topic, partition)
        if where not in partitions:
            raise DeadLetterNotFoundError(
                f"{topic}[{partition}]@{offset} holds no dead letter: the topic has "
                f"{len(partitions)} partition(s), numbered from 0; list the letters to find "
                "the one you mean"
            )
        first = (await consumer.beginning_offsets([where]))[where]
        end = (await consumer.end_offsets([where]))[where]
        found = None
        if first <= offset < end:
            async with aclosing(scan(consumer, {where: (offset, end)})) as records:
                found = await anext(records, None)
        # A later record than asked for: the offset holds a transaction marker or an aborted
        # record, which read_committed skips.
        if found is None or found.offset != offset:
            held = f"offsets {first} to {end - 1}" if first < end else "no records"
            raise DeadLetterNotFoundError(
                f"{topic}[{partition}]@{offset} holds no dead letter (partition {partition} "
                f"holds {held}); list the letters to find the one you mean"
            )
        return _stored(found)


async def count_letters(bootstrap_servers: str, topic: str) -> LetterCounts:
    """How many letters the topic holds, and how many of them no `replay --all` sent back yet,
    from offsets alone (end minus first, end minus where the last replay-all stopped): no
    record is read.

    Approximate for a topic written in Kafka transactions (an exactly-once flow's dead
    letters): each transaction's commit marker takes an offset too, and an aborted
    transaction's records keep theirs, so the counts may be higher than the letters a read
    returns.
    """
    async with _reader(bootstrap_servers, topic, group=True) as (consumer, partitions):
        ends = await consumer.end_offsets(partitions)
        firsts = await _starts(consumer, partitions, unreplayed=False)
        waiting = await _starts(consumer, partitions, unreplayed=True)
        return LetterCounts(
            letters=sum(ends[tp] - firsts[tp] for tp in partitions),
            unreplayed=sum(max(0, ends[tp] - waiting[tp]) for tp in partitions),
        )


@asynccontextmanager
async def _reader(
    bootstrap_servers: str, topic: str, *, group: bool
) -> AsyncIterator[tuple[AIOKafkaConsumer, list[TopicPartition]]]:
    """A started consumer and the topic's partitions; with `group`, the consumer can tell where
    the last replay-all stopped. Kafka failing, here or in the body, is KafkaUnavailableError."""
    consumer = kafka_clients.consumer(
        bootstrap_servers=bootstrap_servers,
        group_id=replay_group(topic) if group else None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",  # letters deleted by retention meanwhile: go on after them
        isolation_level="read_committed",
    )
    try:
        await consumer.start()
        partitions = await topic_partitions(bootstrap_servers, topic)
        if not partitions:
            raise DeadLetterTopicMissingError(
                f"dead-letter topic {topic!r} does not exist; check the flow name, or pass "
                "the flow files that name its dlq topic"
            )
        yield consumer, partitions
    except KafkaError as error:
        raise KafkaUnavailableError(
            f"cannot read dead-letter topic {topic!r} at {bootstrap_servers}: {error}; check "
            "that the cluster is up, then try again"
        ) from error
    finally:
        await consumer.stop()


async def _starts(
    consumer: AIOKafkaConsumer, partitions: Sequence[TopicPartition], *, unreplayed: bool
) -> dict[TopicPartition, int]:
    """Each partition's first offset, or with `unreplayed` where the last replay-all stopped
    (when that is later: retention may have deleted letters since)."""
    starts: dict[TopicPartition, int] = await consumer.beginning_offsets(partitions)
    if unreplayed:
        for partition in partitions:
            done = await consumer.committed(partition)
            if done is not None:
                starts[partition] = max(starts[partition], done)
    return starts


def _stored(record: ConsumerRecord[bytes, bytes]) -> StoredLetter:
    return StoredLetter(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value or b"",
        headers=list(record.headers),
        reason=DeadLetter.from_headers(record.headers),
    )


async def mark_replayed(bootstrap_servers: str, letters: Sequence[StoredLetter]) -> None:
    """Remember that `replay --all` got past these letters, so a second one skips them."""
    if not letters:
        return
    topic = letters[0].topic
    consumer = kafka_clients.consumer(
        bootstrap_servers=bootstrap_servers, group_id=replay_group(topic), enable_auto_commit=False
    )
    last: dict[TopicPartition, int] = {}
    for letter in letters:
        partition = TopicPartition(letter.topic, letter.partition)
        last[partition] = max(last.get(partition, -1), letter.offset + 1)
    try:
        await consumer.start()
        consumer.assign(list(last))
        await consumer.commit(last)
    except KafkaError as error:
        raise KafkaUnavailableError(
            f"the {len(letters)} letter(s) of {topic!r} were replayed, but where the replay "
            f"stopped could not be kept ({error}); the next replay-all sends them again"
        ) from error
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
        raise KafkaUnavailableError(
            f"replay stopped after {len(sent)} record(s): {error}; the rest are still in the "
            "dead-letter topic"
        ) from error
    finally:
        await producer.stop()
    return sent


def _replayable(letter: StoredLetter) -> DeadLetter:
    """The letter's reason, if it can be sent back to where it came from."""
    if letter.reason is None:
        raise NotReplayableError(
            f"{letter.where} carries no bus_dlq_* headers, so its origin is unknown; "
            "it was not dead-lettered by bus"
        )
    if letter.reason.partition < 0:
        # A polled item never was a record: its origin is a URL, not a topic.
        raise NotReplayableError(
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
