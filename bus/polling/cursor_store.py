"""Where pollers keep their cursors: a compacted Kafka topic, one record per poller.

The key is the poller's name (UTF-8) and the value JSON (UTF-8):

```json
{"format": 1, "poller": "tickets-poll", "position": "2026-01-01T10:00:00Z",
 "seen": "<base64>", "saved_at": "2026-11-24T01:40:06.123Z"}
```

`position` is the fetch's own (the greatest `updated_at` seen, a page token, an ETag, or null);
`seen` holds the identities of the items already published, 8 bytes each, oldest first. A
record with no value (a tombstone) forgets the cursor: the poller then starts from the beginning.

A poller writes its cursor in the same Kafka transaction as the events of the page that moved
it, so the read_committed view of this topic always matches what its outputs' read_committed
readers see. The topic is compacted (`cleanup.policy=compact`): Kafka keeps the latest record of
each key, so reading the topic from its start stays cheap however long the pollers have run.
"""

import asyncio
import base64
import binascii
import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Self

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from bus import kafka_clients
from bus.errors import BusError
from bus.events.cloudevents import format_time
from bus.flows.dead_letters import now

log = logging.getLogger(__name__)

DEFAULT_TOPIC = "bus.poll-cursors"
DEFAULT_REMEMBER = 10_000
"""How many published items a poller remembers (to skip when they come again), by default."""
DIGEST_SIZE = 8  # bytes per remembered item: collisions are negligible among 10^4-10^5 items
FORMAT = 1
_TOPIC_CONFIGS = {
    "cleanup.policy": "compact",
    # Roll segments hourly, so compaction can drop old cursors of busy pollers (it never
    # touches the active segment); the default is a week.
    "segment.ms": str(3_600_000),
}


class CursorError(BusError):
    """The cursor topic cannot be created or read, or holds a value that is not a cursor."""


class SeenItems:
    """Identities of items already published, at most `limit`, the most recently seen last.

    Each identity is kept as a short digest (`SeenItems.digest`). Adding one that is there
    already moves it to the end, so the items a collection still returns are the last forgotten.

    Usage::

        seen = SeenItems(limit=3)
        seen.add(SeenItems.digest("a"))
        assert SeenItems.digest("a") in seen
    """

    __slots__ = ("_digests", "limit")

    def __init__(self, limit: int = DEFAULT_REMEMBER, digests: Iterable[bytes] = ()) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        self.limit = limit
        self._digests: dict[bytes, None] = {}
        for digest in digests:
            self.add(digest)

    @staticmethod
    def digest(identity: str) -> bytes:
        return hashlib.sha256(identity.encode()).digest()[:DIGEST_SIZE]

    def __contains__(self, digest: object) -> bool:
        return digest in self._digests

    def __len__(self) -> int:
        return len(self._digests)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._digests)

    def __repr__(self) -> str:
        return f"SeenItems({len(self)} of at most {self.limit})"

    def add(self, digest: bytes) -> None:
        if len(digest) != DIGEST_SIZE:
            raise ValueError(f"a digest has {DIGEST_SIZE} bytes, not {len(digest)}")
        self._digests.pop(digest, None)
        self._digests[digest] = None
        while len(self._digests) > self.limit:
            del self._digests[next(iter(self._digests))]

    def copy(self) -> "SeenItems":
        copied = SeenItems(self.limit)
        copied._digests = dict(self._digests)
        return copied

    def to_text(self) -> str:
        return base64.b64encode(b"".join(self._digests)).decode()

    @classmethod
    def from_text(cls, text: str, limit: int = DEFAULT_REMEMBER) -> "SeenItems":
        raw = base64.b64decode(text.encode(), validate=True)
        if len(raw) % DIGEST_SIZE:
            raise ValueError(f"{len(raw)} bytes is not a whole number of {DIGEST_SIZE}-byte items")
        return cls(limit, (raw[at : at + DIGEST_SIZE] for at in range(0, len(raw), DIGEST_SIZE)))


@dataclass(frozen=True)
class CursorState:
    """Where a poller is: the fetch's `position` (JSON: text, a number or null) and the items it
    has published. Treat it as immutable: the poller copies `seen` before changing it."""

    position: Any = None
    seen: SeenItems = field(default_factory=SeenItems)

    def to_json(self, poller: str) -> bytes:
        return json.dumps(
            {
                "format": FORMAT,
                "poller": poller,
                "position": self.position,
                "seen": self.seen.to_text(),
                "saved_at": format_time(now()),
            },
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, value: bytes, *, remember: int = DEFAULT_REMEMBER) -> Self:
        """The state in a record's value; CursorError if it is not one."""
        try:
            data = json.loads(value)
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError(f"expected a JSON object with format {FORMAT}")
            position = data.get("position")
            if isinstance(position, dict | list):
                raise ValueError("the position is not text, a number or null")
            seen = SeenItems.from_text(str(data.get("seen", "")), remember)
        except (ValueError, binascii.Error) as error:  # JSONDecodeError is a ValueError
            raise CursorError(f"not a poller cursor ({error})") from error
        return cls(position=position, seen=seen)


async def _behind(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    """Whether the consumer has yet to reach `ends` in some partition."""
    for partition, end in ends.items():
        if await consumer.position(partition) < end:
            return True
    return False


class CursorStore:
    """Reads and writes poller cursors in the compacted topic `topic` on `bootstrap_servers`.

    The poller writes through `record` inside its own transactions; `save` and `forget` are for
    tools (set or reset a cursor by hand) and write outside any transaction.

    Usage::

        store = CursorStore("127.0.0.1:9092")
        await store.ensure_topic()
        state = await store.load("tickets-poll")     # None: never saved, or forgotten
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str = DEFAULT_TOPIC,
        *,
        partitions: int = 1,
        replication_factor: int | None = None,
        read_within: float = 30.0,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.partitions = partitions
        self.replication_factor = replication_factor
        self.read_within = read_within

    async def ensure_topic(self) -> bool:
        """Create the topic, compacted, unless it exists; True if it was created. An existing
        topic that is not compacted is used all the same, with a warning."""
        admin = kafka_clients.admin_client(self.bootstrap_servers)
        try:
            await admin.start()
            if self.topic in set(await admin.list_topics()):
                await self._check_compacted(admin)
                return False
            replication = self.replication_factor
            if replication is None:
                brokers = len((await admin.describe_cluster())["brokers"])
                replication = max(1, min(3, brokers))
            response = await admin.create_topics(
                [NewTopic(self.topic, self.partitions, replication, topic_configs=_TOPIC_CONFIGS)]
            )
            for entry in getattr(response, "topic_errors", []):
                name, code, *rest = entry
                if code and code != TopicAlreadyExistsError.errno:
                    raise CursorError(
                        f"cannot create the poller cursor topic {name!r} ({self.partitions} "
                        f"partitions, replication {replication}, cleanup.policy=compact): error "
                        f"{code} {rest[0] if rest else ''}; create it yourself"
                    )
            log.info("created the poller cursor topic %s (cleanup.policy=compact)", self.topic)
            return True
        except KafkaError as error:
            raise CursorError(
                f"cannot check or create the poller cursor topic {self.topic!r}: {error}"
            ) from error
        finally:
            await admin.close()

    async def _check_compacted(self, admin: AIOKafkaAdminClient) -> None:
        try:
            [response] = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, self.topic)]
            )
            entries = response.resources[0][4]
            policy = next((entry[1] for entry in entries if entry[0] == "cleanup.policy"), None)
        except (KafkaError, IndexError, ValueError, TypeError, AttributeError):
            return  # not allowed to look, or an answer of another shape: nothing to say
        if policy is not None and "compact" not in str(policy):
            log.warning(
                "the poller cursor topic %s has cleanup.policy=%s: old cursors may be deleted, "
                "and a poller whose cursor is gone starts again from the beginning; set "
                "cleanup.policy=compact",
                self.topic,
                policy,
            )

    def record(self, poller: str, state: CursorState) -> tuple[bytes, bytes]:
        """The key and value of the record that stores `state` as `poller`'s cursor."""
        return poller.encode(), state.to_json(poller)

    async def load(self, poller: str, *, remember: int = DEFAULT_REMEMBER) -> CursorState | None:
        """The latest committed cursor of `poller`, reading the topic to its end as a
        read_committed reader; None if it has none (never saved, or forgotten)."""
        key = poller.encode()
        consumer = kafka_clients.consumer(
            bootstrap_servers=self.bootstrap_servers,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
        )
        latest: bytes | None = None
        try:
            numbers = await self._partitions()
            await consumer.start()
            partitions = [TopicPartition(self.topic, number) for number in sorted(numbers)]
            consumer.assign(partitions)
            async with asyncio.timeout(self.read_within):
                await consumer.seek_to_beginning(*partitions)
                # Under read_committed this is the last stable offset: everything before it is
                # decided, committed or aborted.
                ends = await consumer.end_offsets(partitions)
                while await _behind(consumer, ends):
                    batches = await consumer.getmany(timeout_ms=200)
                    for partition, records in batches.items():
                        for record in records:
                            if record.key == key and record.offset < ends[partition]:
                                latest = record.value
        except TimeoutError as slow:
            raise CursorError(
                f"could not read the poller cursor topic {self.topic!r} to its end within "
                f"{self.read_within:.0f} s"
            ) from slow
        except KafkaError as error:
            raise CursorError(f"cannot read the poller cursor topic {self.topic!r}: {error}") from (
                error
            )
        finally:
            await consumer.stop()
        if latest is None:
            return None
        try:
            return CursorState.from_json(latest, remember=remember)
        except CursorError as error:
            raise CursorError(
                f"the cursor of poller {poller!r} in topic {self.topic!r} is unreadable: {error}; "
                f"reset it with CursorStore.forget({poller!r}) (the poller then starts from the "
                "beginning)"
            ) from error

    async def _partitions(self) -> set[int]:
        admin = kafka_clients.admin_client(self.bootstrap_servers)
        try:
            await admin.start()
            [described] = await admin.describe_topics([self.topic])
        finally:
            await admin.close()
        if described.get("error_code") or not described.get("partitions"):
            raise CursorError(
                f"the poller cursor topic {self.topic!r} does not exist (or has no partitions "
                "yet); CursorStore.ensure_topic creates it"
            )
        return {partition["partition"] for partition in described["partitions"]}

    async def save(self, poller: str, state: CursorState) -> None:
        """Store a cursor outside any transaction (a tool setting it by hand). Do not use it
        while the poller runs: its next page would overwrite it."""
        key, value = self.record(poller, state)
        await self._write(key, value)

    async def forget(self, poller: str) -> None:
        """Delete `poller`'s cursor (a tombstone): it starts from the beginning next time."""
        await self._write(poller.encode(), None)

    async def _write(self, key: bytes, value: bytes | None) -> None:
        producer = kafka_clients.durable_producer(self.bootstrap_servers)
        try:
            await producer.start()
            await producer.send_and_wait(self.topic, value, key=key)
        except KafkaError as error:
            raise CursorError(
                f"cannot write to the poller cursor topic {self.topic!r}: {error}"
            ) from (error)
        finally:
            await producer.stop()
