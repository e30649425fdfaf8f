"""Hostile input against a running inbound REST server: hypothesis and schemathesis fuzzing.

One real `bus run` process (its own aiohttp server on a free port, the session's broker) serves
a webhook, a signed (Stripe-style HMAC) webhook, a JWT-protected webhook and the publish API.
Each test sends generated bad requests with a real HTTP client (raw sockets for what a client
library refuses to send) and checks that every answer is the specific 4xx with an RFC 9457
problem+json body, never a 5xx, and that the topic's end offset did not move: nothing was
produced. The process's log must show no unhandled error when it stops.
"""

import asyncio
import base64
import hashlib
import hmac
import json
import os
import signal
import socket
import string
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import jwt
import pytest
import requests
import schemathesis
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.conftest import free_port
from tests.flow_harness import ROOT

T = TypeVar("T")
PROBLEM = "application/problem+json"
PROBLEM_TYPE = "tag:bus.dev,2026:problem:"
STRIPE_SECRET = "whsec_fuzz_secret_2b71"
PUBLISH_KEY = "publish-fuzz-key-61ce"
ISSUER = "https://idp.fuzz.test"
AUDIENCE = "bus-fuzz"
SIGNING_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PUBLIC_PEM = (
    SIGNING_KEY.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)
MAX_BODY = 4096
CUSTOMER = {
    "id": "c-1",
    "email": "ada@example.com",
    "name": "Ada Lovelace",
    "at": "2026-11-24T10:00:00Z",
}
PUBLISHED = {
    "customerId": "c-1",
    "change": "UPDATED",
    "email": "ada@example.com",
    "name": "Ada Lovelace",
    "changedAt": 1700000000000,
}
# The event fields each body field is mapped to (what a 422 names).
MAPPED = {"id": "customerId", "email": "email", "name": "name", "at": "changedAt"}
FUZZ = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def flow_text(port: int, topic: str) -> str:
    pem = "\n".join("            " + line for line in PUBLIC_PEM.splitlines())
    mapping = """
        customerId: body.id
        change: '"UPDATED"'
        email: body.email
        name: body.name
        changedAt: body.at"""
    return f"""
http:
  port: {port}
  publish:
    events: {{com.acme.crm.CustomerChanged: {topic}}}
    auth: {{api_key: {{header: X-Api-Key, keys: [{PUBLISH_KEY}]}}}}
inbound:
  - name: open
    rest: {{path: /hooks/customers, max_body: {MAX_BODY}}}
    event:
      type: com.acme.crm.CustomerChanged
      key: body.id
      map: {mapping}
    topic: {topic}
  - name: signed
    rest: {{path: /signed, auth: {{hmac: {{preset: stripe, secrets: [{STRIPE_SECRET}]}}}}}}
    event:
      type: com.acme.crm.CustomerChanged
      map: {mapping}
    topic: {topic}
  - name: tokens
    rest:
      path: /jwt
      auth:
        jwt:
          issuer: {ISSUER}
          audience: {AUDIENCE}
          algorithms: [RS256]
          scopes: [events.write]
          key: |
{pem}
    event:
      type: com.acme.crm.CustomerChanged
      map: {mapping}
    topic: {topic}
"""


@dataclass(frozen=True)
class Server:
    url: str
    host: str
    port: int
    topic: str
    bootstrap_servers: str
    log: Path

    def end_offset(self) -> int:
        """The topic's end offset: how many records were ever produced to it."""
        return in_thread(_end_offset(self.bootstrap_servers, self.topic))


def in_thread(coroutine: Coroutine[Any, Any, T]) -> T:
    """Runs `coroutine` to its end on a loop of its own in another thread: this thread's
    event loop belongs to pytest-asyncio."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result(timeout=60)


async def _end_offset(bootstrap_servers: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers)
    await consumer.start()
    try:
        partition = TopicPartition(topic, 0)
        return int((await consumer.end_offsets([partition]))[partition])
    finally:
        await consumer.stop()


async def _create_topic(bootstrap_servers: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()


@pytest.fixture(scope="module")
def server(bootstrap_servers: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    port = free_port()
    topic = f"rest-fuzz-{port}"
    in_thread(_create_topic(bootstrap_servers, topic))
    folder = tmp_path_factory.mktemp("fuzz")
    flow, log = folder / "flow.yaml", folder / "bus.log"
    flow.write_text(flow_text(port, topic))
    process = subprocess.Popen(
        [sys.executable, "-m", "bus", "run", str(flow), "--shutdown-grace", "10"],
        env={
            **os.environ,
            "BUS_SCHEMAS_DIR": str(ROOT / "schemas"),
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers,
        },
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if requests.get(url + "/openapi.json", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        yield Server(url, "127.0.0.1", port, topic, bootstrap_servers, log)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    text = log.read_text()
    assert code == 0, text
    # An unhandled error is logged with its traceback even when the answer hid it as a 500.
    assert "Traceback" not in text, text


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


@pytest.fixture
def nothing_produced(server: Server) -> Iterator[None]:
    """The test produces nothing to the topic: its end offset does not move."""
    before = server.end_offset()
    yield
    assert server.end_offset() == before


def assert_problem(answer: Any, *statuses: int) -> dict[str, Any]:
    """`answer` (of requests, or of schemathesis, whose header values are lists) is one of
    `statuses` with an RFC 9457 body; returns the body."""
    assert answer.status_code in statuses, (answer.status_code, answer.text[:500])
    content_type = answer.headers.get("content-type")
    content_type = content_type[0] if isinstance(content_type, list) else content_type
    assert (content_type or "").split(";")[0] == PROBLEM, answer.headers
    problem = answer.json()
    assert problem["status"] == answer.status_code
    assert problem["type"].startswith(PROBLEM_TYPE)
    assert problem["title"]
    assert problem["detail"]
    return dict(problem)


def post(
    http: requests.Session, server: Server, path: str, body: bytes, **headers: str
) -> requests.Response:
    sent = {"Content-Type": "application/json", **headers}
    return http.post(server.url + path, data=body, headers=sent, timeout=30)


def encoded(value: Any) -> bytes:
    return json.dumps(value).encode()


# -- bodies --------------------------------------------------------------------------------------

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def _not_json(raw: bytes) -> bool:
    try:
        json.loads(raw)
    except ValueError:
        return True
    return False


def _truncations(draw: st.DrawFn) -> bytes:
    whole = encoded(CUSTOMER)
    return whole[: draw(st.integers(0, len(whole) - 1))]


@st.composite
def malformed_json(draw: st.DrawFn) -> bytes:
    """Bytes that are not a JSON text: cut off, random, or broken by one changed byte."""
    kind = draw(st.sampled_from(["truncated", "random", "flipped", "constant"]))
    if kind == "truncated":
        raw = _truncations(draw)
    elif kind == "random":
        raw = draw(st.binary(max_size=200))
    elif kind == "flipped":
        whole = bytearray(encoded(CUSTOMER))
        at = draw(st.integers(0, len(whole) - 1))
        whole[at] = draw(st.sampled_from(b"{}[],:\"'\\"))
        raw = bytes(whole)
    else:
        raw = encoded(CUSTOMER).replace(b'"c-1"', draw(st.sampled_from([b"NaN", b"Infinity"])))
    if raw.strip() and not _not_json(raw) and kind != "constant":
        raw = b"{" + raw  # still JSON after the change: break it for sure
    return raw


@st.composite
def deeply_nested(draw: st.DrawFn) -> bytes:
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
    depth = draw(st.integers(65, (MAX_BODY - 20) // len(opener + closer)))  # within max_body
    inner = opener * depth + b"1" + closer * depth
    return b'{"id": ' + inner + b"}" if draw(st.booleans()) else inner


@st.composite
def invalid_utf8(draw: st.DrawFn) -> bytes:
    bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"]))
    whole = encoded(CUSTOMER)
    at = whole.index(b"Ada") + draw(st.integers(0, 3))
    return whole[:at] + bad + whole[at:]


@st.composite
def wrong_type(draw: st.DrawFn) -> tuple[str, bytes]:
    """A customer whose one mapped field holds a value its event field cannot take."""
    field = draw(st.sampled_from(sorted(MAPPED)))
    wrong = st.none() | st.booleans() | st.lists(JSON_SCALARS, max_size=3)
    wrong |= st.dictionaries(st.text(max_size=5), JSON_SCALARS, max_size=3)
    if field == "at":  # a timestamp may be an ISO text or epoch millis: anything else is wrong
        wrong |= st.text(max_size=20).filter(lambda t: not t.strip().lstrip("-").isdigit())
    else:
        wrong |= st.floats(allow_nan=False, allow_infinity=False)
    return MAPPED[field], encoded({**CUSTOMER, field: draw(wrong)})


def test_malformed_json_is_400(
    server: Server, http: requests.Session, nothing_produced: None
) -> None:
    @FUZZ
    @given(raw=malformed_json() | deeply_nested() | invalid_utf8())
    def fuzz(raw: bytes) -> None:
        problem = assert_problem(post(http, server, "/hooks/customers", raw), 400)
        assert "malformed-json" in problem["type"]

    fuzz()


def test_json_that_is_no_customer_is_422(
    server: Server, http: requests.Session, nothing_produced: None
) -> None:
    @FUZZ
    @given(value=JSON_VALUES)
    def fuzz(value: Any) -> None:
        problem = assert_problem(post(http, server, "/hooks/customers", encoded(value)), 422)
        assert problem["errors"]

    fuzz()


def test_a_wrong_type_in_a_mapped_field_is_422_naming_it(
    server: Server, http: requests.Session, nothing_produced: None
) -> None:
    @FUZZ
    @given(case=wrong_type())
    def fuzz(case: tuple[str, bytes]) -> None:
        field, raw = case
        problem = assert_problem(post(http, server, "/hooks/customers", raw), 422)
        assert field in {error["field"] for error in problem["errors"]}, problem

    fuzz()


def test_huge_strings_are_413(
    server: Server, http: requests.Session, nothing_produced: None
) -> None:
    @FUZZ
    @given(
        field=st.sampled_from(sorted(MAPPED)),
        size=st.integers(MAX_BODY, 4 * 1024 * 1024),
        chunked=st.booleans(),
    )
    def fuzz(field: str, size: int, chunked: bool) -> None:
        raw = encoded({**CUSTOMER, field: "x" * size})
        data: Any = (
            iter([raw[i : i + 65536] for i in range(0, len(raw), 65536)]) if chunked else raw
        )
        answer = http.post(
            server.url + "/hooks/customers",
            data=data,
            headers={"Content-Type": "application/json"},
            timeout=30,
        )
        assert "max_body" in assert_problem(answer, 413)["detail"]

    fuzz()


# -- requests a client library refuses to send: raw sockets ---------------------------------------


@dataclass(frozen=True)
class RawAnswer:
    status: int
    headers: dict[str, str]
    body: bytes


def raw_request(server: Server, head: bytes, body: bytes = b"") -> RawAnswer:
    """Sends `head` (request line and headers, without the blank line) and `body` as they are,
    and reads the answer until the server closes."""
    with socket.create_connection((server.host, server.port), timeout=30) as connection:
        connection.sendall(head + b"\r\nConnection: close\r\n\r\n" + body)
        received = bytearray()
        while chunk := connection.recv(65536):
            received += chunk
    top, _, content = bytes(received).partition(b"\r\n\r\n")
    status_line, *lines = top.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawAnswer(int(status_line.split()[1]), headers, content)


def request_head(path: str, body: bytes, *extra: bytes) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1".encode(),
        b"Host: 127.0.0.1",
        b"Content-Type: application/json",
        f"Content-Length: {len(body)}".encode(),
        *extra,
    ]
    return b"\r\n".join(lines)


HEADER_NAMES = st.sampled_from(
    [b"Idempotency-Key", b"User-Agent", b"X-Custom", b"Content-Type", b"traceparent", b"Host"]
)
FILLER = st.text(alphabet=string.ascii_letters + string.digits + " ;=,/", max_size=10)
# What must not be inside a header value: a bare CR or LF (a smuggled header line), NUL and
# the other control characters.
FORBIDDEN = st.sampled_from(
    [b"\r", b"\rX-Injected: 1", b"\nX-Injected: 1", b"\x00", b"\x01", b"\x1b", b"\x7f"]
)


@st.composite
def broken_heads(draw: st.DrawFn) -> bytes:
    """A request head the HTTP parser must refuse."""
    body = encoded(CUSTOMER)
    kind = draw(
        st.sampled_from(["injected", "oversized", "two-lengths", "length-and-chunked", "bad-name"])
    )
    if kind == "injected":
        value = draw(FILLER).encode() + draw(FORBIDDEN) + draw(FILLER).encode()
        extra = [draw(HEADER_NAMES) + b": a" + value]
    elif kind == "oversized":
        extra = [b"X-Big: " + b"a" * draw(st.integers(8200, 200_000))]
    elif kind == "two-lengths":
        extra = [f"Content-Length: {len(body) + draw(st.integers(1, 50))}".encode()]
    elif kind == "length-and-chunked":
        extra = [b"Transfer-Encoding: chunked"]
    else:
        extra = [draw(st.sampled_from([b"Bad Name: 1", b"Bad\x01: 1", b": no name", b"X(y): 1"]))]
    return request_head("/hooks/customers", body, *extra)


def test_requests_the_http_parser_refuses_are_400_and_store_nothing(
    server: Server, nothing_produced: None
) -> None:
    body = encoded(CUSTOMER)

    @FUZZ
    @given(head=broken_heads())
    def fuzz(head: bytes) -> None:
        # aiohttp's parser answers these itself, before any route: a plain-text 400.
        assert raw_request(server, head, body).status == 400

    fuzz()
    # Each refusal is one line in the log, not an ERROR with a traceback (regression).
    assert "refused a malformed HTTP request" in server.log.read_text()


@st.composite
def undecodable_headers(draw: st.DrawFn) -> tuple[bytes, str]:
    """An identity header whose value has bytes that are not UTF-8 (or not ASCII), and the path
    it is sent to."""
    header, path = draw(
        st.sampled_from(
            [
                (b"Idempotency-Key", "/hooks/customers"),
                (b"Idempotency-Key", "/events/com.acme.crm.CustomerChanged"),
                (b"ce-subject", "/events/com.acme.crm.CustomerChanged"),
                (b"ce-partitionkey", "/events/com.acme.crm.CustomerChanged"),
                (b"ce-source", "/events/com.acme.crm.CustomerChanged"),
            ]
        )
    )
    invalid = [b"\xff", b"\xc3\x28", b"\xe9t\xe9", b"\xed\xa0\x80"]
    # An idempotency key is ASCII only: UTF-8 that is not ASCII is refused too.
    junk = draw(st.sampled_from(invalid + [b"\xc3\xa9"] * (header == b"Idempotency-Key")))
    return header + b": " + draw(FILLER).encode() + junk + draw(FILLER).encode(), path


def test_identity_headers_that_are_not_text_are_400(server: Server, nothing_produced: None) -> None:
    """Regression: an Idempotency-Key with a byte that is not UTF-8 was a 500 (no UUID can be
    made of the surrogate aiohttp decodes it to), as were such ce- attributes."""

    @FUZZ
    @given(case=undecodable_headers())
    def fuzz(case: tuple[bytes, str]) -> None:
        line, path = case
        body = encoded(PUBLISHED if path.startswith("/events") else CUSTOMER)
        head = request_head(path, body, line, f"X-Api-Key: {PUBLISH_KEY}".encode())
        answer = raw_request(server, head, body)
        assert answer.status == 400, answer
        assert answer.headers["content-type"].startswith(PROBLEM), answer
        assert b"header" in answer.body

    fuzz()


# -- signatures and tokens ------------------------------------------------------------------------


def stripe_header(body: bytes, timestamp: int, secret: str = STRIPE_SECRET) -> str:
    signature = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, "sha256").hexdigest()
    return f"t={timestamp},v1={signature}"


@st.composite
def bad_signatures(draw: st.DrawFn) -> dict[str, str]:
    """Stripe-Signature headers that must not verify the body CUSTOMER encodes to."""
    body, now = encoded(CUSTOMER), int(time.time())
    kind = draw(
        st.sampled_from(["wrong-secret", "other-body", "stale", "future", "garbage", "missing"])
    )
    if kind == "wrong-secret":
        return {"Stripe-Signature": stripe_header(body, now, draw(st.text(min_size=1)))}
    if kind == "other-body":
        other = encoded({**CUSTOMER, "name": draw(st.text()).join("<>")})
        return {"Stripe-Signature": stripe_header(other, now)}
    if kind == "stale":  # a captured request replayed after the tolerance
        return {"Stripe-Signature": stripe_header(body, now - draw(st.integers(400, 10**9)))}
    if kind == "future":
        return {"Stripe-Signature": stripe_header(body, now + draw(st.integers(400, 10**9)))}
    if kind == "garbage":
        garbage = FILLER.map(str.strip) | st.just("t=1,v1=") | st.just("v1=00,t=x")
        return {"Stripe-Signature": draw(garbage)}
    return {}


def test_bad_and_replayed_signatures_are_401(
    server: Server, http: requests.Session, nothing_produced: None
) -> None:
    @FUZZ
    @given(headers=bad_signatures())
    def fuzz(headers: dict[str, str]) -> None:
        answer = post(http, server, "/signed", encoded(CUSTOMER), **headers)
        assert_problem(answer, 401)

    fuzz()


def jwt_claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "crm", "iat": now, "exp": now + 300}
    return {**claims, "scope": "events.write", **changes}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@st.composite
def bad_tokens(draw: st.DrawFn) -> tuple[int, str]:
    """A bearer token that must be refused, and the status: 401 unless it is valid but lacks the
    scope (403)."""
    now = int(time.time())
    kind = draw(
        st.sampled_from(
            [
                "expired",
                "alg-none",
                "wrong-key",
                "audience",
                "issuer",
                "hs-with-pem",
                "garbage",
                "scope",
                "not-yet",
            ]
        )
    )
    if kind == "scope":
        return 403, jwt.encode(jwt_claims(scope=draw(FILLER)), SIGNING_KEY, algorithm="RS256")
    claims = {
        "expired": jwt_claims(exp=now - draw(st.integers(120, 10**8)), iat=now - 10**8 - 1),
        "audience": jwt_claims(aud=draw(st.text(min_size=1).filter(lambda a: a != AUDIENCE))),
        "issuer": jwt_claims(iss=draw(st.text(min_size=1).filter(lambda i: i != ISSUER))),
        "not-yet": jwt_claims(nbf=now + draw(st.integers(600, 10**8))),
    }.get(kind, jwt_claims())
    if kind == "alg-none":
        header = b64url(
            json.dumps({"alg": draw(st.sampled_from(["none", "None", "NONE"]))}).encode()
        )
        return 401, f"{header}.{b64url(json.dumps(claims).encode())}."
    if kind == "hs-with-pem":  # the algorithm-confusion forgery: HS256 keyed with the public key
        signing_input = ".".join(
            b64url(json.dumps(part).encode()) for part in ({"alg": "HS256", "typ": "JWT"}, claims)
        )
        mac = hmac.new(PUBLIC_PEM.encode(), signing_input.encode(), hashlib.sha256).digest()
        return 401, f"{signing_input}.{b64url(mac)}"
    if kind == "garbage":
        return 401, draw(st.text(alphabet=string.ascii_letters + "-_.=", max_size=300))
    key = OTHER_KEY if kind == "wrong-key" else SIGNING_KEY
    return 401, jwt.encode(claims, key, algorithm="RS256")


def test_expired_forged_and_misaddressed_tokens_are_refused(
    server: Server, http: requests.Session, nothing_produced: None
) -> None:
    @FUZZ
    @given(case=bad_tokens())
    def fuzz(case: tuple[int, str]) -> None:
        status, token = case
        answer = post(http, server, "/jwt", encoded(CUSTOMER), Authorization=f"Bearer {token}")
        assert_problem(answer, status)
        if status == 401:
            assert answer.headers["WWW-Authenticate"].startswith("Bearer")

    fuzz()
    good = jwt.encode(jwt_claims(), SIGNING_KEY, algorithm="RS256")
    # The control: a good token passes authentication and gets to the body (empty: a 400).
    assert post(http, server, "/jwt", b"", Authorization=f"Bearer {good}").status_code == 400


# -- schemathesis, from the server's own /openapi.json -------------------------------------------


def test_the_openapi_document_fuzzed_by_schemathesis(server: Server) -> None:
    """Valid and invalid requests generated from /openapi.json: never a 5xx, every error a
    problem; the valid ones that were taken (202) are what reached the topic, no more."""
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {operation.path for operation in operations} >= {"/hooks/customers", "/signed", "/jwt"}
    before = server.end_offset()
    taken: list[str] = []
    with requests.Session() as http:
        for operation in operations:
            strategy = operation.as_strategy(GenerationMode.POSITIVE) | operation.as_strategy(
                GenerationMode.NEGATIVE
            )

            @settings(FUZZ, max_examples=40)
            @given(case=strategy)
            def fuzz(case: Any) -> None:
                headers = {"X-Api-Key": PUBLISH_KEY} if case.path.startswith("/events") else {}
                answer = case.call(base_url=server.url, session=http, headers=headers, timeout=30)
                assert answer.status_code < 500, (case.path, answer.status_code, answer.text)
                if answer.status_code == 202:
                    taken.append(answer.json()["id"])
                else:
                    assert_problem(answer, *range(400, 500))

            fuzz()
    assert server.end_offset() == before + len(taken)
