"""The flow authors' test kit: flow files run on an in-memory transport, in milliseconds.

```python
import asyncio
from pathlib import Path

from bus.testing import FlowTestKit


async def main() -> None:
    kit = FlowTestKit.load([Path("examples/flows/customers.yaml")], schemas=Path("schemas"))
    changed = {
        "customerId": "c-1",
        "change": "UPDATED",
        "email": "ada@example.com",
        "name": "Ada",
        "address": {"line1": "1 Way", "city": "Berlin", "postalCode": "10115", "country": "DE"},
        "changedAt": "2026-11-24T01:40:06.123Z",
    }
    sent = await kit.publish(
        "crm.customer-changed.v1", "com.acme.crm.CustomerChanged", changed, key="c-1"
    )
    await kit.run()
    [upsert] = await kit.events("erp.eu.customer-upsert.v1")
    assert upsert.data["salesRegion"] == "EU"
    assert upsert.extensions["parentid"] == sent.id
    assert kit.dead_letters("customer-upserts") == []


asyncio.run(main())
```

Each record goes through the very `FlowProcessor` and `EventCodec` that `bus run` uses (decode,
steps, encode, outputs or a dead letter), so what a flow does to an event here it does on Kafka.
Only the transport differs. The kit models:

- topics as append-only logs, with partitions and per-partition offsets; a keyed record goes to
  the partition Kafka's default partitioner picks (murmur2 of the key bytes), so partitions and
  offsets match Kafka's for keyed records on a topic of the same size;
- each flow as its own consumer group (two flows reading one topic both see every record),
  reading each source from the earliest record and resuming where it stopped on the next `run()`;
- cascades: a flow's outputs are read by every flow whose source they land on, in the same run;
- dead letters: the original record with the same `bus_dlq_*` headers, on the flow's `dlq` topic;
- validation as `bus validate` does it, and flow selection as `bus run --only` does it;
- topics created when first written or read, with the flow files' `topics.partitions` (else 6),
  as `bus run` creates the topics its flows use.

It does not model: several instances of a flow sharing partitions (rebalances), transactions
and the exactly-once guarantee (every output is visible at once), timing and concurrency (one
record at a time, flows and partitions interleaved in one fixed order), a schema registry (values
are always single-object framed), retries and restarts, null values and headers without a value,
or a broker that refuses to auto-create topics. A keyless record goes to the topic's partitions
in turn, where aiokafka picks one at random: tests must not depend on it.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Self

from aiokafka.partitioner import murmur2
from pydantic import BaseModel

from bus.config import load_settings
from bus.errors import BusError, ConfigError
from bus.events.catalog import SchemaCatalog
from bus.events.codec import EventCodec, KafkaRecord
from bus.events.event import Event
from bus.events.validation import new_event
from bus.flows.build import BuiltFlow, build_flow
from bus.flows.dead_letters import DeadLetter, InputRecord, original_headers
from bus.flows.loading import FlowFileError, load_flow_files
from bus.flows.model import FlowSet
from bus.flows.runtime import select
from bus.flows.validation import validate_flows

__all__ = ["DeadLetterRecord", "FlowTestKit", "InputRecord", "partition_for"]

DEFAULT_PARTITIONS = 6  # what `bus run` gives a topic it creates when the files do not say
DEFAULT_RUN_LIMIT = 10_000


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (Java's and aiokafka's) picks for `key`."""
    hashed: int = murmur2(key)
    return (hashed & 0x7FFFFFFF) % partitions


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    """A record of a dead-letter topic: why it is there, and the record the flow could not take
    (with its topic, partition and offset, and its headers as they were)."""

    reason: DeadLetter
    original: InputRecord

    @classmethod
    def parse(cls, record: InputRecord) -> "DeadLetterRecord | None":
        """The dead letter in `record`, or None if it carries no `bus_dlq_*` reason."""
        reason = DeadLetter.from_headers(record.headers)
        if reason is None:
            return None
        original = InputRecord(
            topic=reason.topic,
            partition=reason.partition,
            offset=reason.offset,
            key=record.key,
            value=record.value,
            headers=tuple(original_headers(record.headers)),
        )
        return cls(reason, original)


@dataclass
class _Topic:
    name: str
    partitions: int
    log: list[InputRecord] = field(default_factory=list)  # every partition, in write order
    _next_offsets: list[int] = field(default_factory=list)
    _next_keyless: int = 0

    def __post_init__(self) -> None:
        self._next_offsets = [0] * self.partitions

    def append(self, record: KafkaRecord) -> InputRecord:
        if record.key is not None:
            partition = partition_for(record.key, self.partitions)
        else:
            partition = self._next_keyless
            self._next_keyless = (partition + 1) % self.partitions
        stored = InputRecord(
            topic=self.name,
            partition=partition,
            offset=self._next_offsets[partition],
            key=record.key,
            value=record.value,
            headers=tuple(record.headers),
        )
        self._next_offsets[partition] += 1
        self.log.append(stored)
        return stored


@dataclass
class _Flow:
    built: BuiltFlow
    # Per source topic, how far into its log the flow has read: its committed offsets. The log
    # keeps each partition's order, so one position per topic stands for one per partition.
    positions: dict[str, int] = field(default_factory=dict)


class FlowTestKit:
    """The mediation flows of a flow set on an in-memory transport; see the module docstring."""

    def __init__(
        self,
        flows: FlowSet,
        catalog: SchemaCatalog,
        *,
        only: Sequence[str] = (),
        source: str = "/bus/testing",
        partitions: int | None = None,
    ) -> None:
        """`flows` checked against `catalog` as `bus validate` does (FlowFileError otherwise);
        `only` selects flows as `bus run --only` does; `source` is the ce_source of what
        `publish` sends; `partitions` is the size of every topic not created with
        `create_topic` (default: the files' `topics.partitions`, else 6)."""
        problems = validate_flows(flows, catalog)
        if problems:
            raise FlowFileError(problems)
        self.catalog = catalog
        self.codec = EventCodec(catalog)
        self.source = source
        if partitions is None:
            defaults = flows.topics
            partitions = defaults.partitions if defaults and defaults.partitions else None
        self.partitions = DEFAULT_PARTITIONS if partitions is None else partitions
        if self.partitions < 1:
            raise ConfigError(f"partitions must be at least 1, not {self.partitions}")
        chosen = select(flows, only)
        self._flows = {
            flow.name: _Flow(build_flow(flow, catalog, self.codec))
            for flow in flows.mediation
            if flow.name in chosen
        }
        self._topics: dict[str, _Topic] = {}

    @classmethod
    def load(
        cls,
        paths: Sequence[Path],
        *,
        schemas: Path | SchemaCatalog | None = None,
        only: Sequence[str] = (),
        source: str = "/bus/testing",
        partitions: int | None = None,
    ) -> Self:
        """The flow files at `paths`, with the schema catalog at `schemas` (default:
        $BUS_SCHEMAS_DIR or ./schemas, as the CLI); any problem raises FlowFileError."""
        flows = load_flow_files(paths)
        if isinstance(schemas, SchemaCatalog):
            catalog = schemas
        else:
            catalog = SchemaCatalog.load(schemas or load_settings().schemas_dir)
        return cls(flows, catalog, only=only, source=source, partitions=partitions)

    @property
    def flows(self) -> tuple[str, ...]:
        """The names of the flows that run, in the files' order."""
        return tuple(self._flows)

    # -- in ----------------------------------------------------------------------------------

    def create_topic(self, name: str, partitions: int) -> None:
        """Create a topic of `partitions` partitions, before anything is written to it."""
        if partitions < 1:
            raise ConfigError(f"topic {name!r}: partitions must be at least 1, not {partitions}")
        if name in self._topics:
            raise ConfigError(f"topic {name!r} already exists")
        self._topics[name] = _Topic(name, partitions)

    async def publish(
        self,
        topic: str,
        event_type: str,
        data: Mapping[str, Any] | BaseModel,
        *,
        key: str | None = None,
        subject: str | None = None,
        event_id: str | None = None,
        time: datetime | None = None,
        extensions: Mapping[str, str] | None = None,
        trace: Mapping[str, str] | None = None,
    ) -> Event:
        """As `Publisher.publish`: validate, encode, write; return the event as stored.

        Raises EventValidationError (naming each bad field) before anything is written.
        """
        event = new_event(
            self.catalog, event_type, data, source=self.source, key=key, subject=subject,
            event_id=event_id, time=time, extensions=extensions,
        )  # fmt: skip
        self._write(topic, await self.codec.encode(event, trace))
        return event

    def send_raw(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> InputRecord:
        """Write a record as it is, e.g. one that is not an event; return it as stored."""
        return self._write(topic, KafkaRecord(key=key, value=value, headers=headers))

    # -- processing ---------------------------------------------------------------------------

    async def run(self, *, limit: int = DEFAULT_RUN_LIMIT) -> int:
        """Process until no flow has a record left to read; return how many were processed.

        A flow's outputs are read in the same run by the flows they feed. After processing
        `limit` records, BusError: flows that feed each other in a cycle would never stop. An
        exception the processor lets through (a bug, not a dead letter) propagates, and the
        record is read again by the next run, as a restarted flow reads it again on Kafka.
        """
        processed = 0
        progressed = True
        while progressed:
            progressed = False
            for flow in self._flows.values():
                for topic_name in flow.built.plan.sources:
                    topic = self._topic(topic_name)
                    while (position := flow.positions.get(topic_name, 0)) < len(topic.log):
                        if processed >= limit:
                            raise BusError(
                                f"flows still had records to read after processing {limit}; "
                                "do flows feed each other in a cycle? (raise `limit` if not)"
                            )
                        await self._process(flow, topic.log[position])
                        # Past the record only once its outputs are written, as the runner
                        # commits only after Kafka acknowledged them.
                        flow.positions[topic_name] = position + 1
                        processed += 1
                        progressed = True
        return processed

    async def _process(self, flow: _Flow, record: InputRecord) -> None:
        for write in (await flow.built.processor.handle(record)).writes:
            self._write(write.topic, write.record)

    # -- out ----------------------------------------------------------------------------------

    def records(self, topic: str) -> list[InputRecord]:
        """Every record of `topic` in write order (per partition: offset order); [] if none."""
        found = self._topics.get(topic)
        return list(found.log) if found else []

    async def events(self, topic: str) -> list[Event]:
        """The events of `topic` in write order, decoded as a bus subscriber reads them.

        A record that is not an event raises its EventDecodeError; see `records` for those.
        """
        return [
            (await self.codec.decode(record.key, record.value, record.headers)).event
            for record in self.records(topic)
        ]

    def dead_letters(self, flow: str) -> list[DeadLetterRecord]:
        """The dead letters `flow` wrote to its `dlq` topic, in order (flows may share one)."""
        selected = self._flows.get(flow)
        if selected is None:
            raise ConfigError(
                f"no running flow named {flow!r}; the flows are: {', '.join(self._flows) or 'none'}"
            )
        letters = (
            DeadLetterRecord.parse(record)
            for record in self.records(selected.built.plan.dead_letter_topic)
        )
        return [letter for letter in letters if letter and letter.reason.flow == flow]

    # -- the transport ------------------------------------------------------------------------

    def _topic(self, name: str) -> _Topic:
        found = self._topics.get(name)
        if found is None:
            found = self._topics[name] = _Topic(name, self.partitions)
        return found

    def _write(self, topic: str, record: KafkaRecord) -> InputRecord:
        return self._topic(topic).append(record)
