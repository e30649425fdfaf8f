"""One trace per journey, on the real broker: inbound REST → mediation → outbound REST.

The flows run in this process (`run_flows`) with a `Telemetry` whose spans go to the SDK's
in-memory exporter; the caller, the bus and the sink talk over real sockets, and the events go
through the test broker. A webhook call carrying a `traceparent` must come out as one trace:

    caller ← POST /hooks (SERVER) ← send <topic> (PRODUCER) ← process <topic> (CONSUMER, mediation)
        ├─ steps[0].transform (INTERNAL)
        └─ process <topic> (CONSUMER, outbound) ← call <item> (CLIENT) → the sink's traceparent
"""

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client.parser import text_string_to_metric_families

from bus.events.event import Event
from bus.events.publisher import Publisher
from bus.flows.dlq import read_letters, replay
from bus.flows.loading import load_flow_files
from bus.flows.model import TracingSettings
from bus.flows.runtime import run_flows
from bus.flows.validation import validate_flows
from bus.inbound.server import InboundServer
from bus.telemetry.hop import Hop
from bus.telemetry.hub import Telemetry
from bus.telemetry.metrics import BusMetrics
from bus.telemetry.secrets import MASK, Redactor, secrets_of
from bus.telemetry.status import StatusBoard
from bus.telemetry.tracing import Tracing
from tests.conftest import free_port
from tests.flow_harness import CATALOG, customer_webhook, headers_of, read_records, write_flow
from tests.rest_sink import CLIENT_ID, CLIENT_SECRET, RestSink

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


class RecordedMetrics(BusMetrics):
    """Real metrics that also keep every hop that ended, for the test to read."""

    def __init__(self, board: StatusBoard) -> None:
        super().__init__(board)
        self.hops: list[Hop] = []

    def observe(self, hop: Hop) -> None:
        super().observe(hop)
        self.hops.append(hop)


@pytest.fixture
async def sink() -> AsyncIterator[RestSink]:
    sink = RestSink(token_lifetime=300)
    await sink.start()
    yield sink
    await sink.stop()


class Journey:
    """The flow file's topics and items, unique to one test."""

    def __init__(self, topic_name: Callable[[str], str]) -> None:
        run = uuid.uuid4().hex[:8]
        self.inbound, self.mediation, self.outbound = (
            f"trace-{role}-{run}" for role in ("hook", "upserts", "sync")
        )
        self.changed, self.upserts, self.synced = (
            topic_name(purpose) for purpose in ("changed", "upserts", "synced")
        )
        self.port = free_port()

    def flow_file(self, folder: Path, sink: RestSink) -> Path:
        return write_flow(
            folder,
            f"""
http: {{port: {self.port}}}
{customer_webhook(self.inbound, self.changed)}
mediation:
  - name: {self.mediation}
    from: {self.changed}
    to: {self.upserts}
    steps:
      - transform:
          to: com.acme.erp.CustomerUpsertRequest
          map:
            customerId: event.customerId
            legalName: event.name
            email: event.email
            billingAddress: event.address
            salesRegion: '"EU"'
            requestedAt: attributes.time
outbound:
  - name: {self.outbound}
    from: {self.upserts}
    rest:
      method: PUT
      url: "{sink.url}/customers/{{event.customerId}}"
      auth:
        oauth2: {{token_url: "{sink.url}/oauth/token", client_id: {CLIENT_ID},
                  client_secret: {CLIENT_SECRET}}}
    map: {{email: event.email, name: event.legalName}}
    reply:
      type: com.acme.erp.CustomerUpsertResult
      topic: {self.synced}
      map:
        customerId: event.customerId
        erpAccountId: response.body.account
        outcome: '"CREATED"'
        processedAt: response.body.updated_at
    retry: {{attempts: 2, backoff: {{initial: 100ms, max: 200ms}}}}
""",
        )

    @contextlib.asynccontextmanager
    async def running(
        self, path: Path, bootstrap_servers: str, telemetry: Telemetry
    ) -> AsyncIterator[None]:
        flows = load_flow_files([path])
        assert validate_flows(flows, CATALOG) == []
        stop = asyncio.Event()
        task = asyncio.create_task(
            run_flows(
                flows,
                CATALOG,
                bootstrap_servers=bootstrap_servers,
                stop=stop,
                telemetry=telemetry,
            )
        )
        try:
            yield
        finally:
            stop.set()
            assert await asyncio.wait_for(task, 60) == []

    async def post(self, customer: str, traceparent: str | None) -> str:
        """The webhook call for `customer`, once the server listens; the stored event's id."""
        body = {
            "id": customer,
            "email": f"{customer}@example.com",
            "name": "Ada Lovelace",
            "address": {"line1": "1 Way", "city": "Berlin", "postalCode": "10115", "country": "DE"},
            "at": "2026-11-24T11:59:00Z",
        }
        headers = {"traceparent": traceparent} if traceparent else {}
        url = f"http://127.0.0.1:{self.port}/hooks/customers"
        async with aiohttp.ClientSession() as session, asyncio.timeout(60):
            while True:
                try:
                    async with session.post(url, json=body, headers=headers) as answer:
                        assert answer.status == 202, await answer.text()
                        return str((await answer.json())["id"])
                except aiohttp.ClientConnectionError:  # the server is not listening yet
                    await asyncio.sleep(0.1)


async def hops_until(
    metrics: RecordedMetrics, done: Callable[[list[Hop]], bool], within: float = 60.0
) -> list[Hop]:
    async with asyncio.timeout(within):
        while not done(metrics.hops):  # noqa: ASYNC110 -- hops end in the flows' own tasks
            await asyncio.sleep(0.05)
    return metrics.hops


def ended(kind: str, outcome: str, count: int = 1) -> Callable[[list[Hop]], bool]:
    return lambda hops: sum(h.kind == kind and h.outcome == outcome for h in hops) >= count


def one(spans: Sequence[ReadableSpan], kind: SpanKind, name: str | None = None) -> ReadableSpan:
    found = [s for s in spans if s.kind is kind and (name is None or s.name == name)]
    assert len(found) == 1, [(s.name, s.kind) for s in spans]
    return found[0]


def parent_of(span: ReadableSpan) -> int:
    assert span.parent is not None, span.name
    return span.parent.span_id


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    own: int = span.context.span_id
    return own


def samples(metrics: BusMetrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The values of a metric's samples, by their sorted labels."""
    text = metrics.exposition()[0].decode()
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


async def test_a_webhook_call_becomes_one_trace_through_mediation_and_delivery(
    tmp_path: Path,
    bootstrap_servers: str,
    topic_name: Callable[[str], str],
    sink: RestSink,
) -> None:
    journey = Journey(topic_name)
    exporter = InMemorySpanExporter()
    board = StatusBoard()
    metrics = RecordedMetrics(board)
    telemetry = Telemetry(Tracing.exporting(exporter), None, metrics, board)
    path = journey.flow_file(tmp_path, sink)
    bad_trace = uuid.uuid4().hex
    async with journey.running(path, bootstrap_servers, telemetry):
        event_id = await journey.post("c-1", f"00-{CALLER_TRACE}-{CALLER_SPAN}-01")
        bad_id = await journey.post("bad-2", f"00-{bad_trace}-{CALLER_SPAN}-01")
        await hops_until(metrics, ended("outbound", "delivered"))
        await hops_until(metrics, ended("outbound", "dead-lettered"))
        upserts = await read_records(bootstrap_servers, journey.upserts, 2, within=30)
        [reply] = await read_records(bootstrap_servers, journey.synced, 1, within=30)
    # The flows stopped: the letter sent back stays where the replay put it.
    [stored] = await read_letters(bootstrap_servers, f"{journey.outbound}.dlq")
    assert await replay(bootstrap_servers, [stored], telemetry=telemetry)
    await telemetry.close()

    spans = [
        s for s in exporter.get_finished_spans() if s.context.trace_id == int(CALLER_TRACE, 16)
    ]
    server = one(spans, SpanKind.SERVER)
    producer = one(spans, SpanKind.PRODUCER)
    consumers = [s for s in spans if s.kind is SpanKind.CONSUMER]
    mediation = next(s for s in consumers if attributes(s)["bus.flow"] == journey.mediation)
    outbound = next(s for s in consumers if attributes(s)["bus.flow"] == journey.outbound)
    step = one(spans, SpanKind.INTERNAL, "steps[0].transform")
    client = one(spans, SpanKind.CLIENT)

    # One trace: the caller's, continued hop by hop.
    assert len(spans) == 6, [(s.name, s.kind) for s in spans]
    assert parent_of(server) == int(CALLER_SPAN, 16)
    assert parent_of(producer) == span_id(server)
    assert parent_of(mediation) == span_id(producer)
    assert parent_of(step) == span_id(mediation)
    assert parent_of(outbound) == span_id(mediation)
    assert parent_of(client) == span_id(outbound)

    # The sink was called with the client span's context.
    [call] = sink.delivered("c-1")
    assert call.headers["traceparent"] == f"00-{CALLER_TRACE}-{span_id(client):016x}-01"

    # Semantic conventions, and which event each span is about.
    assert server.name == "POST /hooks/customers"
    assert attributes(server) | {
        "http.request.method": "POST",
        "http.route": "/hooks/customers",
        "url.path": "/hooks/customers",
        "http.response.status_code": 202,
    } == attributes(server)
    assert producer.name == f"send {journey.changed}"
    assert attributes(producer) | {
        "messaging.system": "kafka",
        "messaging.operation.type": "send",
        "messaging.destination.name": journey.changed,
        "messaging.message.id": event_id,
        "bus.event.id": event_id,
        "bus.event.type": "com.acme.crm.CustomerChanged",
        "bus.root_id": event_id,
        "bus.flow": journey.inbound,
        "bus.outcome": "accepted",
    } == attributes(producer)
    assert {"messaging.destination.partition.id", "messaging.kafka.offset"} <= attributes(
        producer
    ).keys()
    assert mediation.name == f"process {journey.changed}"
    assert attributes(mediation) | {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.destination.name": journey.changed,
        "messaging.consumer.group.name": f"bus.{journey.mediation}",
        "messaging.kafka.message.key": "c-1",
        "messaging.message.id": event_id,
        "bus.event.id": event_id,
        "bus.root_id": event_id,
        "bus.outcome": "processed",
    } == attributes(mediation)
    assert attributes(step)["bus.step"] == "steps[0].transform"
    upsert = next(r for r in upserts if r.key == b"c-1")
    upsert_headers = headers_of(upsert)
    assert upsert_headers["ce_parentid"] == event_id
    assert upsert_headers["ce_rootid"] == event_id
    assert upsert_headers["traceparent"] == f"00-{CALLER_TRACE}-{span_id(mediation):016x}-01"
    assert attributes(outbound) | {
        "messaging.destination.name": journey.upserts,
        "messaging.consumer.group.name": f"bus.{journey.outbound}",
        "bus.event.id": upsert_headers["ce_id"],
        "bus.parent_id": event_id,
        "bus.root_id": event_id,
        "bus.outcome": "delivered",
        "bus.attempts": 1,
        "http.response.status_code": 201,
    } == attributes(outbound)
    assert client.name == f"call {journey.outbound}"
    assert attributes(client) | {
        "http.request.method": "PUT",
        "url.full": f"{sink.url}/customers/c-1",
        "server.address": "127.0.0.1",
        "http.response.status_code": 201,
    } == attributes(client)
    assert not any(s.status.status_code is StatusCode.ERROR for s in spans)

    # The reply joins the journey too.
    reply_headers = headers_of(reply)
    assert reply_headers["ce_parentid"] == upsert_headers["ce_id"]
    assert reply_headers["ce_rootid"] == event_id
    assert reply_headers["traceparent"] == f"00-{CALLER_TRACE}-{span_id(outbound):016x}-01"

    # A record that fails into the DLQ: its hop span says so, in its own trace.
    failed = [s for s in exporter.get_finished_spans() if s.context.trace_id == int(bad_trace, 16)]
    dead = next(
        s
        for s in failed
        if s.kind is SpanKind.CONSUMER and attributes(s)["bus.flow"] == journey.outbound
    )
    assert dead.status.status_code is StatusCode.ERROR
    assert "PermanentDeliveryError" in (dead.status.description or "")
    assert attributes(dead) | {
        "bus.outcome": "dead-lettered",
        "bus.step": "call",
        "bus.root_id": bad_id,
        "http.response.status_code": 400,
        "error.type": "PermanentDeliveryError",
    } == attributes(dead)
    [letter_at] = attributes(dead)["bus.outputs"]
    assert letter_at.startswith(f"{journey.outbound}.dlq[")
    refused = one(failed, SpanKind.CLIENT)
    assert parent_of(refused) == span_id(dead)
    assert refused.status.status_code is StatusCode.ERROR

    # The hops say the same: where the outputs and the dead letter landed.
    [mediated] = [h for h in metrics.hops if h.kind == "mediation" and h.event_id == event_id]
    assert mediated.trace_id == CALLER_TRACE
    assert mediated.span_id == f"{span_id(mediation):016x}"
    [output] = mediated.outputs
    assert (output.event_id, output.topic) == (upsert_headers["ce_id"], journey.upserts)
    assert (output.partition, output.offset) == (upsert.partition, upsert.offset)
    [dead_hop] = [h for h in metrics.hops if h.outcome == "dead-lettered"]
    assert dead_hop.trace_id == bad_trace
    [letter] = dead_hop.outputs
    assert letter.topic == f"{journey.outbound}.dlq"
    assert letter.partition is not None
    assert letter.offset is not None
    assert letter_at == f"{letter.topic}[{letter.partition}]@{letter.offset}"

    # Its replay continues the letter's trace, and the record sent back continues the replay's.
    [replayed] = [h for h in metrics.hops if h.kind == "replay"]
    assert (replayed.flow, replayed.outcome) == (journey.outbound, "replayed")
    assert (replayed.event_id, replayed.root_id) == (dead_hop.event_id, bad_id)
    assert (replayed.topic, replayed.partition, replayed.offset) == (
        letter.topic,
        letter.partition,
        letter.offset,
    )
    [back] = replayed.outputs
    assert back.topic == journey.upserts
    resent = next(
        r
        for r in await read_records(bootstrap_servers, journey.upserts, 3, within=30)
        if (r.partition, r.offset) == (back.partition, back.offset)
    )
    replaying = next(
        s
        for s in exporter.get_finished_spans()
        if s.context.trace_id == int(bad_trace, 16)
        and attributes(s).get("bus.outcome") == "replayed"
    )
    assert replaying.kind is SpanKind.PRODUCER
    assert replaying.name == f"send {journey.upserts}"
    bad_mediation = next(
        s
        for s in failed
        if s.kind is SpanKind.CONSUMER and attributes(s)["bus.flow"] == journey.mediation
    )
    assert parent_of(replaying) == span_id(bad_mediation)  # the letter kept its record's context
    assert headers_of(resent)["traceparent"] == f"00-{bad_trace}-{span_id(replaying):016x}-01"
    assert headers_of(resent)["ce_id"] == dead_hop.event_id

    # The servers and the delivery runner measured each request and call.
    assert samples(metrics, "bus_inbound_requests_total") == {
        (("method", "POST"), ("route", "/hooks/customers"), ("status", "202")): 2.0
    }
    assert samples(metrics, "bus_outbound_calls_total") == {
        (("flow", journey.outbound), ("status", "201")): 1.0,
        (("flow", journey.outbound), ("status", "400")): 1.0,
    }


async def test_with_exporter_none_no_span_is_made_and_trace_headers_pass_through(
    tmp_path: Path,
    bootstrap_servers: str,
    topic_name: Callable[[str], str],
    sink: RestSink,
) -> None:
    journey = Journey(topic_name)
    board = StatusBoard()
    metrics = RecordedMetrics(board)
    tracing = Tracing.from_settings(TracingSettings(exporter="none"))
    telemetry = Telemetry(tracing, None, metrics, board)
    path = journey.flow_file(tmp_path, sink)
    upstream = {
        "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01",
        "tracestate": "acme=7",
    }
    async with (
        journey.running(path, bootstrap_servers, telemetry),
        Publisher(bootstrap_servers, CATALOG, source="/crm") as publisher,
    ):
        await journey.post("c-3", f"00-{CALLER_TRACE}-{CALLER_SPAN}-01")
        published = await publisher.publish(
            journey.changed,
            "com.acme.crm.CustomerChanged",
            {
                "customerId": "c-4",
                "change": "UPDATED",
                "email": "c-4@example.com",
                "name": "Ada Lovelace",
                "address": {"line1": "1 Way", "city": "Paris", "postalCode": "1", "country": "FR"},
                "changedAt": datetime(2026, 11, 24, tzinfo=UTC),
            },
            key="c-4",
            trace=upstream,
        )
        await hops_until(metrics, ended("outbound", "delivered", count=2))
        upserts = await read_records(bootstrap_servers, journey.upserts, 2, within=30)
        replies = await read_records(bootstrap_servers, journey.synced, 2, within=30)

    assert tracing.tracer is None
    # Every kind of hop ran, and none had a span.
    assert {h.kind for h in metrics.hops} == {"inbound", "mediation", "outbound"}
    assert all(h.trace_id is None and h.span_id is None for h in metrics.hops)
    # Nothing was injected into the outbound calls...
    assert [call for call in sink.calls if "traceparent" in call.headers] == []
    assert {call.path for call in sink.calls} == {"/customers/c-3", "/customers/c-4"}
    # ...and the records downstream of a traced one carry its context as it came.
    upsert = headers_of(next(r for r in upserts if r.key == b"c-4"))
    reply = headers_of(next(r for r in replies if r.key == b"c-4"))
    for headers in (upsert, reply):
        assert {name: headers[name] for name in upstream} == upstream
    assert upsert["ce_rootid"] == reply["ce_rootid"] == published.id
    # An untraced webhook call adds no trace context of its own.
    assert "traceparent" not in headers_of(next(r for r in upserts if r.key == b"c-3"))


# -- secrets in errors ----------------------------------------------------------------------------

API_KEY = "ak-7d2e91c4f05b"
"""The outbound's configured key: plain text, nothing about it looks like a credential."""


async def refuse_quoting_the_key(event: Event) -> Event:
    """A step whose error quotes the key (as a library's error might quote its arguments)."""
    if event.data["customerId"].startswith("step-"):
        raise ValueError(f"the lookup refused key {API_KEY}")
    return event


@pytest.fixture
async def echoing_sink() -> AsyncIterator[str]:
    """An external system refusing every call with a 400 whose body quotes the key it got."""

    async def refuse(request: web.Request) -> web.Response:
        key = request.headers.get("X-Api-Key", "")
        return web.json_response({"error": f"key {key} may not write customers"}, status=400)

    app = web.Application()
    app.router.add_put("/customers/{id}", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def test_a_secret_quoted_by_errors_reaches_no_hop_span_or_dead_letter(
    tmp_path: Path,
    bootstrap_servers: str,
    topic_name: Callable[[str], str],
    echoing_sink: str,
) -> None:
    run = uuid.uuid4().hex[:8]
    mediation, outbound = f"leak-upserts-{run}", f"leak-sync-{run}"
    changed, upserts = topic_name("changed"), topic_name("upserts")
    path = write_flow(
        tmp_path,
        f"""
mediation:
  - name: {mediation}
    from: {changed}
    to: {upserts}
    steps:
      - python: tests.test_tracing_on_kafka:refuse_quoting_the_key
      - transform:
          to: com.acme.erp.CustomerUpsertRequest
          map:
            customerId: event.customerId
            legalName: event.name
            email: event.email
            billingAddress: event.address
            salesRegion: '"EU"'
            requestedAt: attributes.time
outbound:
  - name: {outbound}
    from: {upserts}
    rest:
      method: PUT
      url: "{echoing_sink}/customers/{{event.customerId}}"
      auth: {{api_key: {{header: X-Api-Key, key: {API_KEY}}}}}
    map: {{email: event.email}}
    retry: {{attempts: 1}}
""",
    )
    flows = load_flow_files([path])
    assert validate_flows(flows, CATALOG) == []
    exporter = InMemorySpanExporter()
    board = StatusBoard()
    metrics = RecordedMetrics(board)
    telemetry = Telemetry(
        Tracing.exporting(exporter), None, metrics, board, redactor=Redactor(secrets_of(flows))
    )
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_flows(
            flows, CATALOG, bootstrap_servers=bootstrap_servers, stop=stop, telemetry=telemetry
        )
    )
    try:
        async with Publisher(bootstrap_servers, CATALOG, source="/crm") as publisher:
            for customer in ("call-1", "step-2"):
                await publisher.publish(
                    changed,
                    "com.acme.crm.CustomerChanged",
                    {
                        "customerId": customer,
                        "change": "UPDATED",
                        "email": f"{customer}@example.com",
                        "name": "Ada Lovelace",
                        "address": {
                            "line1": "1",
                            "city": "Berlin",
                            "postalCode": "1",
                            "country": "DE",
                        },
                        "changedAt": datetime(2026, 11, 24, tzinfo=UTC),
                    },
                    key=customer,
                )
        await hops_until(metrics, ended("outbound", "dead-lettered"))
        await hops_until(metrics, ended("mediation", "dead-lettered"))
        letters = [
            *await read_records(bootstrap_servers, f"{outbound}.dlq", 1, within=30),
            *await read_records(bootstrap_servers, f"{mediation}.dlq", 1, within=30),
        ]
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 60) == []
    await telemetry.close()

    # The errors did quote the key, and it was hidden: in the hops (the journey records)...
    dead = [h for h in metrics.hops if h.outcome == "dead-lettered"]
    assert {(h.kind, h.step) for h in dead} == {
        ("outbound", "call"),
        ("mediation", "steps[0].python"),
    }
    for hop in dead:
        assert MASK in (hop.error or ""), hop.error
        assert API_KEY not in json.dumps(hop.as_record())
    # ...in every span: status descriptions, exception events, attributes...
    spans = exporter.get_finished_spans()
    refused = one(spans, SpanKind.CLIENT)
    assert refused.status.description is not None
    assert f"key {MASK} may not" in refused.status.description
    [step] = [s for s in spans if s.name == "steps[0].python" and s.events]  # step-2's
    [exception] = [e for e in step.events if e.name == "exception"]
    recorded = dict(exception.attributes or {})
    assert f"ValueError('the lookup refused key {MASK}')" in recorded["exception.message"]
    assert f"ValueError: the lookup refused key {MASK}" in recorded["exception.stacktrace"]
    assert [s.name for s in spans if API_KEY in s.to_json()] == []
    # ...and in the dead letters' headers.
    for letter in letters:
        assert MASK in headers_of(letter)["bus_dlq_error"]
        assert [name for name, value in letter.headers if API_KEY.encode() in value] == []


# -- the inbound server ---------------------------------------------------------------------------


class FailingMetrics(BusMetrics):
    """Metrics with a bug: every sample raises."""

    def observe(self, hop: Hop) -> None:
        raise RuntimeError("a metrics bug")

    def inbound_request(self, route: str, method: str, status: int, seconds: float) -> None:
        raise RuntimeError("a metrics bug")


@contextlib.asynccontextmanager
async def serving(telemetry: Telemetry) -> AsyncIterator[str]:
    """An inbound server with one route answering any method with 200, at the URL yielded."""

    async def answer(request: web.Request) -> web.Response:
        return web.Response(text="fine")

    server = InboundServer("127.0.0.1", 0, [web.route("*", "/things", answer)], telemetry=telemetry)
    await server.start()
    try:
        yield f"{server.url}/things"
    finally:
        await server.stop()


async def test_a_method_outside_http_s_standard_ones_is_measured_and_traced_as_other() -> None:
    exporter = InMemorySpanExporter()
    board = StatusBoard()
    metrics = BusMetrics(board)
    telemetry = Telemetry(Tracing.exporting(exporter), None, metrics, board)
    async with serving(telemetry) as url, aiohttp.ClientSession() as session:
        for method in ("PURGE", "PROPFIND", "GET"):  # the parser knows these
            async with session.request(method, url) as answer:
                assert answer.status == 200
    assert samples(metrics, "bus_inbound_requests_total") == {
        (("method", "_OTHER"), ("route", "/things"), ("status", "200")): 2.0,
        (("method", "GET"), ("route", "/things"), ("status", "200")): 1.0,
    }
    spans = exporter.get_finished_spans()
    assert sorted(s.name for s in spans) == ["GET /things", "HTTP /things", "HTTP /things"]
    purge = next(s for s in spans if attributes(s).get("http.request.method_original") == "PURGE")
    assert attributes(purge)["http.request.method"] == "_OTHER"


async def test_failing_metrics_change_no_answer_and_are_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    board = StatusBoard()
    telemetry = Telemetry(Tracing.disabled(), None, FailingMetrics(board), board)
    async with serving(telemetry) as url, aiohttp.ClientSession() as session:
        for _ in range(3):
            async with session.post(url) as answer:
                assert (answer.status, await answer.text()) == (200, "fine")
    scope = telemetry.hop("inbound", "things", span_name="send", span_kind=SpanKind.PRODUCER)
    scope.end()  # a hop's report is guarded the same way
    assert telemetry.metrics_failures == 4
    logged = [r for r in caplog.records if r.name == "bus.telemetry.hub"]
    assert [r.levelname for r in logged] == ["ERROR"]
    assert logged[0].exc_info is not None


# -- closing --------------------------------------------------------------------------------------


class StuckExporter(SpanExporter):
    """A collector that does not answer until told to: the export blocks its thread."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.release.wait(10)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.release.set()


async def test_closing_waits_a_bounded_time_for_spans_and_never_blocks_the_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    exporter = StuckExporter()
    tracing = Tracing.exporting(exporter, BatchSpanProcessor(exporter))
    telemetry = Telemetry(tracing, None, BusMetrics(StatusBoard()), StatusBoard())
    with telemetry.hop("inbound", "things", span_name="send", span_kind=SpanKind.PRODUCER):
        pass
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    ticking = asyncio.create_task(tick())
    started = time.monotonic()
    try:
        await tracing.close(within=0.5)
    finally:
        ticking.cancel()
        exporter.release.set()  # the flush left in its thread may end now
    assert 0.5 <= time.monotonic() - started < 2.0
    assert ticks >= 10  # the loop went on while the spans were being flushed
    [lost] = [r for r in caplog.records if r.name == "bus.telemetry.tracing"]
    assert lost.levelname == "WARNING"
    assert "not exported within 0.5 s" in lost.getMessage()
