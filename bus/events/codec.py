"""Events to Kafka records and back: CloudEvents headers, partition key, framed Avro value."""

import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from fastavro import schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError
from fastavro.schema import SchemaParseException, parse_schema

from bus.errors import (
    BadHeaderError,
    EventDecodeError,
    EventValidationError,
    SchemaRegistryError,
    TruncatedEventError,
    UnknownWriterSchemaError,
)
from bus.events import cloudevents, decimals, framing
from bus.events.canonical import Schema, fingerprint, self_contained
from bus.events.catalog import SchemaCatalog, SchemaVersion
from bus.events.event import Event
from bus.events.validation import explain_invalid

decimals.install()


class SchemaIds(Protocol):
    """The part of a Confluent-compatible registry client that the codec needs."""

    async def register(self, subject: str, schema: str) -> int: ...

    async def schema_by_id(self, schema_id: int) -> str: ...


@dataclass(frozen=True, slots=True)
class KafkaRecord:
    """A record as aiokafka sends and receives it."""

    key: bytes | None
    value: bytes
    headers: Sequence[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class DecodedEvent:
    """An event read from Kafka, with how it was written."""

    event: Event
    writer: SchemaVersion
    schema_id: int | None = None  # the registry id, when the value was Confluent-framed
    trace: Mapping[str, str] = field(default_factory=dict)


class EventCodec:
    """Encodes with the catalog's current schema; decodes with writer→reader resolution.

    With a registry, values are Confluent-framed and schemas are registered under the subject
    of their full name (RecordNameStrategy), so one topic can carry several event types.
    """

    def __init__(self, catalog: SchemaCatalog, registry: SchemaIds | None = None) -> None:
        self.catalog = catalog
        self.registry = registry
        self._registry_writers: dict[int, SchemaVersion] = {}
        self._registry_ids: dict[bytes, int] = {}  # the id each of our writers got

    async def encode(self, event: Event, trace: Mapping[str, str] | None = None) -> KafkaRecord:
        writer = self.catalog.current(event.type)
        if self.registry is None:
            prefix = framing.single_object(writer.fingerprint)
        else:
            prefix = framing.confluent(await self._registry_id(writer))
        # The Avro writer ignores keys the schema lacks: without this, a misspelt field (say, an
        # enrich step's `into`) would vanish without a word.
        extra = event.data.keys() - writer.field_names
        if extra:
            raise EventValidationError(
                writer.full_name,
                [
                    (name, "not a field of the schema (it would be dropped)")
                    for name in sorted(extra)
                ],
            )
        buffer = io.BytesIO()
        buffer.write(prefix)
        try:
            schemaless_writer(buffer, writer.parsed, dict(event.data))
        except (ValueError, TypeError, AttributeError, KeyError, OverflowError) as error:
            problems = explain_invalid(writer, event.data) or [("", str(error))]
            raise EventValidationError(writer.full_name, problems) from error
        return record_of(event, buffer.getvalue(), trace, type_name=writer.full_name)

    async def decode(
        self,
        key: bytes | None,
        value: bytes,
        headers: Sequence[tuple[str, bytes]],
        reader: str | None = None,
    ) -> DecodedEvent:
        """The event in a record, read as `reader` (default: the catalog's current version of
        the type it was written with)."""
        attributes, trace = cloudevents.from_headers(headers)
        frame = framing.read_frame(value)
        writer = await self._writer(frame)
        if writer.full_name != attributes.type:
            raise EventDecodeError(
                f"ce_type says {attributes.type!r} but the value was written with schema "
                f"{writer.full_name!r}; the record is inconsistent"
            )
        if reader is None and not self.catalog.has_current(writer.full_name):
            reading = writer  # known only to the registry: read it as it was written
        else:
            reading = self.catalog.current(reader or writer.full_name)
        data = _read_body(value, frame.body_offset, writer, reading)
        partition_key = _key_text(key)
        event = Event(
            type=reading.full_name,
            data=data,
            source=attributes.source,
            id=attributes.id,
            time=attributes.time,
            subject=attributes.subject,
            key=partition_key,
            extensions=attributes.extensions,
        )
        return DecodedEvent(event=event, writer=writer, schema_id=frame.schema_id, trace=trace)

    async def _registry_id(self, writer: SchemaVersion) -> int:
        schema_id = self._registry_ids.get(writer.fingerprint)
        if schema_id is None:
            assert self.registry is not None  # noqa: S101 -- only called with a registry
            schema_id = await self.registry.register(writer.full_name, writer.to_json())
            self._registry_ids[writer.fingerprint] = schema_id
        return schema_id

    async def _writer(self, frame: framing.Frame) -> SchemaVersion:
        if frame.fingerprint is not None:
            writer = self.catalog.by_fingerprint(frame.fingerprint)
            if writer is None:
                raise UnknownWriterSchemaError(
                    f"no schema with fingerprint {frame.fingerprint.hex()} (CRC-64-AVRO, "
                    f"little-endian) in {self.catalog.root}; the producer wrote with a schema "
                    "this reader lacks: add its release from schemas/history, or upgrade"
                )
            return writer
        assert frame.schema_id is not None  # noqa: S101 -- read_frame sets one of the two
        return await self._registry_writer(frame.schema_id)

    async def _registry_writer(self, schema_id: int) -> SchemaVersion:
        known = self._registry_writers.get(schema_id)
        if known is not None:
            return known
        if self.registry is None:
            raise UnknownWriterSchemaError(
                f"the value is Confluent-framed (schema id {schema_id}) but no schema registry "
                "is configured; set the registry URL to read it"
            )
        try:
            text = await self.registry.schema_by_id(schema_id)
        except SchemaRegistryError as error:
            raise UnknownWriterSchemaError(
                f"cannot get writer schema id {schema_id} from the registry: {error}"
            ) from error
        named: dict[str, Schema] = {}
        try:
            schema = self_contained(parse_schema(json.loads(text), named_schemas=named), named)
        except (ValueError, TypeError, KeyError, SchemaParseException) as error:
            raise UnknownWriterSchemaError(
                f"schema id {schema_id} from the registry is not a valid Avro schema: {error}"
            ) from error
        if not isinstance(schema, dict) or schema.get("type") != "record":
            raise UnknownWriterSchemaError(
                f"schema id {schema_id} from the registry is not a record schema; events are "
                "records"
            )
        # The same schema may be in the catalog; prefer its entry, which knows its version.
        writer = self.catalog.by_fingerprint(fingerprint(schema))
        if writer is None:
            writer = SchemaVersion.of(schema, version=0, source=f"registry id {schema_id}")
        self._registry_writers[schema_id] = writer
        return writer


def _read_body(
    value: bytes, offset: int, writer: SchemaVersion, reader: SchemaVersion
) -> dict[str, Any]:
    body = io.BytesIO(value)
    body.seek(offset)
    resolve = None if reader.fingerprint == writer.fingerprint else reader.parsed
    try:
        data = schemaless_reader(body, writer.parsed, resolve)
    except SchemaResolutionError as error:
        raise EventDecodeError(
            f"cannot read {writer.full_name} v{writer.version} as {reader.full_name} "
            f"v{reader.version}: {error}"
        ) from error
    except (
        EOFError,
        IndexError,
        ValueError,
        OverflowError,
        UnicodeDecodeError,
        MemoryError,
    ) as error:
        raise TruncatedEventError(
            f"the Avro body of {writer.full_name} v{writer.version} is truncated or malformed "
            f"({type(error).__name__}: {error or 'ran out of bytes'}) after {body.tell()} of "
            f"{len(value)} bytes"
        ) from error
    if body.tell() != len(value):
        raise TruncatedEventError(
            f"{len(value) - body.tell()} bytes left over after the Avro body of "
            f"{writer.full_name} v{writer.version}; expected the value to end there"
        )
    if not isinstance(data, dict):
        raise EventDecodeError(f"{writer.full_name} is not a record schema; events are records")
    return data


def record_of(
    event: Event,
    value: bytes,
    trace: Mapping[str, str] | None = None,
    *,
    type_name: str | None = None,
) -> KafkaRecord:
    """The record of `event` whose data is already encoded as `value`: its key, and its
    attributes (its type named `type_name`, when given) and trace context as headers."""
    attributes = cloudevents.Attributes(
        id=event.id,
        source=event.source,
        type=type_name or event.type,
        time=event.time,
        subject=event.subject,
        content_type=cloudevents.AVRO_CONTENT_TYPE,
        extensions=event.extensions,
    )
    return KafkaRecord(
        key=event.key.encode() if event.key is not None else None,
        value=value,
        headers=cloudevents.to_headers(attributes, trace),
    )


def event_of_headers(
    key: bytes | None, headers: Sequence[tuple[str, bytes]]
) -> tuple[Event, dict[str, str]]:
    """The event a record's key and headers describe, its data left undecoded (empty), and its
    trace context: what a flow with `decode: false` works on. Its outputs say their value is
    Avro, so a record that says otherwise is refused here, as decoding would refuse it."""
    attributes, trace = cloudevents.from_headers(headers)
    if attributes.content_type not in (None, cloudevents.AVRO_CONTENT_TYPE):
        raise BadHeaderError(
            f"content-type is {attributes.content_type!r}; bus events are "
            f"{cloudevents.AVRO_CONTENT_TYPE}, and a flow that does not decode passes on only those"
        )
    event = Event(
        type=attributes.type,
        data={},
        source=attributes.source,
        id=attributes.id,
        time=attributes.time,
        subject=attributes.subject,
        key=_key_text(key),
        extensions=attributes.extensions,
    )
    return event, trace


def _key_text(key: bytes | None) -> str | None:
    if key is None:
        return None
    try:
        return key.decode()
    except UnicodeDecodeError as error:
        raise EventDecodeError(f"record key {key[:40]!r} is not UTF-8 text") from error
