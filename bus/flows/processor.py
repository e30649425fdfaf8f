"""One record through one flow: decode, apply the steps, encode the outputs — or a dead letter.

Nothing here touches Kafka, so the Kafka runner and the in-memory test kit share it exactly.
Outputs carry their lineage (`bus.events.lineage`). A dead letter's error text is redacted by
the record's hop (`HopScope.redact`): it goes into headers that anyone reading the DLQ sees.
"""

import hashlib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from bus.errors import BusError, EventDecodeError, SchemaRegistryError, TransientDeliveryError
from bus.events.codec import DecodedEvent, EventCodec, KafkaRecord, event_of_headers, record_of
from bus.events.event import Event, now
from bus.events.lineage import child_extensions
from bus.flows.dead_letters import DeadLetter, InputRecord, previous_attempts
from bus.flows.dead_letters import now as utc_now
from bus.flows.steps import Item, Step
from bus.telemetry.hop_scope import HopScope

__all__ = [
    "DROPPED_HEADER",
    "MAX_RECORD_BYTES",
    "FlowProcessor",
    "Handled",
    "Output",
    "RecordTooLargeError",
    "record_size",
]

# Output ids derive from (flow, parent id, position): reprocessing a record after a crash makes
# the same ids, so consumers can drop the duplicates that at-least-once delivery allows.
_IDS = uuid.UUID("6f1d7c1e-3b9a-4f0e-9c55-2d1e8a4b7c30")
_IDS_BYTES = _IDS.bytes
# Kafka's default max.message.bytes is 1 MiB; keep under it with room for the batch framing.
MAX_RECORD_BYTES = 1_000_000
DROPPED_HEADER = "bus_dlq_value_dropped"  # the size of a dead letter's value that was dropped


@dataclass(frozen=True, slots=True)
class Output:
    topic: str
    record: KafkaRecord
    event_id: str | None = None  # the event in `record` (a dead letter: the consumed one's)


@dataclass(frozen=True, slots=True)
class Handled:
    """What to write for one consumed record: its outputs, or its dead letter (and why)."""

    writes: list[Output]
    dead_letter: DeadLetter | None = None


class RecordTooLargeError(BusError):
    """An output (or a dead letter) would exceed what Kafka accepts as one record."""


def record_size(record: KafkaRecord) -> int:
    """A record's size on the wire, near enough to compare with the broker's limit."""
    headers = sum(len(name) + len(value) + 8 for name, value in record.headers)
    return len(record.value) + len(record.key or b"") + headers + 64


_OUTAGES = (SchemaRegistryError, TransientDeliveryError)


def _raise_if_unavailable(error: BaseException) -> None:
    """An outage (the schema registry, a lookup's service) is no fault of the record: fail the
    batch, to be redone after a restart, rather than dead-letter a whole stream."""
    if isinstance(error, _OUTAGES) or isinstance(error.__cause__, _OUTAGES):
        raise error


class _Failed(Exception):  # noqa: N818 -- control flow inside process(), never escapes
    def __init__(self, step: str, error: Exception) -> None:
        self.step = step
        self.error = error


class FlowProcessor:
    def __init__(
        self,
        *,
        flow: str,
        steps: Sequence[Step],
        codec: EventCodec,
        to: str | None,
        dead_letter_topic: str,
        decode: bool = True,
    ) -> None:
        self.flow = flow
        self.decode = decode
        self.dead_letter_topic = dead_letter_topic
        self.steps = steps
        self.codec = codec
        self.to = to
        self.source = f"/bus/flows/{flow}"

    async def handle(self, record: InputRecord, scope: HopScope | None = None) -> Handled:
        """The records to write for `record`: what the Kafka runner and the test kit both do.
        `scope` is the record's mediation hop, which this fills (the runner ends it once the
        writes are acknowledged); without one, the hop is reported nowhere."""
        scope = scope or HopScope.detached("mediation", self.flow)
        attempts = previous_attempts(record.headers) + 1
        outcome = await self.process(record, attempts, scope)
        if not isinstance(outcome, DeadLetter):
            oversized = next((o for o in outcome if record_size(o.record) > MAX_RECORD_BYTES), None)
            if oversized is None:
                scope.hop.outcome = "processed" if outcome else "filtered"
                return Handled(outcome)
            too_big = RecordTooLargeError(
                f"an output to {oversized.topic} would be {record_size(oversized.record)} bytes, "
                f"over the {MAX_RECORD_BYTES}-byte limit of a Kafka record"
            )
            outcome = self._dead_letter(record, "output", too_big, attempts, scope)
        letter = outcome.to_record(record)
        if record_size(letter) > MAX_RECORD_BYTES:
            # Its value is what made it too large; the headers still say where it came from.
            dropped = (DROPPED_HEADER, str(len(letter.value)).encode())
            letter = replace(letter, value=b"", headers=[*letter.headers, dropped])
        hop = scope.hop
        hop.outcome = "dead-lettered"
        hop.step = outcome.step
        hop.error = f"{outcome.error_type}: {outcome.error}"
        return Handled([Output(self.dead_letter_topic, letter, hop.event_id)], outcome)

    async def process(
        self, record: InputRecord, attempts: int = 1, scope: HopScope | None = None
    ) -> list[Output] | DeadLetter:
        scope = scope or HopScope.detached("mediation", self.flow)
        try:
            if self.decode:
                decoded = await self._decode(record, scope)
                event, trace, value = decoded.event, decoded.trace, None
            else:
                (event, trace), value = self._read_headers(record, scope), record.value
            items = await self._apply_steps(event, scope)
            return await self._outputs(event, trace, items, scope, value)
        except _Failed as failed:
            return self._dead_letter(record, failed.step, failed.error, attempts, scope)

    def _dead_letter(
        self, record: InputRecord, step: str, error: Exception, attempts: int, scope: HopScope
    ) -> DeadLetter:
        return DeadLetter(
            error_type=type(error).__name__,
            error=scope.redact(str(error)),  # it travels in headers, to whoever reads the DLQ
            flow=self.flow,
            step=step,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            attempts=attempts,
            time=utc_now(),
        )

    async def _decode(self, record: InputRecord, scope: HopScope) -> DecodedEvent:
        try:
            decoded = await self.codec.decode(record.key, record.value, record.headers)
        except BusError as error:
            scope.event_from_headers(record.headers)
            _raise_if_unavailable(error)
            raise _Failed("decode", error) from error
        scope.event(decoded.event)
        return decoded

    def _read_headers(self, record: InputRecord, scope: HopScope) -> tuple[Event, dict[str, str]]:
        try:
            if not record.value:  # decoding would refuse it too; a delete is not an event
                raise EventDecodeError(
                    "the record has no value (a tombstone?); an event has data, so a flow passes "
                    "on only records with a value"
                )
            event, trace = event_of_headers(record.key, record.headers)
        except BusError as error:
            scope.event_from_headers(record.headers)
            raise _Failed("decode", error) from error
        scope.event(event)
        return event, trace

    async def _apply_steps(self, event: Event, scope: HopScope) -> list[Item]:
        items = [Item(event)]
        for step in self.steps:
            try:
                with scope.step(step.label):
                    items = [produced for item in items for produced in await step.apply(item)]
            except Exception as error:  # any other failure of a record's step dead-letters it
                _raise_if_unavailable(error)
                raise _Failed(step.label, error) from error
        return items

    async def _outputs(
        self,
        parent: Event,
        trace: Mapping[str, str],
        items: list[Item],
        scope: HopScope,
        value: bytes | None,
    ) -> list[Output]:
        """Each item as a record of a new event; `value`, when the flow does not decode, is
        the consumed record's, passed on as it is."""
        trace = scope.carrier(trace)
        outputs: list[Output] = []
        made = now()  # one time for the outputs of one record
        for position, item in enumerate(items):
            topics = item.destinations or ((self.to,) if self.to else ())
            if not topics:
                error = BusError(
                    f"flow {self.flow!r} has no `to` topic and no route chose one for this event"
                )
                raise _Failed("output", error)
            step_event = item.event
            # Built field by field: dataclasses.replace costs twice as much, on every output.
            event = Event(
                type=step_event.type,
                data=step_event.data,
                source=self.source,
                id=output_event_id(self.flow, parent.id, position),
                time=made,
                subject=step_event.subject,
                key=step_event.key,
                extensions=child_extensions(parent, step_event.extensions),
            )
            try:
                if value is None:
                    record = await self.codec.encode(event, trace)
                else:
                    record = record_of(event, value, trace)
            except BusError as error:
                _raise_if_unavailable(error)
                raise _Failed("output", error) from error
            outputs.extend(Output(topic, record, event.id) for topic in topics)
        return outputs


def output_event_id(flow: str, input_id: str, position: int) -> str:
    """The id of a flow's output: deterministic, so a record processed again (after a crash)
    gives the same ids and consumers can drop the duplicates. `position` is the output's 0-based
    place among the outputs of its input record.

    It is `str(uuid.uuid5(_IDS, f"{flow}/{input_id}/{position}"))`, computed without the UUID
    object (a third of the time; every output of every flow pays it)."""
    name = f"{flow}/{input_id}/{position}".encode()
    # SHA-1 is what UUIDv5 is defined with; it names, it does not protect.
    digest = bytearray(hashlib.sha1(_IDS_BYTES + name, usedforsecurity=False).digest())
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    text = digest[:16].hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
