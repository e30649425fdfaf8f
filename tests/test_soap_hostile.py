"""Hostile SOAP calls the XML attack table of test_soap_inbound.py does not cover.

The same in-process endpoint (its `soap` fixture: the real aiohttp server, the session's broker):
- each XML attack stays within bounded memory (tracemalloc peak of the whole process while the
  request is answered) and time, not only that it is refused;
- a declared body size beyond the limit is refused before waiting for the body;
- malformed WS-Security headers are each refused with a Client fault;
- envelopes mutated at random (hypothesis) get a Client fault, never a Server one, and store
  nothing.
"""

import asyncio
import os
import re
import socket
import time
import tracemalloc
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree  # type: ignore[import-untyped]

from adapters.soap.envelope import SOAP11_NS
from tests.test_soap_inbound import (
    _BILLION_LAUGHS,
    _DEEP,
    _HUGE_ATTRIBUTE,
    _OVERSIZED,
    _QUADRATIC,
    _VERY_DEEP,
    _XXE,
    NOTIFY,
    PASSWORD,
    Soap,
    envelope,
    notification,
    soap,  # noqa: F401 -- the fixture, shared
    soap11_headers,
    username_token,
)

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def endpoint(soap: Soap) -> Soap:  # noqa: F811 -- the imported fixture, by its name
    """The running SOAP endpoint of test_soap_inbound.py (another one, for this module)."""
    return soap


WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(_BILLION_LAUGHS, id="billion-laughs"),
        pytest.param(_QUADRATIC, id="quadratic-blowup"),
        pytest.param(_XXE, id="xxe"),
        pytest.param(_VERY_DEEP, id="very-deep"),
        pytest.param(_DEEP, id="deep"),
        pytest.param(_HUGE_ATTRIBUTE, id="huge-attribute"),
        pytest.param(_OVERSIZED, id="oversized"),
    ],
)
async def test_xml_attacks_stay_within_bounded_memory_and_time(endpoint: Soap, raw: bytes) -> None:
    # A billion laughs expanded is 3 GB, the quadratic blowup 400 MB: a few MiB over the size
    # of the request itself (which the client holds too) proves that neither was expanded.
    tracemalloc.start()
    try:
        answer = await endpoint.nothing_stored_by(
            endpoint.post("/soap/crm", raw, soap11_headers(NOTIFY))
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert answer.fault()[0] == "soap:Client"
    assert peak < 4 * len(raw) + 8 * MIB, f"{peak / MIB:.1f} MiB for {len(raw)} bytes"
    assert answer.elapsed < 5.0  # tracemalloc slows it down; unbounded work would take minutes


def raw_call(url: str, head: bytes, body: bytes = b"") -> tuple[bytes, float]:
    """Sends `head` and `body` on a socket as they are; the answer's bytes and how long it
    took to come."""
    address = urlsplit(url)
    started = time.monotonic()
    with socket.create_connection((address.hostname, address.port), timeout=20) as connection:
        connection.sendall(head + b"\r\n\r\n" + body)
        received = bytearray()
        while chunk := connection.recv(65536):
            received += chunk
            if b"</soap:Envelope>" in received or b"Envelope>" in received[-40:]:
                break
    return bytes(received), time.monotonic() - started


async def test_a_declared_size_beyond_the_limit_is_refused_without_waiting_for_the_body(
    endpoint: Soap,
) -> None:
    head = (
        b"POST /soap/crm HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/xml; charset=utf-8\r\n"
        b'SOAPAction: "' + NOTIFY.encode() + b'"\r\nContent-Length: 1000000000000'
    )
    answer, elapsed = await asyncio.to_thread(raw_call, endpoint.url, head, b"<soap:Envelope")
    assert answer.startswith(b"HTTP/1.1 500"), answer[:200]
    assert b"faultcode>soap:Client<" in answer
    assert b"at most 524288 bytes" in answer
    assert elapsed < 5.0


def security(*parts: str, attributes: str = "") -> str:
    return f'<wsse:Security xmlns:wsse="{WSSE}"{attributes}>{"".join(parts)}</wsse:Security>'


GOOD = username_token  # a good one, to break


def with_text(header: str, element: str, text: str) -> str:
    """`header` with the text of its wsse:`element` replaced."""
    return re.sub(rf"(<wsse:{element}[^>]*>)[^<]*(</wsse:{element}>)", rf"\g<1>{text}\g<2>", header)


# Each header is made when its test runs (fresh timestamps).
@pytest.mark.parametrize(
    "make_header",
    [
        pytest.param(security, id="empty-security"),
        pytest.param(
            lambda: security("<wsse:UsernameToken/>"), id="usernametoken-without-username"
        ),
        pytest.param(
            lambda: GOOD(PASSWORD).replace(
                "<wsse:Username>crm</wsse:Username>", "<wsse:Username/>"
            ),
            id="empty-username",
        ),
        pytest.param(
            lambda: with_text(GOOD(PASSWORD, digest=True), "Nonce", "!!not base64!!"),
            id="nonce-not-base64",
        ),
        pytest.param(
            lambda: GOOD(PASSWORD, digest=True, nonce=os.urandom(64 * 1024)),
            id="huge-nonce",
        ),
        pytest.param(lambda: GOOD(PASSWORD) + GOOD(PASSWORD), id="two-security-headers"),
        pytest.param(
            lambda: GOOD(PASSWORD).replace(WSSE, "urn:not-wsse"), id="security-in-another-ns"
        ),
        pytest.param(
            lambda: (
                GOOD(PASSWORD)
                .replace("<wsse:Password", "<wsse:Passwd", 1)
                .replace("</wsse:Password>", "</wsse:Passwd>", 1)
            ),
            id="password-missing",
        ),
        pytest.param(lambda: GOOD("x" * 200_000), id="huge-password"),
        pytest.param(
            lambda: with_text(GOOD(PASSWORD, digest=True), "Password", "***not base64***"),
            id="digest-not-base64",
        ),
        pytest.param(
            lambda: with_text(GOOD(PASSWORD, digest=True), "Password", ""),
            id="empty-digest",
        ),
    ],
)
async def test_malformed_ws_security_is_a_client_fault(
    endpoint: Soap, make_header: Callable[[], str]
) -> None:
    answer = await endpoint.nothing_stored_by(
        endpoint.call11("/soap/crm-wsse", notification(), action=NOTIFY, header=make_header())
    )
    code, reason, _ = answer.fault()
    assert code == "soap:Client", reason
    assert PASSWORD.encode() not in answer.body


GOOD_ENVELOPE = envelope(notification("c-fuzz"))


@st.composite
def mutated_envelopes(draw: st.DrawFn) -> bytes:
    """The good envelope broken: cut, a byte changed, bytes inserted, or a tag renamed."""
    raw = bytearray(GOOD_ENVELOPE)
    kind = draw(st.sampled_from(["cut", "byte", "insert", "tag", "namespace"]))
    if kind == "cut":
        return bytes(raw[: draw(st.integers(0, len(raw) - 10))])
    # NUL and the C0 controls are never allowed in XML 1.0, and 0xFF is never UTF-8: wherever
    # they land, the envelope is broken (a random byte in a text would still be a valid call).
    if kind == "byte":
        at = draw(st.integers(0, len(raw) - 1))
        raw[at] = draw(st.sampled_from(b"\x00\x01\x08\x0b\x1f\xff"))
        return bytes(raw)
    if kind == "insert":
        at = draw(st.integers(0, len(raw)))
        junk = draw(st.binary(max_size=20)) + draw(st.sampled_from([b"\x00", b"\x02", b"\xfe"]))
        return bytes(raw[:at]) + junk + bytes(raw[at:])
    if kind == "tag":
        tag = [b"n:customerID>", b"x:customerId>", b"n:customerId x='1'>", b"n:customerId/>"]
        return GOOD_ENVELOPE.replace(b"n:customerId>", draw(st.sampled_from(tag)), 1)
    namespace = [b"urn:nothing", b"", b"http://schemas.xmlsoap.org/soap/envelope"]
    return GOOD_ENVELOPE.replace(SOAP11_NS.encode(), draw(st.sampled_from(namespace)))


async def test_mutated_envelopes_are_client_faults_and_store_nothing(endpoint: Soap) -> None:
    answers: list[int] = []

    @settings(
        max_examples=80,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(raw=mutated_envelopes())
    def fuzz(raw: bytes) -> None:
        headers = soap11_headers(NOTIFY)
        answer = requests.post(endpoint.url + "/soap/crm", data=raw, headers=headers, timeout=20)
        assert answer.status_code in (400, 500), (answer.status_code, answer.text[:300])
        if answer.status_code == 500:
            fault = etree.fromstring(answer.content).find(
                f"{{{SOAP11_NS}}}Body/{{{SOAP11_NS}}}Fault"
            )
            assert fault is not None, answer.text[:300]
            code = fault.findtext("faultcode")
            assert code in ("soap:Client", "soap:VersionMismatch"), (raw, answer.text[:500])
        answers.append(answer.status_code)

    await endpoint.nothing_stored_by(asyncio.to_thread(fuzz))
    assert answers
