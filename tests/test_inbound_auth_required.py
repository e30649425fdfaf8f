"""Every endpoint of the inbound HTTP server (REST webhooks, SOAP operations, the publish API)
asks callers who they are, unless the server listens on a loopback address only or the item
says `auth: {anonymous: true}` on purpose: `bus validate` (and so `bus run`) refuses the rest,
naming the file, the item, the key and the fix. A running server with auth refuses anonymous
callers on every route it serves, found from its routes rather than from a list here."""

import asyncio
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bus.events.codec import EventCodec
from bus.flows.loading import load_flow_files
from bus.flows.model import FlowSet
from bus.flows.validation import validate_flows
from bus.inbound.ingest import Ingest
from bus.inbound.server import InboundServer
from bus.plugins import AdapterContext, AdapterRuntime, installed_adapters
from tests.conftest import free_port
from tests.flow_harness import CATALOG, write_flow

WSDL = Path(__file__).parent / "data" / "wsdl" / "crm-notify.wsdl"
PROBLEM = "application/problem+json"
KEY = "inbound-key-7f2c91"
PASSWORD = "inbound-password-3b8e54"
JWT_SECRET = "inbound-jwt-secret-0d9a6e-long-enough-for-hs256"
HMAC_SECRET = "inbound-hmac-secret-51c7aa"
SCHEMA = "com.acme.crm.CustomerChanged"
CUSTOMER_EVENT = """
    event:
      type: com.acme.crm.CustomerChanged
      key: body.id
      map: {customerId: body.id, change: '"UPDATED"', email: body.email, name: body.name,
            changedAt: body.at}
    topic: customers"""
SOAP_EVENT = """
    event:
      type: com.acme.crm.CustomerChanged
      key: body.customerId
      map: {customerId: body.customerId, change: body.change, email: body.email,
            name: body.name, changedAt: body.changedAt}
    topic: customers"""


POLL_EVENT = CUSTOMER_EVENT.replace("body.", "item.")


def flow_text(
    host: str | None,
    *,
    webhook: str = "",
    soap: str = "",
    publish: str = "",
    port: int = 0,
) -> str:
    """A rest webhook, a rest polling item, a soap operation and the publish API, each with
    the `auth` given (a `, auth: ...` suffix, or nothing), on `host` (None: no http section)."""
    http = (
        ""
        if host is None
        else f"""
http:
  host: "{host}"
  port: {port}
  publish:
    events: {{{SCHEMA}: customers}}{publish}
"""
    )
    return f"""{http}
inbound:
  - name: crm-webhook
    rest: {{path: /hooks/crm{webhook}}}{CUSTOMER_EVENT}
  - name: crm-poll
    rest:
      poll:
        {{url: "https://crm.example/api/customers", every: 1m, items: response.items}}{POLL_EVENT}
  - name: crm-notify
    soap: {{path: /soap/crm, wsdl: {WSDL}, operation: NotifyCustomer,
           response: {{Ack: 'true', CustomerId: event.customerId}}{soap}}}{SOAP_EVENT}
"""


def problems_of(tmp_path: Path, text: str) -> tuple[Path, list[str]]:
    path = write_flow(tmp_path, text)
    return path, validate_flows(load_flow_files([path]), CATALOG)


# -- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "bus.internal"])
def test_an_endpoint_without_auth_on_a_network_address_is_refused_naming_file_item_key_and_fix(
    tmp_path: Path, host: str
) -> None:
    path, problems = problems_of(tmp_path, flow_text(host))
    assert len(problems) == 3, "\n".join(problems)  # the polling item takes no calls
    webhook, soap, publish = sorted(problems, key=lambda line: "http.publish" in line)
    assert re.match(rf"{re.escape(str(path))}:\d+:\d+: inbound\[0\]\.rest\.auth: missing", webhook)
    assert "inbound item 'crm-webhook'" in webhook
    assert re.match(rf"{re.escape(str(path))}:\d+:\d+: inbound\[2\]\.soap\.auth: missing", soap)
    assert "inbound item 'crm-notify'" in soap
    assert re.match(rf"{re.escape(str(path))}:\d+:\d+: http\.publish\.auth: missing", publish)
    assert "through the publish API" in publish
    for problem in problems:
        assert f"listens on {host} (http.host), which is not a loopback address" in problem
        # The three fixes: a credential, an explicit opt-in, a loopback host.
        assert "set auth (e.g. auth: {api_key:" in problem
        assert "auth: {anonymous: true} to let anyone call on purpose" in problem
        assert "http.host: 127.0.0.1" in problem


@pytest.mark.parametrize("host", [None, "127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_without_auth_a_loopback_server_is_accepted(tmp_path: Path, host: str | None) -> None:
    assert problems_of(tmp_path, flow_text(host)) == (tmp_path / "flow.yaml", [])


def test_an_explicit_anonymous_opt_in_is_accepted_on_any_address(tmp_path: Path) -> None:
    anyone = ", auth: {anonymous: true}"
    text = flow_text(
        "0.0.0.0", webhook=anyone, soap=anyone, publish="\n    auth: {anonymous: true}"
    )
    assert problems_of(tmp_path, text)[1] == []


def test_a_credential_is_accepted_on_any_address(tmp_path: Path) -> None:
    text = flow_text(
        "0.0.0.0",
        webhook=f", auth: {{api_key: {{keys: [{KEY}]}}}}",
        soap=f", auth: {{wsse: {{users: {{crm: {PASSWORD}}}}}}}",
        publish=f"\n    auth: {{basic: {{users: {{sre: {PASSWORD}}}}}}}",
    )
    assert problems_of(tmp_path, text)[1] == []


@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        (
            "{anonymous: false}",
            "anonymous: expected true (anyone may call, on purpose), found false",
        ),
        ("{anonymous: yes please}", "found 'yes please'"),
        ("{anonymous: {}}", "found a mapping"),
        (
            f"{{anonymous: true, api_key: {{keys: [{KEY}]}}}}",
            "only one of api_key, basic, hmac, jwt, anonymous may be set",
        ),
    ],
)
def test_an_unclear_anonymous_is_refused(tmp_path: Path, auth: str, expected: str) -> None:
    _, problems = problems_of(tmp_path, flow_text("0.0.0.0", webhook=f", auth: {auth}"))
    webhook = [line for line in problems if "inbound[0].rest.auth" in line]
    assert webhook, problems
    assert any(expected in line for line in webhook), webhook
    assert all(KEY not in line for line in problems)


# -- a running server ---------------------------------------------------------------------------

AUTHENTICATED = {
    "webhook": f", auth: {{basic: {{users: {{crm: {PASSWORD}}}}}}}",
    "soap": f", auth: {{wsse: {{users: {{crm: {PASSWORD}}}}}}}",
    "publish": f"\n    auth: {{api_key: {{header: X-Api-Key, keys: [{KEY}]}}}}",
}
MORE_ITEMS = f"""
  - name: crm-keyed
    rest: {{path: "/hooks/{{tenant}}/keyed", auth: {{api_key: {{keys: [{KEY}]}}}}}}{CUSTOMER_EVENT}
  - name: crm-signed
    rest:
      path: /hooks/signed
      auth: {{hmac: {{preset: github, secrets: [{HMAC_SECRET}]}}}}{CUSTOMER_EVENT}
  - name: crm-token
    rest:
      path: /hooks/token
      auth: {{jwt: {{key: {JWT_SECRET}, algorithms: [HS256], audience: bus}}}}{CUSTOMER_EVENT}
  - name: crm-basic-soap
    soap:
      path: /soap/crm-basic
      wsdl: {WSDL}
      operation: NotifyCustomer
      response: {{Ack: 'true', CustomerId: event.customerId}}
      auth: {{basic: {{users: {{crm: {PASSWORD}}}}}}}{SOAP_EVENT}
  - name: status-page
    rest: {{path: /hooks/open, auth: {{anonymous: true}}}}{CUSTOMER_EVENT}
"""
DOCUMENTS = {("GET", "/openapi.json"), ("GET", "/soap/crm"), ("GET", "/soap/crm-basic")}
"""Routes that serve documents (the OpenAPI document, the WSDLs), not calls: no event comes
of them, and callers need them to learn how to call."""
OPEN = {("POST", "/hooks/open")}
"""The routes of items that opted into anonymous callers."""
SOAP_BODY = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>'
    '<n:CustomerNotification xmlns:n="urn:acme:crm:notify">'
    "<n:customerId>c-1</n:customerId><n:change>CREATED</n:change>"
    "<n:email>ada@example.com</n:email><n:name>Ada</n:name>"
    "<n:changedAt>2026-01-01T00:00:00Z</n:changedAt>"
    "</n:CustomerNotification></soap:Body></soap:Envelope>"
)


async def serve_routes(
    flows: FlowSet, session: aiohttp.ClientSession, ingest: Ingest, kafka: str
) -> tuple[list[web.RouteDef], list[AdapterRuntime]]:
    """The routes every installed adapter serves for `flows`, built as `bus run` builds them."""
    context = AdapterContext(flows, CATALOG, EventCodec(CATALOG), ingest, session, kafka)
    runtimes = {name: adapter.runtime(context) for name, adapter in installed_adapters().items()}
    for item in flows.inbound:
        if "poll" not in item.config:  # a poller calls out; it serves nothing
            runtimes[item.adapter].add_inbound(item)
    routes = [route for runtime in runtimes.values() for route in runtime.routes()]
    return routes, list(runtimes.values())


def sample_path(template: str) -> str:
    """A path the route matches: every `{name}` as a schema's full name (the publish API's
    segment), which a tenant segment takes as well."""
    return re.sub(r"\{[^}]+\}", SCHEMA, template)


async def call(
    session: aiohttp.ClientSession, method: str, url: str, route: str
) -> tuple[int, Mapping[str, str], str]:
    if route.startswith("/soap/"):
        headers = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'}
        data: Any = SOAP_BODY.encode()
    else:
        headers = {"Content-Type": "application/json"}
        data = b'{"id": "c-1", "email": "ada@example.com", "name": "Ada", "at": "2026-01-01"}'
    async with asyncio.timeout(30):
        async with session.request(method, url, data=data, headers=headers) as answer:
            return answer.status, answer.headers, await answer.text()


async def test_a_running_server_refuses_anonymous_calls_on_every_route_it_serves(
    tmp_path: Path,
) -> None:
    text = flow_text("0.0.0.0", **AUTHENTICATED, port=free_port()) + MORE_ITEMS
    path, problems = problems_of(tmp_path, text)
    assert problems == []
    flows = load_flow_files([path])
    assert flows.http is not None
    # Kafka is not needed: nothing gets past authentication but the open item, whose 503 (the
    # event cannot be stored) shows that it did get past.
    dead_kafka = f"127.0.0.1:{free_port()}"
    ingest = Ingest(dead_kafka, EventCodec(CATALOG), deadline=1.0)
    async with aiohttp.ClientSession() as session:
        routes, runtimes = await serve_routes(flows, session, ingest, dead_kafka)
        served = {(route.method, route.path) for route in routes if isinstance(route, web.RouteDef)}
        assert len(served) == len(routes)
        server = InboundServer(flows.http.host, flows.http.port, routes)
        await ingest.start()
        await server.start()
        try:
            base = f"http://127.0.0.1:{server.port}"
            refused = sorted(served - DOCUMENTS - OPEN)
            # Every item's route and the publish API's: the enumeration found them all.
            assert {route for _, route in refused} >= {
                "/hooks/crm",
                "/hooks/{tenant}/keyed",
                "/hooks/signed",
                "/hooks/token",
                "/soap/crm",
                "/soap/crm-basic",
            }
            assert any(route.startswith("/events") for _, route in refused), refused
            for method, route in refused:
                status, headers, body = await call(
                    session, method, base + sample_path(route), route
                )
                if route.startswith("/soap/"):
                    # A SOAP caller gets a Fault in its SOAP version; HTTP Basic's also says 401.
                    assert status in (401, 500), (route, status, body)
                    assert headers["Content-Type"].startswith("text/xml"), (route, headers)
                    assert "<faultcode>soap:Client</faultcode>" in body, (route, body)
                    assert "authentication failed" in body, (route, body)
                else:
                    assert status == 401, (method, route, status, body)
                    assert headers["Content-Type"] == PROBLEM, (route, headers)
                    assert '"unauthenticated"' in body or ":unauthenticated" in body, body
                for secret in (KEY, PASSWORD, JWT_SECRET, HMAC_SECRET):
                    assert secret not in body
            for method, route in sorted(OPEN):
                status, _, body = await call(session, method, base + sample_path(route), route)
                assert status == 503, (route, status, body)  # past auth, to storing the event
            for method, route in sorted(DOCUMENTS):
                url = base + route + ("?wsdl" if route.startswith("/soap/") else "")
                async with session.request(method, url) as answer:
                    assert answer.status == 200, route
        finally:
            await server.stop()
            await ingest.stop()
            for runtime in runtimes:
                await runtime.close()


async def test_the_openapi_document_shows_an_anonymous_endpoint_without_security(
    tmp_path: Path,
) -> None:
    text = flow_text("0.0.0.0", **AUTHENTICATED, port=free_port()) + MORE_ITEMS
    flows = load_flow_files([write_flow(tmp_path, text)])
    dead_kafka = f"127.0.0.1:{free_port()}"
    ingest = Ingest(dead_kafka, EventCodec(CATALOG), deadline=1.0)
    async with aiohttp.ClientSession() as session:
        routes, runtimes = await serve_routes(flows, session, ingest, dead_kafka)
        server = InboundServer("127.0.0.1", 0, routes)
        await server.start()
        try:
            async with session.get(server.url + "/openapi.json") as answer:
                document = await answer.json()
        finally:
            await server.stop()
            for runtime in runtimes:
                await runtime.close()
    assert "security" not in document  # no default that an operation would inherit
    open_operation = document["paths"]["/hooks/open"]["post"]
    assert "security" not in open_operation
    assert "401" not in open_operation["responses"]
    for path in ("/hooks/crm", "/hooks/{tenant}/keyed", "/hooks/signed", "/hooks/token"):
        operation = document["paths"][path]["post"]
        assert operation["security"], path
        assert "401" in operation["responses"], path
