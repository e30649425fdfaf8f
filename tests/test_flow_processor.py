"""The transport-free record processor: limits and failures that must not become dead letters."""

from pathlib import Path
from typing import Any

import pytest

from bus.errors import SchemaRegistryError
from bus.events.codec import EventCodec
from bus.events.event import Event
from bus.flows.dead_letters import InputRecord
from bus.flows.processor import DROPPED_HEADER, MAX_RECORD_BYTES, FlowProcessor
from bus.flows.steps import PythonStep
from bus.telemetry.hub import Telemetry
from bus.telemetry.metrics import BusMetrics
from bus.telemetry.secrets import MASK, Redactor
from bus.telemetry.status import StatusBoard
from bus.telemetry.tracing import Tracing
from tests.flow_harness import CATALOG
from tests.test_events_codec import astuple, customer_event


async def record_of(event: Event) -> InputRecord:
    key, value, headers = astuple(await EventCodec(CATALOG).encode(event))
    return InputRecord(topic="in", partition=0, offset=7, key=key, value=value, headers=headers)


def processor(function: Any, codec: EventCodec | None = None) -> FlowProcessor:
    return FlowProcessor(
        flow="limits",
        steps=[PythonStep("steps[0].python", function)],
        codec=codec or EventCodec(CATALOG),
        to="out",
        dead_letter_topic="limits.dlq",
    )


async def test_an_oversized_output_is_dead_lettered() -> None:
    def inflate(event: Event) -> Event:
        huge = {**event.data, "attributes": {"blob": "x" * (MAX_RECORD_BYTES + 10)}}
        return Event(type=event.type, data=huge, key=event.key)

    handled = await processor(inflate).handle(await record_of(customer_event()))
    assert handled.dead_letter is not None
    assert handled.dead_letter.step == "output"
    assert handled.dead_letter.error_type == "RecordTooLargeError"
    assert [write.topic for write in handled.writes] == ["limits.dlq"]


async def test_an_oversized_dead_letter_keeps_its_headers_but_not_its_value(tmp_path: Path) -> None:
    big = customer_event()
    big = Event(type=big.type, data={**big.data, "name": "y" * MAX_RECORD_BYTES}, key=big.key)

    def fail(event: Event) -> Event:
        raise ValueError("no")

    handled = await processor(fail).handle(await record_of(big))
    [letter] = handled.writes
    headers = dict(letter.record.headers)
    assert letter.record.value == b""
    assert int(headers[DROPPED_HEADER]) > MAX_RECORD_BYTES
    assert headers["bus_dlq_step"] == b"steps[0].python"


class RegistryDown:
    async def register(self, subject: str, schema: str) -> int:
        raise SchemaRegistryError("cannot reach the schema registry at http://registry:8081")

    async def schema_by_id(self, schema_id: int) -> str:
        raise SchemaRegistryError("cannot reach the schema registry at http://registry:8081")


async def test_a_registry_outage_fails_the_batch_instead_of_dead_lettering() -> None:
    codec = EventCodec(CATALOG, RegistryDown())
    with pytest.raises(SchemaRegistryError, match="cannot reach"):
        await processor(lambda event: event, codec).handle(await record_of(customer_event()))


KEY = "ak-7d2e91c4f05b"


def refuse_quoting_credentials(event: Event) -> Event:
    raise ValueError(f"refused key {KEY} (sent with Authorization: Bearer eyJhbGciOi.x.y)")


async def test_a_dead_letter_s_error_hides_the_process_s_secrets() -> None:
    board = StatusBoard()
    telemetry = Telemetry(
        Tracing.disabled(), None, BusMetrics(board), board, redactor=Redactor([KEY])
    )
    record = await record_of(customer_event())
    scope = telemetry.consumed("mediation", "limits", record, group="bus.limits")
    handled = await processor(refuse_quoting_credentials).handle(record, scope)
    scope.end()
    [letter] = handled.writes
    error = dict(letter.record.headers)["bus_dlq_error"].decode()
    assert f"refused key {MASK} (sent with Authorization: {MASK}" in error
    assert "eyJhbGciOi" not in error
    assert handled.dead_letter is not None
    assert KEY not in handled.dead_letter.error
    assert scope.hop.error is not None
    assert KEY not in scope.hop.error
    assert MASK in scope.hop.error


async def test_without_telemetry_a_dead_letter_hides_credentials_known_by_their_shape() -> None:
    handled = await processor(refuse_quoting_credentials).handle(await record_of(customer_event()))
    assert handled.dead_letter is not None
    assert f"Authorization: {MASK}" in handled.dead_letter.error  # the test kit's case
    assert KEY in handled.dead_letter.error  # no one told it this one is a secret
