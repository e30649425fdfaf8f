"""bus.testing: every scenario runs twice, on the in-memory kit and on the real broker.

A behaviour the kit offers is only worth having if Kafka behaves the same, so each scenario is
written once against `Harness` and parametrized over both. The plain unit tests at the end cover
the kit's own API edges, which have no Kafka counterpart.
"""

import asyncio
import contextlib
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import pytest
from aiokafka import ConsumerRecord

import bus.testing
from bus.errors import BusError, ConfigError, EventValidationError
from bus.events.event import Event
from bus.events.publisher import Publisher
from bus.flows.loading import FlowFileError, load_flow_files
from bus.flows.model import FlowSet
from bus.flows.runtime import run_flows
from bus.flows.validation import validate_flows
from bus.testing import DeadLetterRecord, FlowTestKit, InputRecord, partition_for
from tests.flow_harness import CATALOG, ROOT, decode, read_all, read_records, write_flow

CHANGED = "com.acme.crm.CustomerChanged"
UPSERT = "com.acme.erp.CustomerUpsertRequest"
WHEN = "2026-11-24T01:40:06.123Z"
SOURCE = "/crm"

TopicName = Callable[[str], str]


def customer(number: int, country: str, **changes: Any) -> dict[str, Any]:
    return {
        "customerId": f"c-{number}",
        "change": "UPDATED",
        "email": f"c{number}@example.com",
        "name": f"Customer {number}",
        "address": {"line1": "1 Way", "city": "Town", "postalCode": "1", "country": country},
        "changedAt": WHEN,
        **changes,
    }


UPSERT_MAP = """
          to: com.acme.erp.CustomerUpsertRequest
          map:
            customerId: event.customerId
            legalName: event.name
            email: event.email
            billingAddress: event.address
            salesRegion: 'event.address.country in ["US", "CA"] ? "US" : "EU"'
            requestedAt: attributes.time"""


# -- the two harnesses ----------------------------------------------------------------------------


class Harness(Protocol):
    """What a scenario does: create topics, run flow files, write, and read what came out.

    Reads take the number of records expected: Kafka waits for them (and fails when they do not
    come), the kit runs its flows first. `everything` is for asserting that nothing more came.
    """

    async def create_topics(self, *names: str, partitions: int = 1) -> None: ...

    def flows(
        self, text: str, *, only: Sequence[str] = ()
    ) -> contextlib.AbstractAsyncContextManager[None]: ...

    async def publish(
        self,
        topic: str,
        event_type: str,
        data: dict[str, Any],
        *,
        key: str | None = None,
        subject: str | None = None,
    ) -> Event: ...

    async def send_raw(self, topic: str, value: bytes, *, key: bytes | None) -> InputRecord: ...

    async def records(self, topic: str, count: int) -> list[InputRecord]: ...

    async def events(self, topic: str, count: int) -> list[Event]: ...

    async def dead_letters(self, flow: str, count: int) -> list[DeadLetterRecord]: ...

    async def everything(self, topic: str) -> list[InputRecord]: ...


class MemoryHarness:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.topics: dict[str, int] = {}
        self._kit: FlowTestKit | None = None

    @property
    def kit(self) -> FlowTestKit:
        assert self._kit is not None, "inside `async with harness.flows(...)` only"
        return self._kit

    async def create_topics(self, *names: str, partitions: int = 1) -> None:
        self.topics.update(dict.fromkeys(names, partitions))

    @contextlib.asynccontextmanager
    async def flows(self, text: str, *, only: Sequence[str] = ()) -> AsyncIterator[None]:
        path = write_flow(self.folder, text)
        self._kit = FlowTestKit.load([path], schemas=CATALOG, only=only, source=SOURCE)
        for name, partitions in self.topics.items():
            self._kit.create_topic(name, partitions)
        yield

    async def publish(
        self,
        topic: str,
        event_type: str,
        data: dict[str, Any],
        *,
        key: str | None = None,
        subject: str | None = None,
    ) -> Event:
        return await self.kit.publish(topic, event_type, data, key=key, subject=subject)

    async def send_raw(self, topic: str, value: bytes, *, key: bytes | None) -> InputRecord:
        return self.kit.send_raw(topic, value, key=key)

    async def records(self, topic: str, count: int) -> list[InputRecord]:
        await self.kit.run()
        found = self.kit.records(topic)
        assert len(found) >= count, f"{topic}: {len(found)} of {count} records came"
        return found[:count]

    async def events(self, topic: str, count: int) -> list[Event]:
        await self.kit.run()
        found = await self.kit.events(topic)
        assert len(found) >= count, f"{topic}: {len(found)} of {count} events came"
        return found[:count]

    async def dead_letters(self, flow: str, count: int) -> list[DeadLetterRecord]:
        await self.kit.run()
        found = self.kit.dead_letters(flow)
        assert len(found) >= count, f"{flow}: {len(found)} of {count} dead letters came"
        return found[:count]

    async def everything(self, topic: str) -> list[InputRecord]:
        await self.kit.run()
        return self.kit.records(topic)


def as_input(record: ConsumerRecord) -> InputRecord:
    return InputRecord(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value or b"",
        headers=tuple(record.headers),
    )


class KafkaHarness:
    def __init__(
        self,
        folder: Path,
        bootstrap_servers: str,
        create_topics: Callable[..., Awaitable[None]],
    ) -> None:
        self.folder = folder
        self.bootstrap_servers = bootstrap_servers
        self._create_topics = create_topics
        self._flow_set: FlowSet | None = None
        self._publisher: Publisher | None = None

    @property
    def publisher(self) -> Publisher:
        assert self._publisher is not None, "inside `async with harness.flows(...)` only"
        return self._publisher

    async def create_topics(self, *names: str, partitions: int = 1) -> None:
        await self._create_topics(*names, partitions=partitions)

    @contextlib.asynccontextmanager
    async def flows(self, text: str, *, only: Sequence[str] = ()) -> AsyncIterator[None]:
        # As tests.flow_harness.running_flows, with `only` (the kit offers it, so it is tested).
        self._flow_set = load_flow_files([write_flow(self.folder, text)])
        assert validate_flows(self._flow_set, CATALOG) == []
        stop = asyncio.Event()
        async with Publisher(self.bootstrap_servers, CATALOG, source=SOURCE) as publisher:
            self._publisher = publisher
            task = asyncio.create_task(
                run_flows(
                    self._flow_set,
                    CATALOG,
                    bootstrap_servers=self.bootstrap_servers,
                    only=only,
                    stop=stop,
                )
            )
            try:
                yield
            finally:
                stop.set()
                await asyncio.wait_for(task, 60)

    async def publish(
        self,
        topic: str,
        event_type: str,
        data: dict[str, Any],
        *,
        key: str | None = None,
        subject: str | None = None,
    ) -> Event:
        return await self.publisher.publish(topic, event_type, data, key=key, subject=subject)

    async def send_raw(self, topic: str, value: bytes, *, key: bytes | None) -> InputRecord:
        sent = await self.publisher._producer.send_and_wait(topic, value, key=key)
        return InputRecord(topic, sent.partition, sent.offset, key, value, ())

    async def records(self, topic: str, count: int) -> list[InputRecord]:
        return [as_input(r) for r in await read_records(self.bootstrap_servers, topic, count)]

    async def events(self, topic: str, count: int) -> list[Event]:
        return await decode(await read_records(self.bootstrap_servers, topic, count))

    async def dead_letters(self, flow: str, count: int) -> list[DeadLetterRecord]:
        assert self._flow_set is not None
        [dlq] = [item.dlq for item in self._flow_set.mediation if item.name == flow]
        letters = [DeadLetterRecord.parse(record) for record in await self.records(dlq, count)]
        return [letter for letter in letters if letter and letter.reason.flow == flow]

    async def everything(self, topic: str) -> list[InputRecord]:
        return [as_input(r) for r in await read_all(self.bootstrap_servers, topic)]


@pytest.fixture(params=["memory", "kafka"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Harness:
    if request.param == "memory":
        return MemoryHarness(tmp_path)
    # Only the Kafka variant asks for the broker, so the memory variant never waits for one.
    return KafkaHarness(
        tmp_path,
        request.getfixturevalue("bootstrap_servers"),
        request.getfixturevalue("create_topics"),
    )


def by_customer(events: list[Event]) -> list[Event]:
    # Kafka keeps order per partition only; outputs spread over partitions are compared sorted.
    return sorted(events, key=lambda event: event.data["customerId"])


# -- scenarios --------------------------------------------------------------------------------


async def test_filter_transform_and_route(harness: Harness, topic_name: TopicName) -> None:
    source, eu, world, dlq = (topic_name(p) for p in ("in", "eu", "world", "dlq"))
    await harness.create_topics(source)
    flow = f"""
mediation:
  - name: kit-routing
    from: {source}
    dlq: {dlq}
    steps:
      - filter: event.change != "DELETED"
      - transform:{UPSERT_MAP}
      - route:
          routes:
            - when: event.salesRegion == "EU"
              to: {eu}
            - otherwise: {world}
"""
    async with harness.flows(flow):
        first = await harness.publish(source, CHANGED, customer(1, "DE"), key="c-1", subject="s")
        second = await harness.publish(source, CHANGED, customer(2, "US"), key="c-2")
        await harness.publish(source, CHANGED, customer(3, "FR", change="DELETED"), key="c-3")
        fourth = await harness.publish(source, CHANGED, customer(4, "FR"), key="c-4")
        to_eu = by_customer(await harness.events(eu, 2))
        [to_world] = await harness.events(world, 1)
        eu_records, world_records, letters = await asyncio.gather(
            harness.everything(eu), harness.everything(world), harness.everything(dlq)
        )

    assert [e.data["customerId"] for e in to_eu] == ["c-1", "c-4"]
    assert [e.data["salesRegion"] for e in to_eu] == ["EU", "EU"]
    one = to_eu[0]
    assert one.type == UPSERT
    assert one.data["billingAddress"]["country"] == "DE"
    assert one.data["requestedAt"] == first.time
    assert (one.key, one.subject, one.source) == ("c-1", "s", "/bus/flows/kit-routing")
    assert one.extensions == {"parentid": first.id, "rootid": first.id}
    assert to_eu[1].extensions == {"parentid": fourth.id, "rootid": fourth.id}
    assert to_world.data["customerId"] == "c-2"
    assert to_world.extensions == {"parentid": second.id, "rootid": second.id}
    # The DELETED customer went nowhere, and nothing failed.
    assert len(eu_records) == 2
    assert len(world_records) == 1
    assert letters == []
    # Topics `bus run` created have 6 partitions; a key picks one as Kafka's partitioner does.
    for record in [*eu_records, *world_records]:
        assert record.key is not None
        assert record.partition == partition_for(record.key, 6)


async def test_poison_and_failed_mapping_are_dead_lettered(
    harness: Harness, topic_name: TopicName
) -> None:
    source, out, dlq = (topic_name(p) for p in ("in", "out", "dlq"))
    await harness.create_topics(source)
    flow = f"""
mediation:
  - name: kit-dead-letters
    from: {source}
    to: {out}
    dlq: {dlq}
    steps:
      - transform:{UPSERT_MAP}
"""
    async with harness.flows(flow):
        await harness.publish(source, CHANGED, customer(1, "DE"), key="c-1")
        poison = await harness.send_raw(source, b"not avro", key=b"c-2")
        no_address = await harness.publish(
            source, CHANGED, customer(3, "DE", address=None), key="c-3"
        )
        await harness.publish(source, CHANGED, customer(4, "US"), key="c-4")
        outputs = by_customer(await harness.events(out, 2))
        letters = await harness.dead_letters("kit-dead-letters", 2)
        dlq_records = await harness.everything(dlq)

    # Processing went on past both failures.
    assert [e.data["customerId"] for e in outputs] == ["c-1", "c-4"]
    assert (poison.partition, poison.offset) == (0, 1)
    garbage, unmapped = sorted(letters, key=lambda letter: letter.reason.offset)

    assert garbage.reason.step == "decode"
    assert garbage.reason.error_type == "BadHeaderError"
    assert (garbage.reason.flow, garbage.reason.topic) == ("kit-dead-letters", source)
    assert (garbage.reason.partition, garbage.reason.offset) == (0, 1)
    assert garbage.reason.attempts == 1
    assert garbage.original == poison  # topic, partition, offset, key, value, headers

    assert unmapped.reason.step == "steps[0].transform"
    assert unmapped.reason.error_type == "ExpressionError"
    assert "address" in unmapped.reason.error
    assert unmapped.reason.offset == 2
    assert dict(unmapped.original.headers)["ce_id"] == no_address.id.encode()
    assert unmapped.original.key == b"c-3"

    assert len(dlq_records) == 2
    for record in dlq_records:
        assert record.key is not None
        assert record.partition == partition_for(record.key, 6)


async def test_chained_flows_cascade(harness: Harness, topic_name: TopicName) -> None:
    source, middle, out = topic_name("in"), topic_name("middle"), topic_name("out")
    dlq_a, dlq_b = topic_name("dlq-a"), topic_name("dlq-b")
    await harness.create_topics(source)
    flow = f"""
topics:
  partitions: 3
mediation:
  - name: kit-chain-upserts
    from: {source}
    to: {middle}
    dlq: {dlq_a}
    steps:
      - transform:{UPSERT_MAP}
  - name: kit-chain-eu
    from: {middle}
    to: {out}
    dlq: {dlq_b}
    steps:
      - filter: event.salesRegion == "EU"
"""
    async with harness.flows(flow):
        first = await harness.publish(source, CHANGED, customer(1, "DE"), key="c-1")
        await harness.publish(source, CHANGED, customer(2, "US"), key="c-2")
        [final] = await harness.events(out, 1)
        requests = by_customer(await harness.events(middle, 2))
        out_records = await harness.everything(out)

    assert final.type == UPSERT
    assert final.data["customerId"] == "c-1"
    assert final.source == "/bus/flows/kit-chain-eu"
    assert requests[0].extensions == {"parentid": first.id, "rootid": first.id}
    # The root is the journey's first event, however far down the chain.
    assert final.extensions == {"parentid": requests[0].id, "rootid": first.id}
    [record] = out_records
    assert record.partition == partition_for(b"c-1", 3)  # the files' `topics.partitions`


async def test_flows_read_independently_and_only_selects(
    harness: Harness, topic_name: TopicName
) -> None:
    source, a, b, c = (topic_name(p) for p in ("in", "a", "b", "c"))
    await harness.create_topics(source, c)
    flows = "\n".join(
        f"""
  - name: kit-fan-{name}
    from: {source}
    to: {topic}
    dlq: {topic}.dlq"""
        for name, topic in (("a", a), ("b", b), ("c", c))
    )
    async with harness.flows(f"mediation:{flows}\n", only=["kit-fan-a", "kit-fan-b"]):
        await harness.publish(source, CHANGED, customer(1, "DE"), key="c-1")
        await harness.events(a, 1)
        # Published after the flows read the first: each resumes where it was, nothing twice.
        await harness.publish(source, CHANGED, customer(2, "DE"), key="c-2")
        at_a = await harness.events(a, 2)
        at_b = await harness.events(b, 2)
        everything = await asyncio.gather(*(harness.everything(t) for t in (a, b, c)))

    # Each flow is its own consumer group: both see every event.
    assert sorted(e.data["customerId"] for e in at_a) == ["c-1", "c-2"]
    assert sorted(e.data["customerId"] for e in at_b) == ["c-1", "c-2"]
    assert [len(records) for records in everything] == [2, 2, 0]


# -- the kit's own API ----------------------------------------------------------------------------


def kit_for(tmp_path: Path, text: str, **options: Any) -> FlowTestKit:
    return FlowTestKit.load([write_flow(tmp_path, text)], schemas=CATALOG, **options)


PASSTHROUGH = """
mediation:
  - name: passthrough
    from: in
    to: out
"""


async def test_unknown_topic_reads_empty(tmp_path: Path) -> None:
    kit = kit_for(tmp_path, PASSTHROUGH)
    assert kit.records("nowhere") == []
    assert await kit.events("nowhere") == []
    assert await kit.run() == 0


async def test_publishing_an_invalid_event_names_the_field(tmp_path: Path) -> None:
    kit = kit_for(tmp_path, PASSTHROUGH)
    address = {"line1": "1 Way", "city": "Town", "postalCode": "1"}
    with pytest.raises(EventValidationError) as raised:
        await kit.publish("in", CHANGED, customer(1, "DE", address=address))
    assert raised.value.schema == CHANGED
    assert [path for path, _ in raised.value.problems] == ["address.country"]
    assert kit.records("in") == []


async def test_unknown_event_type_is_refused(tmp_path: Path) -> None:
    kit = kit_for(tmp_path, PASSTHROUGH)
    with pytest.raises(BusError, match=r"com\.acme\.Nope"):
        await kit.publish("in", "com.acme.Nope", {})


def test_an_invalid_flow_file_raises_flow_file_error(tmp_path: Path) -> None:
    with pytest.raises(FlowFileError) as shape:
        kit_for(tmp_path, PASSTHROUGH + "    colour: blue\n")
    [problem] = shape.value.problems
    assert problem.startswith(f"{tmp_path / 'flow.yaml'}:6:5: mediation[0].colour: unknown key")

    # Checked as `bus validate` checks: against the schemas, not only the file's shape.
    unknown_schema = PASSTHROUGH + "    steps:\n      - transform: {to: com.acme.Nope, map: {}}\n"
    with pytest.raises(FlowFileError) as schema:
        kit_for(tmp_path, unknown_schema)
    [problem] = schema.value.problems
    assert "mediation[0].steps[0].transform.to: no schema named 'com.acme.Nope'" in problem


async def test_run_is_incremental_and_counts(tmp_path: Path) -> None:
    kit = kit_for(tmp_path, PASSTHROUGH)
    await kit.publish("in", CHANGED, customer(1, "DE"), key="c-1")
    assert await kit.run() == 1
    assert await kit.run() == 0
    await kit.publish("in", CHANGED, customer(2, "DE"), key="c-2")
    assert await kit.run() == 1
    assert [e.data["customerId"] for e in await kit.events("out")] == ["c-1", "c-2"]


async def test_a_cycle_stops_at_the_limit(tmp_path: Path) -> None:
    kit = kit_for(
        tmp_path,
        """
mediation:
  - name: ping
    from: ping
    to: pong
  - name: pong
    from: pong
    to: ping
""",
    )
    await kit.publish("ping", CHANGED, customer(1, "DE"))
    with pytest.raises(BusError, match="cycle"):
        await kit.run(limit=50)


def test_only_and_dead_letters_name_known_flows(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--only names nothing in the flow files: nope"):
        kit_for(tmp_path, PASSTHROUGH, only=["nope"])
    kit = kit_for(tmp_path, PASSTHROUGH)
    assert kit.flows == ("passthrough",)
    assert kit.dead_letters("passthrough") == []
    with pytest.raises(ConfigError, match="the flows are: passthrough"):
        kit.dead_letters("nope")


async def test_topics_and_partitions(tmp_path: Path) -> None:
    kit = kit_for(tmp_path, PASSTHROUGH, partitions=4)
    kit.create_topic("in", 1)
    with pytest.raises(ConfigError, match="already exists"):
        kit.create_topic("in", 2)
    headers = [("x-trace", b"\x00\x01")]
    raw = kit.send_raw("in", b"\xff", key=b"k", headers=headers)
    assert (raw.topic, raw.partition, raw.offset, raw.headers) == ("in", 0, 0, tuple(headers))
    await kit.run()
    [letter] = kit.dead_letters("passthrough")
    assert letter.original == raw
    [stored] = kit.records("passthrough.dlq")  # the default dlq name, created with 4 partitions
    assert stored.partition == partition_for(b"k", 4)
    # Keyless records take the partitions in turn (aiokafka would choose at random).
    assert [kit.send_raw("t", b"").partition for _ in range(5)] == [0, 1, 2, 3, 0]
    assert DeadLetterRecord.parse(raw) is None


def test_the_docstring_example_runs() -> None:
    assert bus.testing.__doc__ is not None
    example = re.search(r"```python\n(.*?)```", bus.testing.__doc__, re.DOTALL)
    assert example is not None
    # A fresh interpreter: the example calls asyncio.run, which a running loop forbids.
    done = subprocess.run(
        [sys.executable, "-c", example.group(1)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
