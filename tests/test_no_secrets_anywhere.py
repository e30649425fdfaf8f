"""No secret leaves `bus run`: not in its logs, its answers, its spans, its metrics, its admin
API, its dead letters or its journey records.

Distinct, recognisable secrets are planted in every place a flow file and the environment hold
one (all through `${VAR}`): inbound HMAC secrets, API keys, Basic and WS-Security passwords, a
JWT key; outbound Basic, API key, OAuth2 client secret and WS-Security passwords; a secret in a
URL's userinfo and one in its query; a poller's bearer token; the admin API's password. Then
traffic makes things go wrong: wrong credentials inbound, outside systems that echo everything
they were sent (credentials included) in their 4xx/5xx answers and SOAP faults, a python step
whose exception names a secret, a poller whose items cannot be mapped. Everything `bus run`
wrote or answered is then searched for every secret, raw and in the forms it travels in
(base64, URL-encoded, the Basic header's `user:secret`).
"""

import asyncio
import base64
import contextlib
import gzip
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import aiohttp
import pytest
from aiohttp import encode_basic_auth, web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from bus.flows.loading import load_flow_files
from bus.telemetry.secrets import Redactor, secrets_of
from tests.conftest import free_port
from tests.flow_harness import ROOT, read_all

RUN = uuid.uuid4().hex[:8]
# Each secret names where it was planted, so that a failure says which one leaked; each has
# characters that URL-encoding changes, so that its encoded forms differ from it.
SECRETS = {
    "IN_HMAC_SECRET": f"in-hmac+secret/{RUN}!",
    "IN_API_KEY": f"in-api+key/{RUN}!",
    "IN_BASIC_PASSWORD": f"in-basic+password/{RUN}!",
    "IN_JWT_KEY": f"in-jwt+key/{RUN}!-long-enough-for-hs256-0123456789",
    "IN_WSSE_PASSWORD": f"in-wsse+password/{RUN}!",
    "PUBLISH_KEY": f"publish+key/{RUN}!",
    "OUT_BASIC_PASSWORD": f"out-basic+password/{RUN}!",
    "OUT_API_KEY": f"out-api+key/{RUN}!",
    "OUT_CLIENT_SECRET": f"out-client+secret/{RUN}!",
    "OUT_WSSE_PASSWORD": f"out-wsse+password/{RUN}!",
    # In a URL, as users write them: without the `/` that would end the userinfo or the value.
    "URL_PASSWORD": f"url-user+password!{RUN}",
    "URL_TOKEN": f"url-query+token!{RUN}",
    "POLL_TOKEN": f"poll-bearer+token/{RUN}!",
    "POLL_URL_TOKEN": f"poll-url+token!{RUN}",
    "ADMIN_PASSWORD": f"admin+password/{RUN}!",
}
USERS = {  # the user names sent joined with a secret, as HTTP Basic does
    "IN_BASIC_PASSWORD": "crm",
    "OUT_BASIC_PASSWORD": "bus",
    "OUT_CLIENT_SECRET": "bus-client",
    "URL_PASSWORD": "bus",
    "ADMIN_PASSWORD": "sre",
}
ADMIN = ("sre", SECRETS["ADMIN_PASSWORD"])
MASK = "***"
SPAN_ERROR = 2  # opentelemetry.proto's STATUS_CODE_ERROR
WSDL = ROOT / "examples" / "soap" / "erp.wsdl"
TOPIC = f"secrets.customers.{RUN}"
JOURNEYS = f"secrets.journeys.{RUN}"
CUSTOMER_EVENT = f"""
    event:
      type: com.acme.crm.CustomerChanged
      key: body.id
      map: {{customerId: body.id, change: '"UPDATED"', email: body.email, name: body.name,
            changedAt: body.at}}
    topic: {TOPIC}"""
OUTBOUND_NAMES = ("out-basic", "out-api-key", "out-oauth2", "out-url", "out-soap")
DEAD_LETTERED = (*OUTBOUND_NAMES, "leaky-step", "poll-source")

LEAKY_STEP = """
import os


def fail(event):
    # User code that puts a secret into its error: the bus must not pass it on.
    raise RuntimeError(f"cannot reach the vault with {os.environ['OUT_BASIC_PASSWORD']}")
"""


def flow_text(http_port: int, admin_port: int, collector: str, service: str) -> str:
    host_port = service.removeprefix("http://")
    return f"""
http:
  port: {http_port}
  publish:
    events: {{com.acme.crm.CustomerChanged: {TOPIC}}}
    auth: {{api_key: {{header: X-Publish-Key, keys: ["${{PUBLISH_KEY}}"]}}}}
observability:
  logs: {{format: json, level: info}}
  tracing: {{exporter: otlp, endpoint: "{collector}/v1/traces"}}
  journeys: {{topic: {JOURNEYS}}}
  admin:
    host: 127.0.0.1
    port: {admin_port}
    auth: {{basic: {{users: {{sre: "${{ADMIN_PASSWORD}}"}}}}}}
inbound:
  - name: in-hmac
    rest:
      path: /hooks/hmac
      auth: {{hmac: {{preset: github, secrets: ["${{IN_HMAC_SECRET}}"]}}}}{CUSTOMER_EVENT}
  - name: in-api-key
    rest:
      path: /hooks/key
      auth: {{api_key: {{header: X-Api-Key, keys: ["${{IN_API_KEY}}"]}}}}{CUSTOMER_EVENT}
  - name: in-basic
    rest:
      path: /hooks/basic
      auth: {{basic: {{users: {{crm: "${{IN_BASIC_PASSWORD}}"}}}}}}{CUSTOMER_EVENT}
  - name: in-jwt
    rest:
      path: /hooks/jwt
      auth: {{jwt: {{key: "${{IN_JWT_KEY}}", algorithms: [HS256], audience: bus}}}}{CUSTOMER_EVENT}
  - name: in-soap
    soap:
      path: /soap/erp
      wsdl: {WSDL}
      port: CustomerSoap11
      operation: UpsertCustomer
      response: {{AccountId: '"a-1"', Outcome: '"CREATED"', ProcessedAt: attributes.time}}
      auth: {{wsse: {{users: {{crm: "${{IN_WSSE_PASSWORD}}"}}}}}}
    event:
      type: com.acme.crm.CustomerChanged
      key: body.CustomerId
      map: {{customerId: body.CustomerId, change: '"UPDATED"', email: body.Email,
            name: body.LegalName, changedAt: '"2026-01-01T00:00:00Z"'}}
    topic: {TOPIC}
  - name: poll-source
    rest:
      poll:
        url: "{service}/poll?access_token=${{POLL_URL_TOKEN}}"
        every: 1s
        items: response.body.items
        auth: {{bearer: {{token: "${{POLL_TOKEN}}"}}}}
    event:
      type: com.acme.crm.CustomerChanged
      key: item.id
      map: {{customerId: item.id, change: '"UPDATED"', email: item.missing.email,
            name: '"x"', changedAt: '"2026-01-01T00:00:00Z"'}}
    topic: {TOPIC}
mediation:
  - name: leaky-step
    from: {TOPIC}
    steps:
      - python: leaky_step:fail
    to: secrets.never.{RUN}
outbound:
  - name: out-basic
    from: {TOPIC}
    rest:
      method: PUT
      url: "{service}/e400/{{event.customerId}}"
      auth: {{basic: {{user: bus, password: "${{OUT_BASIC_PASSWORD}}"}}}}
    retry: {{attempts: 1}}
  - name: out-api-key
    from: {TOPIC}
    rest:
      method: PUT
      url: "{service}/e500/{{event.customerId}}"
      auth: {{api_key: {{header: X-Api-Key, key: "${{OUT_API_KEY}}"}}}}
    retry: {{attempts: 1}}
  - name: out-oauth2
    from: {TOPIC}
    rest:
      method: PUT
      url: "{service}/e400/{{event.customerId}}"
      auth:
        oauth2:
          token_url: {service}/oauth/token
          client_id: bus-client
          client_secret: "${{OUT_CLIENT_SECRET}}"
    retry: {{attempts: 1}}
  - name: out-url
    from: {TOPIC}
    rest:
      method: PUT
      url: "http://bus:${{URL_PASSWORD}}@{host_port}/e400/{{event.customerId}}?token=${{URL_TOKEN}}"
    retry: {{attempts: 1}}
  - name: out-soap
    from: {TOPIC}
    soap:
      wsdl: {WSDL}
      port: CustomerSoap11
      operation: UpsertCustomer
      address: {service}/soap
      wsse: {{username: bus, password: "${{OUT_WSSE_PASSWORD}}"}}
    map:
      CustomerId: event.customerId
      LegalName: event.name
      Email: event.email
      BillingAddress: '{{"Line1": "1 Main St", "City": "Berlin", "PostalCode": "10115",
        "Country": "DE"}}'
      SalesRegion: '"EU"'
    retry: {{attempts: 1}}
"""


class EchoingService:
    """Outside systems that put everything they were sent (credentials included) into their
    error answers: a token endpoint refusing every client, an API answering 400 or 500, a SOAP
    service answering a Client fault, and a collection to poll."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/oauth/token", self.token)
        app.router.add_put("/e400/{id}", self.refuse)
        app.router.add_put("/e500/{id}", self.refuse)
        app.router.add_post("/soap", self.soap)
        app.router.add_get("/poll", self.poll)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _count(self, request: web.Request) -> None:
        key = request.path.split("/")[1]
        self.calls[key] = self.calls.get(key, 0) + 1

    async def echo(self, request: web.Request) -> str:
        return json.dumps(
            {
                "you_called": str(request.url),
                "your_headers": dict(request.headers),
                "your_body": (await request.read()).decode(errors="replace"),
            }
        )

    async def token(self, request: web.Request) -> web.Response:
        self._count(request)
        described = f"client refused; {await self.echo(request)}"
        return web.json_response(
            {"error": "invalid_client", "error_description": described}, status=401
        )

    async def refuse(self, request: web.Request) -> web.Response:
        self._count(request)
        status = 500 if request.path.startswith("/e500") else 400
        return web.Response(text=await self.echo(request), status=status)

    async def soap(self, request: web.Request) -> web.Response:
        self._count(request)
        fault = (
            '<?xml version="1.0"?><soap:Envelope xmlns:soap='
            '"http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><soap:Fault>'
            "<faultcode>soap:Client</faultcode>"
            f"<faultstring>refused: {escape(await self.echo(request))}</faultstring>"
            "</soap:Fault></soap:Body></soap:Envelope>"
        )
        return web.Response(text=fault, status=500, content_type="text/xml")

    async def poll(self, request: web.Request) -> web.Response:
        self._count(request)
        # The item is data, not an error: it does not echo the request.
        return web.json_response({"items": [{"id": "p-1"}]})


class Collector:
    """An OTLP/HTTP traces endpoint that keeps every export request as it came."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/traces", self.traces)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.bodies.append(body)
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    def spans(self) -> list[Any]:
        spans = []
        for body in self.bodies:
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    spans.extend(scope.spans)
        return spans


@pytest.fixture
async def echoing_service() -> AsyncIterator[EchoingService]:
    service = EchoingService()
    await service.start()
    yield service
    await service.stop()


@pytest.fixture
async def collector() -> AsyncIterator[Collector]:
    collector = Collector()
    await collector.start()
    yield collector
    await collector.stop()


def forms(secret: str, user: str | None) -> set[str]:
    """The ways `secret` could be written: as it is, URL-encoded, base64 (padded or not), and
    as HTTP Basic sends it with its user."""
    found = {
        secret,
        quote(secret, safe=""),
        quote(secret),
        quote_plus(secret),
        base64.b64encode(secret.encode()).decode().rstrip("="),
        base64.urlsafe_b64encode(secret.encode()).decode().rstrip("="),
        json.dumps(secret)[1:-1],
    }
    if user is not None:
        pair = f"{user}:{secret}".encode()
        found |= {
            base64.b64encode(pair).decode().rstrip("="),
            f"{user}:{secret}",
            f"{user}:{quote(secret, safe='')}",
        }
    return found


FORMS = {name: forms(secret, USERS.get(name)) for name, secret in SECRETS.items()}


def leaks(where: str, text: str | bytes) -> list[str]:
    """Each planted secret found in `text`, in any of its forms, named with the place and shown
    in its context."""
    data = text if isinstance(text, bytes) else text.encode(errors="replace")
    found = []
    for name, forms_of_it in FORMS.items():
        for form in sorted(forms_of_it):
            at = data.find(form.encode())
            if at >= 0:
                context = data[max(0, at - 80) : at + len(form) + 40].decode(errors="replace")
                found.append(f"{where}: {name} as {form!r} in ...{context}...")
    return found


def start_bus_run(
    flow: Path, stdout: Path, stderr: Path, environ: Mapping[str, str]
) -> "subprocess.Popen[bytes]":
    return subprocess.Popen(
        [sys.executable, "-m", "bus", "run", str(flow), "--shutdown-grace", "10"],
        env={
            **os.environ,
            "BUS_SCHEMAS_DIR": str(ROOT / "schemas"),
            "PYTHONPATH": os.pathsep.join([str(flow.parent), str(ROOT)]),
            # Spans leave every 200 ms rather than every 5 s, so that the run can be short.
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            **environ,
        },
        cwd="/",
        stdout=stdout.open("wb"),
        stderr=stderr.open("wb"),
    )


@contextlib.asynccontextmanager
async def bus_run(
    flow: Path, stdout: Path, stderr: Path, environ: Mapping[str, str]
) -> AsyncIterator["subprocess.Popen[bytes]"]:
    """`bus run FLOW` in a process of its own while inside; leaving stops it with SIGTERM."""
    process = start_bus_run(flow, stdout, stderr, environ)
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(process.wait, 60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise


class Client:
    """The test's calls to the running process, every answer kept for the search."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        self.answers: list[tuple[str, int, str]] = []

    async def call(self, method: str, url: str, **options: Any) -> tuple[int, str]:
        async with asyncio.timeout(60):
            async with self.session.request(method, url, **options) as answer:
                text = await answer.text()
                headers = "\n".join(f"{k}: {v}" for k, v in answer.headers.items())
                self.answers.append((f"{method} {url}", answer.status, f"{headers}\n\n{text}"))
                return answer.status, text

    async def until_up(self, url: str, **options: Any) -> None:
        async with asyncio.timeout(90):
            while True:
                try:
                    await self.call("GET", url, **options)
                    return
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.3)


def wsse_header(user: str, password: str) -> str:
    return (
        '<wsse:Security xmlns:wsse="http://docs.oasis-open.org/wss/2004/01/'
        'oasis-200401-wss-wssecurity-secext-1.0.xsd"><wsse:UsernameToken>'
        f"<wsse:Username>{user}</wsse:Username>"
        '<wsse:Password Type="http://docs.oasis-open.org/wss/2004/01/'
        'oasis-200401-wss-username-token-profile-1.0#PasswordText">'
        f"{password}</wsse:Password></wsse:UsernameToken></wsse:Security>"
    )


def soap_call(header: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">'
        f"<soap:Header>{header}</soap:Header><soap:Body>"
        '<e:UpsertCustomer xmlns:e="urn:acme:erp:customers"><e:CustomerId>c-9'
        "</e:CustomerId></e:UpsertCustomer></soap:Body></soap:Envelope>"
    ).encode()


async def drive_traffic(client: Client, base: str) -> None:
    """Wrong credentials on every inbound kind, and two good events that go out to fail."""
    customer = {"id": "c-1", "email": "ada@example.com", "name": "Ada", "at": "2026-01-01"}
    body = json.dumps(customer).encode()
    json_headers = {"Content-Type": "application/json"}
    wrong = [
        ("/hooks/hmac", {"X-Hub-Signature-256": "sha256=" + "0" * 64}),
        ("/hooks/key", {"X-Api-Key": "not-the-key"}),
        ("/hooks/basic", {"Authorization": encode_basic_auth("crm", "guess")}),
        ("/hooks/jwt", {"Authorization": "Bearer not.a.token"}),
        ("/events/com.acme.crm.CustomerChanged", {"X-Publish-Key": "not-the-key"}),
        # A caller sending a real secret where it does not belong: refused without an echo.
        ("/hooks/key", {"X-Api-Key": SECRETS["PUBLISH_KEY"]}),
        (
            "/hooks/basic",
            {"Authorization": encode_basic_auth("crm", SECRETS["OUT_BASIC_PASSWORD"])},
        ),
    ]
    for path, headers in wrong:
        status, _ = await client.call(
            "POST", base + path, data=body, headers={**json_headers, **headers}
        )
        assert status == 401, path
    soap_headers = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'}
    for password in ("guess", SECRETS["OUT_WSSE_PASSWORD"]):
        status, text = await client.call(
            "POST",
            base + "/soap/erp",
            data=soap_call(wsse_header("crm", password)),
            headers=soap_headers,
        )
        assert status == 500, text
        assert "authentication failed" in text, text
    # Good credentials: the events go out, and every delivery fails.
    status, text = await client.call(
        "POST",
        base + "/hooks/key",
        data=body,
        headers={**json_headers, "X-Api-Key": SECRETS["IN_API_KEY"]},
    )
    assert status == 202, text
    status, text = await client.call(
        "POST",
        base + "/events/com.acme.crm.CustomerChanged",
        json={
            "customerId": "c-2",
            "change": "UPDATED",
            "email": "bob@example.com",
            "name": "Bob",
            "changedAt": "2026-01-01T00:00:00Z",
        },
        headers={"X-Publish-Key": SECRETS["PUBLISH_KEY"]},
    )
    assert status == 202, text


async def wait_for_letters(client: Client, admin: str, auth: Mapping[str, str]) -> None:
    """Until every item that should have dead-lettered has (the admin API counts them)."""
    async with asyncio.timeout(120):
        while True:
            status, text = await client.call("GET", admin + "/dlq", headers=auth)
            assert status == 200, text
            counts = {queue["flow"]: queue["letters"] or 0 for queue in json.loads(text)["queues"]}
            if all(counts.get(name, 0) >= 1 for name in DEAD_LETTERED):
                return
            await asyncio.sleep(1)


async def read_admin(client: Client, admin: str, auth: Mapping[str, str]) -> None:
    """Every admin answer that could show a secret: items, metrics, each letter."""
    for path in ("/flows", "/metrics", "/readyz", "/dlq"):
        await client.call("GET", admin + path, headers=auth)
    for name in DEAD_LETTERED:
        await client.call("GET", f"{admin}/flows/{name}", headers=auth)
        status, text = await client.call("GET", f"{admin}/dlq/{name}", headers=auth)
        assert status == 200, text
        for letter in json.loads(text)["letters"]:
            path = f"/dlq/{name}/{letter['partition']}/{letter['offset']}"
            status, text = await client.call("GET", admin + path, headers=auth)
            assert status == 200, text
    # Wrong admin credentials: the refusal must not quote what was expected.
    await client.call(
        "GET",
        admin + "/flows",
        headers={"Authorization": encode_basic_auth("sre", "guess")},
    )


def records_text(records: Iterable[Any]) -> bytes:
    parts = []
    for record in records:
        parts.append(record.key or b"")
        parts.append(record.value or b"")
        for name, value in record.headers:
            parts.append(name.encode() + b": " + (value or b""))
    return b"\n".join(parts)


async def test_no_planted_secret_is_found_in_anything_bus_run_writes_or_answers(
    tmp_path: Path,
    bootstrap_servers: str,
    echoing_service: EchoingService,
    collector: Collector,
) -> None:
    http_port, admin_port = free_port(), free_port()
    flow = tmp_path / "flow.yaml"
    flow.write_text(flow_text(http_port, admin_port, collector.url, echoing_service.url))
    (tmp_path / "leaky_step.py").write_text(LEAKY_STEP)
    stdout, stderr = tmp_path / "stdout.log", tmp_path / "stderr.log"
    base, admin = f"http://127.0.0.1:{http_port}", f"http://127.0.0.1:{admin_port}"
    auth = {"Authorization": encode_basic_auth(*ADMIN)}
    environ = {**SECRETS, "KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers}
    async with aiohttp.ClientSession() as session:
        client = Client(session)
        async with bus_run(flow, stdout, stderr, environ) as process:
            try:
                await client.until_up(admin + "/healthz", headers=auth)
                await client.until_up(base + "/openapi.json")
                await drive_traffic(client, base)
                await wait_for_letters(client, admin, auth)
                await read_admin(client, admin, auth)
            except BaseException:
                print(stderr.read_text()[-20000:])  # what the failure needs
                raise
        assert process.returncode == 0, stderr.read_text()[-20000:]

    found: list[str] = []
    found += leaks("stdout", stdout.read_bytes())
    found += leaks("stderr", stderr.read_bytes())
    for call, status, text in client.answers:
        found += leaks(f"answer to {call} ({status})", text)
    assert collector.spans(), "no span was exported"
    for index, body in enumerate(collector.bodies):
        found += leaks(f"OTLP export {index}", body)
    errors: dict[str, list[str]] = {}
    for name in DEAD_LETTERED:
        records = await read_all(bootstrap_servers, f"{name}.dlq", quiet=2.0)
        assert records, f"nothing in {name}.dlq"
        found += leaks(f"{name}.dlq", records_text(records))
        errors[name] = [dict(record.headers)["bus_dlq_error"].decode() for record in records]
    # The secrets did reach the bus, in what it passed on, and were hidden there: the test
    # searches what was at risk, not texts that never held a secret.
    for name in ("out-basic", "out-api-key", "out-url", "out-soap", "leaky-step"):
        assert any(MASK in error for error in errors[name]), (name, errors[name])
    assert any("cannot reach the vault with ***" in error for error in errors["leaky-step"])
    assert MASK in stderr.read_text()
    assert echoing_service.calls.get("e400", 0) >= 4, echoing_service.calls  # basic, url
    assert echoing_service.calls.get("e500", 0) >= 2, echoing_service.calls
    spans = collector.spans()
    assert any(span.status.code == SPAN_ERROR for span in spans)
    assert any(event.name == "exception" for span in spans for event in span.events)
    journeys = await read_all(bootstrap_servers, JOURNEYS, quiet=2.0)
    assert journeys, "no journey record"
    found += leaks(JOURNEYS, records_text(journeys))
    assert echoing_service.calls.get("soap", 0) >= 1, echoing_service.calls
    assert echoing_service.calls.get("oauth", 0) >= 1, echoing_service.calls
    assert echoing_service.calls.get("poll", 0) >= 1, echoing_service.calls
    assert not found, "\n".join(sorted(set(found)))


@pytest.mark.parametrize(
    ("url", "password"),
    [
        ("http://bus:pass+word!1@erp.example/x", "pass+word!1"),
        ("http://bus:pa/ss?wo#rd@erp.example/x", "pa/ss?wo#rd"),  # ${VAR} substituted as it is
        ("https://bus:p%2Fw%40rd@erp.example/x", "p/w@rd"),  # and decoded, as Basic sends it
    ],
)
def test_the_password_of_a_url_is_a_secret_even_where_it_breaks_the_url(
    tmp_path: Path, url: str, password: str
) -> None:
    flow = tmp_path / "flow.yaml"
    flow.write_text(
        f"""
outbound:
  - name: out
    from: t
    rest: {{method: PUT, url: "{url}"}}
"""
    )
    secrets = secrets_of(load_flow_files([flow]))
    assert password in secrets
    hidden = Redactor(secrets).redact(f"cannot call {url}: refused")
    assert password not in hidden
    assert "pa/ss" not in hidden


def test_a_port_and_an_at_sign_in_the_path_make_no_secret(tmp_path: Path) -> None:
    flow = tmp_path / "flow.yaml"
    flow.write_text(
        """
outbound:
  - name: out
    from: t
    rest: {method: PUT, url: "https://erp.example:8443/people/ada@example.com"}
"""
    )
    assert secrets_of(load_flow_files([flow])) == set()
