"""Log lines: JSON with the hop's fields, and no secret in any line, whatever carries it."""

import asyncio
import base64
import hashlib
import hmac
import io
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote_plus

import aiohttp
import pytest
from aiohttp import web
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bus.events.codec import EventCodec
from bus.events.event import Event
from bus.flows.loading import load_flow_files
from bus.flows.model import LogSettings
from bus.flows.processor import FlowProcessor
from bus.flows.steps import PythonStep
from bus.telemetry.context import current_hop
from bus.telemetry.hop import Hop
from bus.telemetry.hub import Telemetry
from bus.telemetry.logs import configure_logging
from bus.telemetry.metrics import BusMetrics
from bus.telemetry.secrets import MASK, secrets_of
from bus.telemetry.status import StatusBoard
from bus.telemetry.tracing import Tracing
from tests.conftest import free_port
from tests.flow_harness import CATALOG, bus_run_process
from tests.test_events_codec import customer_event
from tests.test_flow_processor import record_of

Format = Literal["json", "text"]
Configure = Callable[..., io.StringIO]
ISO_UTC_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")

log = logging.getLogger("tests.logs")


@pytest.fixture
def configure() -> Iterator[Configure]:
    """`configure(format, secrets=..., level=...)` logs to the returned buffer; the root
    logger is as it was after the test."""
    root = logging.getLogger()
    aiokafka = logging.getLogger("aiokafka")
    handlers, level, aiokafka_level = list(root.handlers), root.level, aiokafka.level

    def to_buffer(
        fmt: Format = "json", secrets: Sequence[str] = (), level: str = "info"
    ) -> io.StringIO:
        stream = io.StringIO()
        configure_logging(
            LogSettings.model_validate({"format": fmt, "level": level}), secrets, stream=stream
        )
        return stream

    yield to_buffer
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(level)
    aiokafka.setLevel(aiokafka_level)
    logging.captureWarnings(False)


@pytest.fixture(params=["json", "text"])
def fmt(request: pytest.FixtureRequest) -> Format:
    chosen: Format = request.param
    return chosen


def hop(**fields: Any) -> Hop:
    defaults: dict[str, Any] = {
        "kind": "mediation",
        "flow": "customer-router",
        "started": 0.0,
        "event_id": "evt-42",
    }
    return Hop(**(defaults | fields))


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


# -- the fields -----------------------------------------------------------------------------------


def test_a_json_line_carries_time_level_logger_message_and_the_hops_fields(
    configure: Configure,
) -> None:
    stream = configure("json")
    token = current_hop.set(hop(trace_id="ab" * 16, span_id="cd" * 8))
    try:
        log.warning("routed %d events", 3, extra={"partition": 2})
    finally:
        current_hop.reset(token)
    (line,) = json_lines(stream)
    assert ISO_UTC_MS.fullmatch(line.pop("time"))
    assert line == {
        "level": "WARNING",
        "logger": "tests.logs",
        "message": "routed 3 events",
        "event_id": "evt-42",
        "flow": "customer-router",
        "trace_id": "ab" * 16,
        "span_id": "cd" * 8,
        "partition": 2,
    }


@pytest.mark.parametrize("traced", [False, True], ids=["untraced", "traced"])
async def test_a_line_logged_inside_a_step_names_it_and_one_after_it_does_not(
    configure: Configure, traced: bool
) -> None:
    stream = configure("json")

    def normalise(event: Event) -> Event:
        log.info("normalising")
        return event

    board = StatusBoard()
    tracing = Tracing.exporting(InMemorySpanExporter()) if traced else Tracing.disabled()
    telemetry = Telemetry(tracing, None, BusMetrics(board), board)
    flow = FlowProcessor(
        flow="customer-router",
        steps=[PythonStep("steps[0].python", normalise)],
        codec=EventCodec(CATALOG),
        to="out",
        dead_letter_topic="customer-router.dlq",
    )
    record = await record_of(customer_event())
    scope = telemetry.consumed("mediation", "customer-router", record, group="bus.customer-router")
    with scope.active():
        handled = await flow.handle(record, scope)
        log.info("handled")
    scope.end()
    assert handled.dead_letter is None
    during, after = json_lines(stream)
    assert (during["message"], during["step"]) == ("normalising", "steps[0].python")
    assert (during["flow"], during["event_id"]) == ("customer-router", "e-1")
    assert after["message"] == "handled"
    assert "step" not in after
    assert scope.hop.step is None  # the hop ended in no step: it did not fail in one


def test_outside_a_hop_a_json_line_has_no_hop_fields(configure: Configure) -> None:
    stream = configure("json")
    log.info("started")
    (line,) = json_lines(stream)
    assert set(line) == {"time", "level", "logger", "message"}


def test_trace_ids_come_from_the_current_span_when_the_hop_has_none(
    configure: Configure,
) -> None:
    stream = configure("json")
    tracer = TracerProvider().get_tracer("tests.logs")  # not the global provider
    token = current_hop.set(hop())
    try:
        with tracer.start_as_current_span("hop") as span:
            log.info("inside a span")
    finally:
        current_hop.reset(token)
    context = span.get_span_context()
    (line,) = json_lines(stream)
    assert line["trace_id"] == trace.format_trace_id(context.trace_id)
    assert line["span_id"] == trace.format_span_id(context.span_id)
    assert line["event_id"] == "evt-42"


def test_an_exception_is_one_field_of_its_json_line(configure: Configure) -> None:
    stream = configure("json")
    try:
        raise ValueError("amount is negative")
    except ValueError:
        log.exception("step failed")
    (line,) = json_lines(stream)
    assert line["message"] == "step failed"
    assert line["exception"].startswith("Traceback (most recent call last):")
    assert line["exception"].endswith("ValueError: amount is negative")


def test_a_text_line_names_the_flow_and_event_when_a_hop_is_under_way(
    configure: Configure,
) -> None:
    stream = configure("text")
    log.info("before")
    token = current_hop.set(hop())
    try:
        log.info("during")
    finally:
        current_hop.reset(token)
    before, during = stream.getvalue().splitlines()
    assert before.endswith(" INFO tests.logs: before")
    assert during.endswith(" INFO tests.logs: during [flow=customer-router event=evt-42]")


def test_configuring_again_replaces_the_handler_and_aiokafka_speaks_at_debug_only(
    configure: Configure,
) -> None:
    configure("json")
    assert logging.getLogger("aiokafka").getEffectiveLevel() == logging.WARNING
    stream = configure("text", level="debug")
    logging.getLogger("aiokafka.consumer").debug("fetching")
    log.debug("once")
    assert stream.getvalue().count("once") == 1
    assert "fetching" in stream.getvalue()
    stream = configure("json", level="warning")
    log.info("not at warning")
    logging.getLogger("aiokafka.consumer").info("rebalancing")
    log.warning("at warning")
    assert [line["message"] for line in json_lines(stream)] == ["at warning"]


# -- redaction ------------------------------------------------------------------------------------

WEBHOOK_SECRET = "whsec-9f3b2c1d"
TOKEN_SECRET = "tok-5e6f7a8b9c"
SOURCE_SECRET = "in-the-source-line-4d2a"
USER, PASSWORD = "alice", "p@ss word/+9"
UNCONFIGURED = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJidXMifQ.c2lnbmF0dXJl"
CONFIGURED = (WEBHOOK_SECRET, TOKEN_SECRET, SOURCE_SECRET, PASSWORD, f"{USER}:{PASSWORD}")


def output(stream: io.StringIO, fmt: Format) -> str:
    """The whole output; JSON lines must also each parse."""
    text = stream.getvalue()
    if fmt == "json":
        assert all(isinstance(line, dict) for line in json_lines(stream))
    return text


def assert_hidden(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text
    assert MASK in text


def _refuse() -> None:
    try:
        raise KeyError(f"no key for {TOKEN_SECRET}")
    except KeyError as cause:
        raise RuntimeError("login refused for in-the-source-line-4d2a") from cause


def test_configured_secrets_are_hidden_in_message_args_exception_traceback_and_extras(
    configure: Configure, fmt: Format
) -> None:
    stream = configure(fmt, CONFIGURED)
    log.info(f"the webhook secret is {WEBHOOK_SECRET}")
    log.warning("logging in with %s failed", PASSWORD)
    try:
        _refuse()
    except RuntimeError:
        log.exception("delivery failed")
    log.error(
        "response",
        extra={"answer": {"echo": [TOKEN_SECRET], WEBHOOK_SECRET: 1}, "cause": KeyError(PASSWORD)},
    )
    text = output(stream, fmt)
    assert_hidden(text, *CONFIGURED)
    # the traceback is all there, with the cause, the message and the source line hidden
    assert "KeyError: 'no key for ***'" in text
    assert "The above exception was the direct cause" in text
    assert 'raise RuntimeError("login refused for ***")' in text.replace('\\"', '"')


def test_configured_secrets_are_hidden_url_encoded_and_as_basic_credentials(
    configure: Configure, fmt: Format
) -> None:
    stream = configure(fmt, CONFIGURED)
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    log.info("posted grant_type=password&username=alice&pass=%s", quote_plus(PASSWORD))
    log.info("sent %s", basic)  # no scheme, no header name: only the configured value tells
    log.info("headers %s", {"Authorization": f"Basic {basic}", "Accept": "application/json"})
    text = output(stream, fmt)
    assert_hidden(text, PASSWORD, quote_plus(PASSWORD), basic, basic.rstrip("="))
    assert "'Accept': 'application/json'" in text.replace('\\"', '"')


def test_long_secrets_and_secrets_that_start_others_are_hidden_whole(
    configure: Configure, fmt: Format
) -> None:
    key = "-----BEGIN PRIVATE KEY-----\n" + "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC" * 100 + "\n-----END"
    many = [f"rotated-key-{index:03d}" for index in range(300)]
    stream = configure(fmt, [key, "hunter22", "hunter22-and-more", *many])
    log.info("key %s; %s; %s; %s", key, "hunter22-and-more", "hunter22!", many[-1])
    text = output(stream, fmt)
    assert_hidden(text, "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC", "BEGIN", "hunter22", many[-1])
    assert "***; ***; ***!; ***" in text


@pytest.mark.parametrize(
    ("line", "kept"),
    [
        (f"sent {{'Authorization': 'Bearer {UNCONFIGURED}', 'Host': 'erp'}}", "'Host': 'erp'"),
        (f"GET /x\r\nAuthorization: Bearer {UNCONFIGURED}\r\nAccept: */*", "Accept: */*"),
        (f"refused Bearer {UNCONFIGURED} (expired)", "(expired)"),
        (f"calling https://svc:{UNCONFIGURED}@erp.example/api", "@erp.example/api"),
        (f"GET /orders?access_token={UNCONFIGURED}&page=2", "&page=2"),
        (f'token answer {{"client_id": "bus", "client_secret": "{UNCONFIGURED}"}}', '"bus"'),
        (f"headers X-Api-Key: {UNCONFIGURED}", "headers X-Api-Key:"),
        (f"Set-Cookie: session={UNCONFIGURED}; Path=/", "Set-Cookie:"),
        (f"form password={UNCONFIGURED}&user=bus", "&user=bus"),
    ],
)
def test_credentials_are_hidden_by_their_shape(
    configure: Configure, fmt: Format, line: str, kept: str
) -> None:
    stream = configure(fmt)
    log.warning("%s", line)
    text = output(stream, fmt)
    shown = json.loads(text)["message"] if fmt == "json" else text
    assert UNCONFIGURED not in shown
    assert MASK in shown
    assert kept in shown


def test_ordinary_text_and_short_secrets_are_left_alone(configure: Configure, fmt: Format) -> None:
    stream = configure(fmt, ["abc"])
    ordinary = (
        "a bearer token's key was refused; Basic authentication is off; "
        "token_url=https://login.example/oauth/token token_type=Bearer; abc"
    )
    log.info(ordinary)
    text = output(stream, fmt)
    shown = json.loads(text)["message"] if fmt == "json" else text.rstrip("\n")
    assert shown.endswith(ordinary)
    assert MASK not in text


# -- the secrets a flow file configures -----------------------------------------------------------

FLOW_WITH_SECRETS = """
kafka:
  schema_registry: https://registry:${REGISTRY_PASSWORD}@registry.example
http:
  publish:
    events: {com.acme.crm.CustomerChanged: crm.changed}
    auth: {api_key: {header: X-Api-Key, keys: ["${PUBLISH_KEY}"]}}
observability:
  logs: {redact: ["${EXTRA_REDACTED}"]}
  admin: {auth: {basic: {users: {ops: "${ADMIN_PASSWORD}"}}}}
inbound:
  - name: crm-webhook
    rest:
      path: /hooks/crm
      auth: {hmac: {preset: github, secrets: ["${HMAC_SECRET}"]}}
    event: {type: com.acme.crm.CustomerChanged, key: body.id, map: {customerId: body.id}}
    topic: crm.changed
  - name: partner
    rest: {path: /hooks/partner, auth: {basic: {users: {alice: "${ALICE_PASSWORD}"}}}}
    event: {type: com.acme.crm.CustomerChanged, map: {customerId: body.id}}
    topic: crm.changed
outbound:
  - name: billing
    from: crm.changed
    rest:
      url: https://billing.example/customers
      auth:
        oauth2:
          token_url: https://login.example/oauth2/token
          client_id: bus client
          client_secret: ${CLIENT_SECRET}
lookups:
  - name: erp-customer
    soap:
      wsdl: erp.wsdl
      operation: GetCustomer
      wsse: {username: bus, password: "${WSSE_PASSWORD}"}
      auth: {bearer: {token: "${ERP_TOKEN}"}}
"""

FLOW_SECRETS = {
    "REGISTRY_PASSWORD": "registry-pw-1a2b",
    "PUBLISH_KEY": "publish-key-3c4d",
    "EXTRA_REDACTED": "customer-ssn-5e6f",
    "ADMIN_PASSWORD": "admin-pw-7a8b",
    "HMAC_SECRET": "hmac-secret-9c0d",
    "ALICE_PASSWORD": "alice-pw-1e2f",
    "CLIENT_SECRET": "client-secret-3a4b",
    "WSSE_PASSWORD": "wsse-pw-5c6d",
    "ERP_TOKEN": "erp-token-7e8f",
}


def test_secrets_of_finds_every_secret_a_flow_file_configures(tmp_path: Path) -> None:
    path = tmp_path / "flow.yaml"
    path.write_text(FLOW_WITH_SECRETS)
    found = secrets_of(load_flow_files([path], FLOW_SECRETS))
    assert set(FLOW_SECRETS.values()) <= found
    assert "alice:alice-pw-1e2f" in found  # as HTTP Basic sends it
    assert "bus+client:client-secret-3a4b" in found  # as OAuth2 form-encodes it first
    for ordinary in ("alice", "bus", "crm.changed", "body.id", "X-Api-Key", "github", "ops"):
        assert ordinary not in found


# -- bus run, end to end --------------------------------------------------------------------------

E2E_HMAC_SECRET = "e2e-webhook-secret-51d0"
E2E_PASSWORD = "e2e-basic-password-7c2e"
E2E_CLIENT_SECRET = "e2e-client-secret-a83f"
E2E_SECRETS = (E2E_HMAC_SECRET, E2E_PASSWORD, E2E_CLIENT_SECRET)
BASIC_PAIR = base64.b64encode(f"bus:{E2E_PASSWORD}".encode()).decode()


class EchoingService:
    """An external system that puts everything it was sent, secrets too, into its errors:
    its token endpoint refuses every client, its API every call (400, not retried)."""

    def __init__(self) -> None:
        self.calls = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/oauth/token", self.token)
        app.router.add_put("/customers/{id}", self.customer)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        described = f"client secret {E2E_CLIENT_SECRET} refused; you sent {dict(form)}"
        return web.json_response(
            {"error": "invalid_client", "error_description": described}, status=401
        )

    async def customer(self, request: web.Request) -> web.Response:
        self.calls += 1
        return web.json_response(
            {
                "error": "rejected",
                "authorization": request.headers.get("Authorization"),
                "detail": f"password {E2E_PASSWORD}, webhook secret {E2E_HMAC_SECRET}",
            },
            status=400,
        )


@pytest.fixture
async def echoing_service() -> AsyncIterator[EchoingService]:
    service = EchoingService()
    await service.start()
    yield service
    await service.stop()


def e2e_flow(run: str) -> str:
    topic = f"logs.customers.{run}"
    return f"""
http:
  port: ${{BUS_HTTP_PORT}}
observability:
  logs: {{format: json, level: info}}
inbound:
  - name: logs-webhook-{run}
    rest:
      path: /hooks/{run}
      auth: {{hmac: {{preset: github, secrets: ["${{LOGS_HMAC_SECRET}}"]}}}}
    event:
      type: com.acme.crm.CustomerChanged
      key: body.customer.id
      map:
        customerId: body.customer.id
        change: body.action.upperAscii()
        email: body.customer.email
        name: body.customer.name
        phone: "null"
        changedAt: body.occurred_at
    topic: {topic}
outbound:
  - name: logs-basic-{run}
    from: {topic}
    rest:
      method: PUT
      url: "${{LOGS_SERVICE}}/customers/{{event.customerId}}"
      auth: {{basic: {{user: bus, password: "${{LOGS_PASSWORD}}"}}}}
    retry: {{attempts: 1}}
  - name: logs-oauth-{run}
    from: {topic}
    rest:
      method: PUT
      url: "${{LOGS_SERVICE}}/customers/{{event.customerId}}"
      auth:
        oauth2:
          token_url: ${{LOGS_SERVICE}}/oauth/token
          client_id: bus
          client_secret: ${{LOGS_CLIENT_SECRET}}
    retry: {{attempts: 1}}
"""


async def post_webhook(url: str, body: bytes, signature: str) -> int:
    async with aiohttp.ClientSession() as session, asyncio.timeout(90):
        while True:  # the server may still be starting
            try:
                async with session.post(
                    url,
                    data=body,
                    headers={"Content-Type": "application/json", "X-Hub-Signature-256": signature},
                ) as answer:
                    return answer.status
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.2)


async def lines_saying(log_file: Path, text: str, count: int) -> list[str]:
    async with asyncio.timeout(90):
        while True:
            written = await asyncio.to_thread(log_file.read_text)
            lines = [line for line in written.splitlines() if text in line]
            if len(lines) >= count:
                return lines
            await asyncio.sleep(0.2)


async def test_bus_run_writes_json_lines_without_a_secret_in_them(
    tmp_path: Path, bootstrap_servers: str, echoing_service: EchoingService
) -> None:
    run = uuid.uuid4().hex[:8]
    flow = tmp_path / "flow.yaml"
    flow.write_text(e2e_flow(run))
    log_file = tmp_path / "bus.log"
    port = free_port()
    body = json.dumps(
        {
            "action": "updated",
            "occurred_at": "2026-11-24T11:59:00Z",
            "customer": {"id": "c-1", "email": "c-1@example.com", "name": "Ada Lovelace"},
        }
    ).encode()
    signature = "sha256=" + hmac.new(E2E_HMAC_SECRET.encode(), body, hashlib.sha256).hexdigest()
    async with bus_run_process(
        flow,
        log_file,
        secrets=E2E_SECRETS,
        KAFKA_BOOTSTRAP_SERVERS=bootstrap_servers,
        BUS_HTTP_PORT=str(port),
        LOGS_HMAC_SECRET=E2E_HMAC_SECRET,
        LOGS_PASSWORD=E2E_PASSWORD,
        LOGS_CLIENT_SECRET=E2E_CLIENT_SECRET,
        LOGS_SERVICE=echoing_service.url,
    ):
        url = f"http://127.0.0.1:{port}/hooks/{run}"
        assert await post_webhook(url, body, "sha256=" + "0" * 64) == 401
        assert await post_webhook(url, body, signature) == 202
        # Both deliveries fail into their DLQs, logging what the service answered.
        dead = await lines_saying(log_file, "dead-lettered", 2)
    assert echoing_service.calls == 1  # the OAuth2 one never got a token
    assert any(MASK in line for line in dead)  # the secrets reached the log call, hidden
    text = await asyncio.to_thread(log_file.read_text)
    for secret in (*E2E_SECRETS, BASIC_PAIR, BASIC_PAIR.rstrip("=")):
        assert secret not in text
    records = [json.loads(line) for line in text.splitlines()]
    assert {"time", "level", "logger", "message"} <= set().union(*records)
    assert all(ISO_UTC_MS.fullmatch(record["time"]) for record in records)
    assert {record["level"] for record in records} >= {"INFO", "WARNING"}
