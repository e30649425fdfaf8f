"""zeep's transport over the bus's one aiohttp session.

zeep ships two transports: `zeep.Transport` (requests, blocking) and `zeep.AsyncTransport`
(httpx). Neither fits: a blocking call would stall the event loop that every flow of the process
shares (or need a thread per call in flight), and httpx is not installed and would bring a second
HTTP stack with its own connection pool, TLS setup and timeouts beside the aiohttp session that
every adapter already shares (`bus.plugins.AdapterContext.session`). `AiohttpTransport` is the
small part of zeep's transport interface that a SOAP call uses: `post_xml` (and `post`), which
send the envelope and answer with the HTTP status, headers and body for zeep to read.

Measured (a throwaway script, not kept: 2,000 UpsertCustomer calls of tests/data/wsdl/
erp-accounts.wsdl, 50 at once, against tests/soap_service.py running in another process, on
2 cores): through this transport about 1,500 calls/s and 0.66 ms of CPU per call, 0.4 ms of it
zeep building and reading envelopes; through zeep's blocking requests transport in a 50-thread
pool (the only way to use it without stalling the loop) about 640 calls/s and 1.6 ms of CPU per
call. zeep's httpx transport was not measured, as httpx is not installed; it would not share the
session's pool whatever its speed. The shared session also means the calls reuse the process's
keep-alive connections and obey its limits.

Every call has a timeout (the whole exchange, connection included) and follows no redirect: a
3xx is answered as it is, since credentials (HTTP auth, a WS-Security header) would otherwise
go wherever it points. Answers larger than `max_response_bytes` are refused, not truncated.
Documents (WSDL, XSD) are never loaded here: `adapters.soap.wsdl` loads them once, at build time.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from lxml import etree  # type: ignore[import-untyped]
from multidict import CIMultiDict, CIMultiDictProxy

from bus.errors import BusError
from bus.http.client import read_limited

DEFAULT_CALL_TIMEOUT_S = 30.0
MAX_RESPONSE_BYTES = 4 * 1024 * 1024


class ResponseTooLargeError(BusError):
    """The answer's body is larger than the transport accepts."""

    def __init__(self, status: int, limit: int) -> None:
        super().__init__(f"the answer (HTTP {status}) is larger than {limit} bytes")
        self.status = status
        self.limit = limit


@dataclass(frozen=True)
class HttpReply:
    """An HTTP answer, with the attributes of `requests.Response` that zeep's reply processing
    reads (`status_code`, `headers`, `content`, `encoding`)."""

    status_code: int
    headers: CIMultiDictProxy[str]
    content: bytes
    encoding: str | None = None

    @property
    def lower_headers(self) -> dict[str, str]:
        """Headers with lower-case names (the last of repeated ones), as replies see them."""
        return {name.lower(): value for name, value in self.headers.items()}


class AiohttpTransport:
    """zeep's async transport interface (`post_xml`, `post`) over an aiohttp session.

    Usage::

        transport = AiohttpTransport(context.session, seconds=30.0)
        reply = await transport.send(address, envelope_bytes, headers, seconds=5.0)

    The session is lent, not owned: `aclose` leaves it open.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        seconds: float = DEFAULT_CALL_TIMEOUT_S,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        self.session = session
        self.seconds = seconds
        self.max_response_bytes = max_response_bytes

    def __repr__(self) -> str:
        return f"AiohttpTransport(seconds={self.seconds:g})"

    async def send(
        self,
        address: str,
        message: bytes,
        headers: Mapping[str, str],
        *,
        seconds: float | None = None,
    ) -> HttpReply:
        """POST `message` to `address`; the answer whatever its status. Raises TimeoutError after
        `seconds` (default: the transport's), aiohttp.ClientError when the connection fails,
        ResponseTooLargeError when the body is over the limit."""
        limit = aiohttp.ClientTimeout(total=self.seconds if seconds is None else seconds)
        async with self.session.post(
            address,
            data=message,
            headers=CIMultiDict(headers),
            timeout=limit,
            allow_redirects=False,
        ) as answer:
            body, more = await read_limited(answer, self.max_response_bytes)
            if more:
                raise ResponseTooLargeError(answer.status, self.max_response_bytes)
            return HttpReply(
                status_code=answer.status,
                headers=CIMultiDictProxy(CIMultiDict(answer.headers)),
                content=body,
                encoding=answer.charset,
            )

    # -- zeep's transport interface --------------------------------------------------------

    async def post(self, address: str, message: bytes | str, headers: Mapping[str, str]) -> Any:
        data = message.encode() if isinstance(message, str) else message
        return await self.send(address, data, headers)

    async def post_xml(self, address: str, envelope: Any, headers: Mapping[str, str]) -> Any:
        return await self.send(address, serialize_envelope(envelope), headers)

    async def get(self, address: str, params: Any, headers: Mapping[str, str]) -> Any:
        raise NotImplementedError("SOAP over HTTP GET bindings is not supported")

    def load(self, url: str) -> bytes:
        raise RuntimeError(
            f"refused to load {url} during a call: documents are loaded once, by load_wsdl"
        )

    async def aclose(self) -> None:
        """Nothing to close: the session belongs to the runtime."""


def serialize_envelope(envelope: Any) -> bytes:
    """The envelope as UTF-8 XML with a declaration, as zeep sends it."""
    data: bytes = etree.tostring(envelope, xml_declaration=True, encoding="utf-8")
    return data
