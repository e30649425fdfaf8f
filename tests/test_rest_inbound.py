"""Inbound REST on the real broker: webhooks, the publish API and /openapi.json, over real sockets.

One `bus run` (in this process, through run_flows) serves every endpoint of the flow file below;
each test calls it with aiohttp and reads what reached Kafka. Every error is checked for its
status, its problem+json body and that nothing was stored.
"""

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from openapi_spec_validator import validate as validate_openapi

from adapters.rest.plugin import RestRuntime
from bus.events.codec import EventCodec
from bus.flows.loading import load_flow_files
from bus.inbound.ingest import Ingest
from bus.inbound.server import InboundServer
from bus.plugins import AdapterContext
from tests.conftest import free_port
from tests.flow_harness import CATALOG, decode, read_all, running_flows, write_flow

WEBHOOKS = Path(__file__).parent / "data" / "webhooks"
STRIPE_BODY = (WEBHOOKS / "stripe" / "customer.created.event.json").read_bytes()
GITHUB_BODY = (WEBHOOKS / "github" / "push.payload.json").read_bytes()
SHOPIFY_BODY = json.dumps(
    json.loads((WEBHOOKS / "shopify" / "orders-create.metadata.json").read_bytes())["response"],
    separators=(",", ":"),
    ensure_ascii=False,
).encode()
STRIPE_SECRET = "whsec_inbound_test_81c2"
GITHUB_SECRET = "github-inbound-secret-5e0a"
SHOPIFY_SECRET = "shpss_inbound_secret_77d1"
API_KEY = "inbound-api-key-3b8f"
PUBLISH_KEY = "publish-api-key-9d20"
PASSWORD = "inbound-password-4c1e"
PROBLEM = "application/problem+json"

PRIVATE_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
JWK = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(PRIVATE_KEY.public_key()))

CUSTOMER = {
    "id": "c-42",
    "kind": "CREATED",
    "email": "ada@example.com",
    "name": "Ada Lovelace",
    "at": "2026-11-24T10:00:00Z",
}
CUSTOMER_MAP = """
        customerId: body.id
        change: body.kind
        email: body.email
        name: body.name
        changedAt: body.at
        attributes: >-
          {"channel": has(query.channel) ? query.channel : "none", "tenant": path.tenant,
           "agent": headers["user-agent"]}
"""


def flow_text(port: int, jwks_url: str, topic: str) -> str:
    return f"""
x-simple: &simple
  customerId: body.id
  change: '"UPDATED"'
  email: body.email
  name: body.name
  changedAt: body.at
http:
  port: {port}
  publish:
    events: {{com.acme.crm.CustomerChanged: {topic}}}
    auth: {{api_key: {{header: X-Api-Key, keys: [{PUBLISH_KEY}]}}}}
inbound:
  - name: customers
    rest: {{path: "/hooks/{{tenant}}/customers", max_body: 4KiB}}
    event:
      type: com.acme.crm.CustomerChanged
      key: body.id
      map: {CUSTOMER_MAP}
    topic: {topic}
  - name: big
    rest: {{path: /big, max_body: 2MiB}}
    event: {{type: com.acme.crm.CustomerChanged, map: *simple}}
    topic: {topic}
  - name: keyed
    rest: {{path: /keyed, auth: {{api_key: {{header: X-Api-Key, keys: [{API_KEY}]}}}}}}
    event: {{type: com.acme.crm.CustomerChanged, map: *simple}}
    topic: {topic}
  - name: keyed-query
    rest: {{path: /keyed-query, auth: {{api_key: {{query: api_key, keys: [{API_KEY}]}}}}}}
    event: {{type: com.acme.crm.CustomerChanged, map: *simple}}
    topic: {topic}
  - name: basic
    rest: {{path: /basic, auth: {{basic: {{users: {{crm: {PASSWORD}}}}}}}}}
    event: {{type: com.acme.crm.CustomerChanged, map: *simple}}
    topic: {topic}
  - name: stripe
    rest: {{path: /stripe, auth: {{hmac: {{preset: stripe, secrets: [{STRIPE_SECRET}]}}}}}}
    event:
      type: com.acme.crm.CustomerChanged
      key: body.data.object.id
      map:
        customerId: body.data.object.id
        change: '"CREATED"'
        email: '"unknown@example.com"'
        name: body.data.object.name
        changedAt: int(body.created) * 1000
    topic: {topic}
  - name: github
    rest: {{path: /github, auth: {{hmac: {{preset: github, secrets: [{GITHUB_SECRET}]}}}}}}
    event:
      type: com.acme.crm.CustomerChanged
      map:
        customerId: body.pusher.name
        change: '"UPDATED"'
        email: body.pusher.email
        name: body.pusher.name
        changedAt: '1700000000000'

    topic: {topic}
  - name: shopify
    rest: {{path: /shopify, auth: {{hmac: {{preset: shopify, secrets: [{SHOPIFY_SECRET}]}}}}}}
    event:
      type: com.acme.crm.CustomerChanged
      map:
        customerId: string(body.id)
        change: '"UPDATED"'
        email: body.email
        name: body.name
        changedAt: '1700000000000'

    topic: {topic}
  - name: jwt
    rest:
      path: /jwt
      auth:
        jwt:
          jwks_url: "{jwks_url}"
          issuer: https://idp.test
          audience: bus
          scopes: [events.write]
    event: {{type: com.acme.crm.CustomerChanged, map: *simple}}
    topic: {topic}
"""


class Bus:
    """The running bus as the tests call it."""

    def __init__(self, url: str, topic: str, session: aiohttp.ClientSession) -> None:
        self.url = url
        self.topic = topic
        self.session = session

    async def post(
        self, path: str, body: Any = None, *, raw: bytes | None = None, **options: Any
    ) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
        headers = {"Content-Type": "application/json", **options.pop("headers", {})}
        data = options.pop("data", raw if raw is not None else json.dumps(body).encode())
        async with self.session.post(
            self.url + path, data=data, headers=headers, **options
        ) as answer:
            text = await answer.text()
            parsed = json.loads(text) if text else None
            if answer.status >= 400:
                assert answer.content_type == PROBLEM, text
                assert parsed["status"] == answer.status
                assert parsed["type"].startswith("tag:bus.dev,2026:problem:")
                assert parsed["title"]
                assert parsed["detail"]
            return answer.status, parsed, answer.headers


@pytest.fixture(scope="module")
async def jwks_url() -> AsyncIterator[str]:
    async def keys(_: web.Request) -> web.Response:
        return web.json_response({"keys": [{**JWK, "kid": "k1", "alg": "RS256", "use": "sig"}]})

    app = web.Application()
    app.router.add_get("/jwks.json", keys)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/jwks.json"
    await runner.cleanup()


@pytest.fixture(scope="module")
async def bus(
    bootstrap_servers: str, jwks_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Bus]:
    port = free_port()
    topic = f"rest-inbound-{port}"
    path = write_flow(tmp_path_factory.mktemp("inbound"), flow_text(port, jwks_url, topic))
    async with running_flows(path, bootstrap_servers), aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{port}"
        async with asyncio.timeout(30):
            while True:
                try:
                    async with session.get(url + "/openapi.json") as answer:
                        if answer.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
        yield Bus(url, topic, session)


async def events_with_ids(bootstrap_servers: str, topic: str, ids: set[str]) -> list[Any]:
    """The stored events among `ids` (waits for all of them)."""
    async with asyncio.timeout(30):
        while True:
            events = [e for e in await decode(await read_all(bootstrap_servers, topic, 1.0))]
            found = [e for e in events if e.id in ids]
            if {e.id for e in found} >= ids:
                return found
            await asyncio.sleep(0.2)


async def stored_count(bootstrap_servers: str, topic: str) -> int:
    return len(await read_all(bootstrap_servers, topic, 1.0))


# -- the happy path -----------------------------------------------------------------------------


async def test_a_webhook_becomes_an_event_only_after_kafka_has_it(
    bus: Bus, bootstrap_servers: str
) -> None:
    status, body, _ = await bus.post(
        "/hooks/acme/customers?channel=web", CUSTOMER, headers={"User-Agent": "crm/1.0"}
    )
    assert status == 202
    (event,) = await events_with_ids(bootstrap_servers, bus.topic, {body["id"]})
    assert event.type == "com.acme.crm.CustomerChanged"
    assert event.key == "c-42"
    assert event.source == "/inbound/customers"
    assert event.data["customerId"] == "c-42"
    assert event.data["change"] == "CREATED"
    assert event.data["attributes"] == {"channel": "web", "tenant": "acme", "agent": "crm/1.0"}
    assert event.data["changedAt"].isoformat() == "2026-11-24T10:00:00+00:00"


async def test_the_same_idempotency_key_yields_the_same_event_id(bus: Bus) -> None:
    first = await bus.post("/hooks/a/customers", CUSTOMER, headers={"Idempotency-Key": "k-1"})
    again = await bus.post("/hooks/a/customers", CUSTOMER, headers={"Idempotency-Key": "k-1"})
    other = await bus.post("/hooks/a/customers", CUSTOMER, headers={"Idempotency-Key": "k-2"})
    plain = await bus.post("/hooks/a/customers", CUSTOMER)
    assert first[0] == again[0] == other[0] == plain[0] == 202
    assert first[1]["id"] == again[1]["id"]
    assert len({first[1]["id"], other[1]["id"], plain[1]["id"]}) == 3


# -- every error, with its problem ---------------------------------------------------------------


async def nothing_stored_by(bus: Bus, bootstrap_servers: str, call: Any) -> dict[str, Any]:
    before = await stored_count(bootstrap_servers, bus.topic)
    status, problem, _ = await call
    assert await stored_count(bootstrap_servers, bus.topic) == before
    return {"status": status, **problem}


async def test_malformed_json_is_400(bus: Bus, bootstrap_servers: str) -> None:
    problem = await nothing_stored_by(
        bus, bootstrap_servers, bus.post("/hooks/a/customers", raw=b'{"id": "c-1",')
    )
    assert problem["status"] == 400
    assert "not valid JSON" in problem["detail"]
    assert "line 1" in problem["detail"]


@pytest.mark.parametrize(
    ("raw", "said"),
    [
        (b"\xff\xfe{}", "not UTF-8"),
        (b"", "empty"),
        (b'{"a": NaN}', "NaN is not JSON"),
        (b"[" * 100 + b"]" * 100, "nested deeper"),
    ],
)
async def test_bodies_that_are_not_json_are_400(bus: Bus, raw: bytes, said: str) -> None:
    status, problem, _ = await bus.post("/hooks/a/customers", raw=raw)
    assert status == 400
    assert said in problem["detail"]


async def test_an_idempotency_key_too_long_is_400(bus: Bus) -> None:
    headers = {"Idempotency-Key": "k" * 256}
    status, problem, _ = await bus.post("/hooks/a/customers", CUSTOMER, headers=headers)
    assert status == 400
    assert "255" in problem["detail"]


async def test_an_event_larger_than_a_kafka_record_is_413(bus: Bus, bootstrap_servers: str) -> None:
    huge = {**CUSTOMER, "name": "x" * 1_200_000}  # within max_body, beyond Kafka's 1 MiB
    problem = await nothing_stored_by(bus, bootstrap_servers, bus.post("/big", huge))
    assert problem["status"] == 413
    assert "event-too-large" in problem["type"]


async def test_a_body_that_is_not_json_by_media_type_is_415(bus: Bus) -> None:
    status, problem, _ = await bus.post(
        "/hooks/a/customers",
        raw=b"id=1",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 415
    assert "application/x-www-form-urlencoded" in problem["detail"]


async def test_a_body_over_the_limit_is_413_before_it_is_read(bus: Bus) -> None:
    big = json.dumps({**CUSTOMER, "name": "x" * 5000}).encode()
    status, problem, _ = await bus.post("/hooks/a/customers", raw=big)
    assert status == 413
    assert "4096 bytes" in problem["detail"]

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted while reading
        for _ in range(10):
            yield b" " * 1000

    status, problem, _ = await bus.post("/hooks/a/customers", data=chunked())
    assert status == 413


async def test_unknown_path_is_404_and_wrong_method_is_405(bus: Bus) -> None:
    status, problem, _ = await bus.post("/hooks/nothing/here/at/all", CUSTOMER)
    assert status == 404
    assert "/openapi.json" in problem["detail"]
    async with bus.session.get(bus.url + "/hooks/a/customers") as answer:
        assert answer.status == 405
        assert answer.content_type == PROBLEM
        assert "POST" in answer.headers["Allow"]
        assert (await answer.json())["status"] == 405


async def test_a_mapping_that_cannot_be_filled_is_422_naming_the_field(
    bus: Bus, bootstrap_servers: str
) -> None:
    body = {key: value for key, value in CUSTOMER.items() if key != "email"}
    problem = await nothing_stored_by(bus, bootstrap_servers, bus.post("/hooks/a/customers", body))
    assert problem["status"] == 422
    (error,) = problem["errors"]
    assert error["field"] == "email"
    assert "email" in error["problem"]


async def test_a_schema_violation_is_422_with_the_field_and_the_expected_type(bus: Bus) -> None:
    status, problem, _ = await bus.post("/hooks/a/customers", {**CUSTOMER, "kind": "MERGED"})
    assert status == 422
    fields = {error["field"]: error["problem"] for error in problem["errors"]}
    assert "change" in fields
    assert "CREATED" in fields["change"]  # says what it expected
    status, problem, _ = await bus.post("/hooks/a/customers", {**CUSTOMER, "at": "yesterday"})
    assert status == 422
    assert {error["field"] for error in problem["errors"]} == {"changedAt"}


# -- authentication ------------------------------------------------------------------------------


async def test_api_key_in_a_header_or_the_query(bus: Bus) -> None:
    assert (await bus.post("/keyed", CUSTOMER, headers={"X-Api-Key": API_KEY}))[0] == 202
    status, problem, _ = await bus.post("/keyed", CUSTOMER, headers={"X-Api-Key": "nope"})
    assert status == 401
    assert API_KEY not in json.dumps(problem)
    assert (await bus.post("/keyed", CUSTOMER))[0] == 401
    assert (await bus.post(f"/keyed-query?api_key={API_KEY}", CUSTOMER))[0] == 202
    assert (await bus.post("/keyed-query?api_key=wrong", CUSTOMER))[0] == 401


async def test_basic_auth(bus: Bus) -> None:
    def basic(user: str, password: str) -> dict[str, str]:
        return {
            "Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        }

    assert (await bus.post("/basic", CUSTOMER, headers=basic("crm", PASSWORD)))[0] == 202
    status, _, headers = await bus.post("/basic", CUSTOMER, headers=basic("crm", "guess"))
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Basic")


def stripe_header(body: bytes, timestamp: int, secret: str = STRIPE_SECRET) -> str:
    signature = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, "sha256").hexdigest()
    return f"t={timestamp},v1={signature}"


async def test_stripe_signature_of_the_real_payload(bus: Bus, bootstrap_servers: str) -> None:
    now = int(time.time())
    status, body, _ = await bus.post(
        "/stripe", raw=STRIPE_BODY, headers={"Stripe-Signature": stripe_header(STRIPE_BODY, now)}
    )
    assert status == 202
    (event,) = await events_with_ids(bootstrap_servers, bus.topic, {body["id"]})
    assert event.data["customerId"] == json.loads(STRIPE_BODY)["data"]["object"]["id"]


async def test_a_replayed_stripe_request_is_the_same_event(bus: Bus) -> None:
    """Within the tolerance a captured request verifies again: it must not be a new event."""
    now = int(time.time())
    headers = {"Stripe-Signature": stripe_header(STRIPE_BODY, now)}
    first = await bus.post("/stripe", raw=STRIPE_BODY, headers=headers)
    again = await bus.post("/stripe", raw=STRIPE_BODY, headers=headers)
    later = await bus.post(
        "/stripe",
        raw=STRIPE_BODY,
        headers={"Stripe-Signature": stripe_header(STRIPE_BODY, now + 1)},
    )
    assert first[0] == again[0] == later[0] == 202
    assert first[1]["id"] == again[1]["id"]
    assert later[1]["id"] != first[1]["id"]  # signed anew: Stripe's own retry, a new delivery


async def test_a_stale_or_replayed_stripe_signature_is_refused(bus: Bus) -> None:
    old = int(time.time()) - 3600  # a captured request, sent again an hour later
    status, problem, _ = await bus.post(
        "/stripe", raw=STRIPE_BODY, headers={"Stripe-Signature": stripe_header(STRIPE_BODY, old)}
    )
    assert status == 401
    assert "timestamp" in problem["detail"]
    now = int(time.time())
    status, _, _ = await bus.post(
        "/stripe",
        raw=STRIPE_BODY.replace(b"}", b" }", 1),
        headers={"Stripe-Signature": stripe_header(STRIPE_BODY, now)},
    )
    assert status == 401


async def test_github_and_shopify_signatures_of_their_real_payloads(bus: Bus) -> None:
    github = "sha256=" + hmac.new(GITHUB_SECRET.encode(), GITHUB_BODY, "sha256").hexdigest()
    first = await bus.post(
        "/github",
        raw=GITHUB_BODY,
        headers={"X-Hub-Signature-256": github, "X-GitHub-Delivery": "d-1"},
    )
    again = await bus.post(
        "/github",
        raw=GITHUB_BODY,
        headers={"X-Hub-Signature-256": github, "X-GitHub-Delivery": "d-1"},
    )
    assert first[0] == again[0] == 202
    assert first[1]["id"] == again[1]["id"]  # GitHub's redelivery: the same event
    assert (
        await bus.post("/github", raw=GITHUB_BODY, headers={"X-Hub-Signature-256": "sha256=00"})
    )[0] == 401
    digest = hmac.new(SHOPIFY_SECRET.encode(), SHOPIFY_BODY, hashlib.sha256).digest()
    shopify = base64.b64encode(digest).decode()
    status, _, _ = await bus.post(
        "/shopify", raw=SHOPIFY_BODY, headers={"X-Shopify-Hmac-Sha256": shopify}
    )
    assert status == 202


def token(key: Any = PRIVATE_KEY, **claims: Any) -> str:
    now = int(time.time())
    payload = {
        "iss": "https://idp.test",
        "aud": "bus",
        "iat": now,
        "exp": now + 300,
        "scope": "events.write",
        **claims,
    }
    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": "k1"})


async def test_jwt_bearer_tokens(bus: Bus) -> None:
    def bearer(value: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {value}"}

    assert (await bus.post("/jwt", CUSTOMER, headers=bearer(token())))[0] == 202
    expired = token(exp=int(time.time()) - 600, iat=int(time.time()) - 900)
    status, problem, headers = await bus.post("/jwt", CUSTOMER, headers=bearer(expired))
    assert status == 401
    assert "expired" in problem["detail"]
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert (await bus.post("/jwt", CUSTOMER, headers=bearer(token(OTHER_KEY))))[0] == 401
    assert (await bus.post("/jwt", CUSTOMER, headers=bearer(token(aud="other"))))[0] == 401
    unsigned = jwt.encode({"iss": "https://idp.test", "aud": "bus"}, None, algorithm="none")
    assert (await bus.post("/jwt", CUSTOMER, headers=bearer(unsigned)))[0] == 401
    status, problem, headers = await bus.post("/jwt", CUSTOMER, headers=bearer(token(scope="read")))
    assert status == 403
    assert "events.write" in problem["detail"]
    assert 'error="insufficient_scope"' in headers["WWW-Authenticate"]


# -- the publish API and the OpenAPI document ---------------------------------------------------


async def test_the_publish_api_takes_an_event_in_its_schemas_shape(
    bus: Bus, bootstrap_servers: str
) -> None:
    data = {
        "customerId": "c-7",
        "change": "UPDATED",
        "email": "grace@example.com",
        "name": "Grace Hopper",
        "changedAt": "2026-11-24T11:00:00Z",
    }
    auth = {"X-Api-Key": PUBLISH_KEY}
    status, body, _ = await bus.post(
        "/events/com.acme.crm.CustomerChanged",
        data,
        headers={**auth, "ce-partitionkey": "c-7", "ce-subject": "customers/c-7"},
    )
    assert status == 202
    (event,) = await events_with_ids(bootstrap_servers, bus.topic, {body["id"]})
    assert (event.key, event.subject, event.data["email"]) == (
        "c-7",
        "customers/c-7",
        "grace@example.com",
    )
    assert (await bus.post("/events/com.acme.crm.CustomerChanged", data))[0] == 401
    # Anonymous callers learn nothing, not even which types exist.
    assert (await bus.post("/events/com.acme.Nope", data))[0] == 401
    status, problem, _ = await bus.post("/events/com.acme.Nope", data, headers=auth)
    assert status == 404
    assert "com.acme.crm.CustomerChanged" in problem["detail"]
    status, problem, _ = await bus.post(
        "/events/com.acme.crm.CustomerChanged", {**data, "extra": 1}, headers=auth
    )
    assert status == 422
    assert problem["errors"][0]["field"] == "extra"


async def test_openapi_document_is_valid_and_lists_every_endpoint(bus: Bus) -> None:
    async with bus.session.get(bus.url + "/openapi.json") as answer:
        document = await answer.json()
    validate_openapi(document)
    assert document["openapi"].startswith("3.1")
    paths = document["paths"]
    for path in (
        "/hooks/{tenant}/customers",
        "/keyed",
        "/stripe",
        "/jwt",
        "/events/com.acme.crm.CustomerChanged",
    ):
        assert "post" in paths[path], path


# -- Kafka unavailable -----------------------------------------------------------------------------


async def test_kafka_unavailable_is_503_with_retry_after(tmp_path: Path) -> None:
    """An inbound server whose Kafka does not answer: 503, never 202."""
    port = free_port()
    dead_kafka = f"127.0.0.1:{free_port()}"
    path = write_flow(
        tmp_path,
        """
inbound:
  - name: customers
    rest: {path: /customers}
    event:
      type: com.acme.crm.CustomerChanged
      map:
        customerId: body.id
        change: body.kind
        email: body.email
        name: body.name
        changedAt: body.at
    topic: nowhere
""",
    )
    flows = load_flow_files([path])
    codec = EventCodec(CATALOG)
    ingest = Ingest(dead_kafka, codec, deadline=1.0)
    async with aiohttp.ClientSession() as session:
        context = AdapterContext(flows, CATALOG, codec, ingest, session, dead_kafka)
        runtime = RestRuntime(context)
        runtime.add_inbound(flows.inbound[0])
        server = InboundServer("127.0.0.1", port, runtime.routes())
        await ingest.start()
        await server.start()
        try:
            async with session.post(f"{server.url}/customers", json=CUSTOMER) as answer:
                assert answer.status == 503, await answer.text()
                assert answer.content_type == PROBLEM
                assert int(answer.headers["Retry-After"]) > 0
                assert "may not be stored" in (await answer.json())["detail"]
        finally:
            await server.stop()
            await ingest.stop()
            await runtime.close()
