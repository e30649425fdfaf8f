"""Outbound SOAP: one operation call per event, built from the event by expressions.

```yaml
outbound:
  - name: erp-sync
    from: crm.customer-changed.v1
    soap:
      wsdl: wsdl/erp.wsdl            # a local file (read with no network) or an https URL
      service: ErpService            # optional: when several services offer the operation
      port: ErpPort12                # optional: when several ports do
      operation: UpsertCustomer
      address: ${ERP_URL}            # optional: instead of the WSDL's soap:address
      headers: {TenantHeader: '{"Tenant": "acme"}'}   # SOAP header element -> expression
      wsse: {username: bus, password: ${ERP_PASSWORD}, digest: true, timestamp: true}
      auth: {basic: {user: bus, password: ${ERP_HTTP_PASSWORD}}}   # optional, HTTP level
    map:                             # the operation's input, element by element
      CustomerId: event.customerId
      Address: '{"Street": event.street, "City": event.city}'
    reply: {type: ..., topic: ..., map: {accountId: response.body.AccountId}}
```

The request: the operation's input elements (of the wrapper element in document/literal
wrapped, of the body element in bare, or the message parts) come from `map` (element name ->
expression over `event` and `attributes`; CEL maps and lists make nested and repeated elements),
or without `map` from the event's data as it is. Decimals, dates and timestamps go to zeep as
they are, so they are written exactly. An operation whose body element is of a simple type takes
one value: map it under the part's or the element's name. `headers` adds SOAP header elements:
a global element of the WSDL's schema by its name (`TenantHeader`, or `{namespace}Name`), or any
element named `{namespace}Name`, its content from a map (child elements; in the schema's order
for a declared element, sorted by name for another, as CEL maps have no order) or a value.
`wsse` adds a WS-Security header: a UsernameToken (the password as text, or as a digest with a
nonce and a creation time) and a wsu:Timestamp, made afresh for each call. `auth` is HTTP-level
authentication, the same as a REST call's. The event id goes as `Idempotency-Key`.

What the answer means:

| answer | error |
|---|---|
| 2xx with the output message, or empty (one-way) | none: `Response(status, headers, body)` |
| a fault `Client` (1.1) / `Sender` (1.2), or any other non-Server code | permanent |
| a fault `Server` (1.1) / `Receiver` (1.2) | transient (`Retry-After` honoured) |
| no fault: timeout, connection refused or reset, 408, 425, 429, 5xx but 501 and 505 | transient |
| no fault: another status (3xx: redirects are not followed, 4xx, 501, 505) | permanent |
| 401 | with OAuth2, a new token and one more try; then as above |
| a request the mapping or the WSDL cannot build (an unknown or missing element) | permanent |
| 2xx that is not a SOAP envelope | transient (a gateway's page, a service half up) |
| 2xx whose output does not match the WSDL, or an MTOM (multipart) answer | permanent |

`response.body` is the output message as plain data: the children of the output element as a
mapping (`response.body.AccountId`), repeated elements as lists, decimals as Decimal, dates and
timestamps as date and datetime; a simple-typed output element is its value; one-way: None.

zeep builds the envelope (`zeep.AsyncClient`, its binding's `_create`: body, WS-Addressing,
WS-Security) and reads the output message, and `adapters.soap.transport` sends it over the
process's aiohttp session. These are the steps of zeep's own `SoapBinding.send_async`, taken one
by one so that the HTTP status and headers are seen before the body is read, and so that the
output keeps one shape (zeep's `process_reply` returns the only child of a one-child output
instead of the output, so a reply mapping would break when a service adds an element).
"""

import base64
import hashlib
import os
import re
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import aiohttp
import zeep
import zeep.exceptions
import zeep.helpers
import zeep.loader
from lxml import etree  # type: ignore[import-untyped]
from pydantic import ConfigDict, Field, SecretStr, field_validator
from yarl import URL
from zeep.xsd.valueobjects import AnyObject, CompoundValue

from adapters.soap.faults import EXCERPT_CHARS, fault_error, find_fault
from adapters.soap.transport import (
    AiohttpTransport,
    HttpReply,
    ResponseTooLargeError,
    serialize_envelope,
)
from adapters.soap.wsdl import (
    DEFAULT_LOAD_TIMEOUT_S,
    OperationInfo,
    WsdlDocument,
    hardened_settings,
    load_wsdl,
)
from bus.auth.outbound import OutboundAuth
from bus.auth.settings import OutboundAuthConfig, Secret, Text
from bus.delivery.contract import Response
from bus.errors import ConfigError, DeliveryError, PermanentDeliveryError, TransientDeliveryError
from bus.events.codec import DecodedEvent
from bus.flows.expressions import Expression, ExpressionError, compile_expression
from bus.flows.model import Block, Duration, duration_field
from bus.flows.model import Expression as ExpressionText
from bus.flows.steps.base import attributes_of
from bus.http.client import (
    credentials_error,
    invalid_url_error,
    status_error,
    transport_error,
)
from bus.http.retry_after import parse_retry_after
from bus.inbound.idempotency import HEADER as IDEMPOTENCY_HEADER

OUTBOUND_VARIABLES = ("event", "attributes")
"""What an outbound item's `map` and `headers` expressions see."""
LOOKUP_VARIABLES = ("arguments",)
"""What a lookup's `headers` expressions see: the arguments the enrich step passes."""

_AsyncClient: Any = zeep.AsyncClient
_parse_xml: Any = zeep.loader.parse_xml
_serialize_object: Any = zeep.helpers.serialize_object
_ZeepError: type[Exception] = zeep.exceptions.Error

_ELEMENT_NAME = re.compile(r"(?:\{[^{}\s]+\})?[A-Za-z_][\w.-]*")

# -- settings -------------------------------------------------------------------------------


class WsseSettings(Block):
    """A WS-Security UsernameToken, with a wsu:Timestamp, in each request's SOAP header."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    username: Text = Field(description="The user name.")
    password: Secret = Field(description="The password.")
    digest: bool = Field(
        default=False,
        description="Send the password as a digest (with a nonce and a creation time) "
        "instead of as text.",
    )
    timestamp: bool = Field(default=True, description="Add a wsu:Timestamp.")
    expires_after: Duration = duration_field("5m", "How long after creation the message expires.")
    must_understand: bool = Field(
        default=True, description="Mark the Security header mustUnderstand, as WSS4J and WCF do."
    )


class SoapOutbound(Block):
    """A SOAP operation call per event (or per lookup)."""

    # Settings hold secrets: an error message may quote the input, so it must not.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    wsdl: Text = Field(description="The WSDL: a file path or an http(s) URL.")
    service: Text | None = Field(default=None, description="The service, when there are several.")
    port: Text | None = Field(default=None, description="The port, when there are several.")
    operation: Text = Field(description="The operation to call.")
    address: str | None = Field(
        default=None,
        pattern=r"^https?://\S+$",
        description="The endpoint's URL, instead of the WSDL's soap:address.",
    )
    headers: dict[str, ExpressionText] = Field(
        default_factory=dict,
        description="SOAP header element ({namespace}Name, or a global element's name) -> "
        "expression for its content.",
    )
    wsse: WsseSettings | None = Field(default=None, description="WS-Security UsernameToken.")
    auth: OutboundAuthConfig | None = Field(default=None, description="HTTP authentication.")

    @field_validator("headers")
    @classmethod
    def _header_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _ELEMENT_NAME.fullmatch(name):
                raise ValueError(
                    f"header {name!r} is not an element name: write Name or {{namespace}}Name"
                )
        return value


# -- WS-Security ----------------------------------------------------------------------------

WSSE_NS = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU_NS = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
_PROFILE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0"
PASSWORD_TEXT = _PROFILE + "#PasswordText"
PASSWORD_DIGEST = _PROFILE + "#PasswordDigest"
BASE64_BINARY = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-soap-message-security-1.0#Base64Binary"
)


class UsernameToken:
    """zeep's `wsse` interface (`apply`, `verify`): a WS-Security header with a UsernameToken
    and a wsu:Timestamp, made afresh (nonce, times) each time `apply` is called.

    The digest is Base64(SHA-1(nonce + created + password)) (Username Token Profile 1.1).
    """

    def __init__(
        self,
        username: str,
        password: SecretStr,
        *,
        digest: bool = False,
        timestamp: bool = True,
        expires_after: float = 300.0,
        must_understand: bool = True,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.username = username
        self._password = password
        self.digest = digest
        self.timestamp = timestamp
        self.expires_after = expires_after
        self.must_understand = must_understand
        self.clock = clock

    @classmethod
    def from_settings(cls, settings: WsseSettings) -> "UsernameToken":
        return cls(
            settings.username,
            settings.password,
            digest=settings.digest,
            timestamp=settings.timestamp,
            expires_after=settings.expires_after.total_seconds(),
            must_understand=settings.must_understand,
        )

    def __repr__(self) -> str:
        kind = "digest" if self.digest else "text"
        return f"UsernameToken(username={self.username!r}, password=<hidden>, {kind})"

    def apply(self, envelope: Any, headers: Any) -> tuple[Any, Any]:
        envelope_ns = etree.QName(envelope).namespace
        security = etree.SubElement(
            _soap_header(envelope),
            f"{{{WSSE_NS}}}Security",
            nsmap={"wsse": WSSE_NS, "wsu": WSU_NS},
        )
        if self.must_understand:
            security.set(f"{{{envelope_ns}}}mustUnderstand", "1")
        now = self.clock()
        if self.timestamp:
            stamp = etree.SubElement(security, f"{{{WSU_NS}}}Timestamp")
            stamp.set(f"{{{WSU_NS}}}Id", f"TS-{uuid.uuid4()}")
            etree.SubElement(stamp, f"{{{WSU_NS}}}Created").text = _instant(now)
            expires = now + timedelta(seconds=self.expires_after)
            etree.SubElement(stamp, f"{{{WSU_NS}}}Expires").text = _instant(expires)
        token = etree.SubElement(security, f"{{{WSSE_NS}}}UsernameToken")
        token.set(f"{{{WSU_NS}}}Id", f"UsernameToken-{uuid.uuid4()}")
        etree.SubElement(token, f"{{{WSSE_NS}}}Username").text = self.username
        password = etree.SubElement(token, f"{{{WSSE_NS}}}Password")
        secret = self._password.get_secret_value().encode()
        if self.digest:
            nonce = os.urandom(16)
            created = _instant(now)
            digest = hashlib.sha1(nonce + created.encode() + secret).digest()  # noqa: S324 -- the profile's
            password.set("Type", PASSWORD_DIGEST)
            password.text = base64.b64encode(digest).decode()
            nonce_node = etree.SubElement(token, f"{{{WSSE_NS}}}Nonce")
            nonce_node.set("EncodingType", BASE64_BINARY)
            nonce_node.text = base64.b64encode(nonce).decode()
            etree.SubElement(token, f"{{{WSU_NS}}}Created").text = created
        else:
            password.set("Type", PASSWORD_TEXT)
            password.text = self._password.get_secret_value()
        return envelope, headers

    def verify(self, envelope: Any) -> None:
        """Answers are not signed by a UsernameToken: nothing to verify."""


def _instant(moment: datetime) -> str:
    """UTC with milliseconds and Z, as WSS4J and WCF write them."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _soap_header(envelope: Any) -> Any:
    namespace = etree.QName(envelope).namespace
    header = envelope.find(f"{{{namespace}}}Header")
    if header is None:
        header = etree.Element(f"{{{namespace}}}Header")
        envelope.insert(0, header)
    return header


# -- the call -------------------------------------------------------------------------------


def request_problems(info: OperationInfo, names: list[str]) -> list[tuple[str, str]]:
    """Problems with the names of a request's mapping: (name, message), e.g. for `bus validate`.
    Nested elements (inside a CEL map) are only checked when a call is built."""
    if info.input_is_value:
        accepted = info.input_value_names
        if len(names) != 1 or names[0] not in accepted:
            found = ", ".join(names) or "none"
            return [
                (
                    names[0] if len(names) == 1 else "",
                    f"operation {info.name} takes one value: map it under "
                    f"{' or '.join(accepted)} (found {found})",
                )
            ]
        return []
    known = list(info.input_elements)
    return [
        (name, f"operation {info.name} has no input element {name!r}; its elements: "
         f"{', '.join(known) or 'none'}")
        for name in names
        if name not in known
    ]  # fmt: skip


class _Header:
    """One SOAP header element, resolved against the WSDL once."""

    def __init__(
        self, name: str, expression: Expression, wsdl: WsdlDocument, info: OperationInfo
    ) -> None:
        self.name = name
        self.expression = expression
        request = info.operation.input
        header = getattr(request, "header", None)
        declared = dict(header.type.elements) if header is not None else {}
        self.element = declared.get(name) or wsdl.element(name)
        if self.element is None and not name.startswith("{"):
            raise ConfigError(
                f"SOAP header {name!r}: the WSDL has no header part and no single global element "
                "of that name; name an element the WSDL does not declare as {namespace}Name"
            )

    def build(self, values: Mapping[str, Any]) -> Any:
        value = _zeep_ready(self.expression.evaluate_in(values))
        holder = etree.Element("holder")
        if self.element is None:
            holder.append(_raw_element(self.name, value))
        else:
            content = self.element(**value) if isinstance(value, dict) else self.element(value)
            self.element.render(holder, content)
        return holder[0]


class SoapCall:
    """One operation of one port, called over the shared session: what `SoapDelivery` and
    `SoapLookup` both use. Built synchronously (the WSDL is loaded, or taken from the cache,
    here); ConfigError says what is wrong with the settings."""

    def __init__(
        self,
        settings: SoapOutbound,
        *,
        session: aiohttp.ClientSession,
        auth: OutboundAuth | None,
        call_timeout: float,
        header_variables: tuple[str, ...] = OUTBOUND_VARIABLES,
        wsdl: WsdlDocument | None = None,
    ) -> None:
        self.settings = settings
        self.auth = auth
        self.seconds = call_timeout
        self.wsdl = wsdl or load_wsdl(settings.wsdl, timeout=DEFAULT_LOAD_TIMEOUT_S)
        self.info = self.wsdl.operation(
            settings.operation, service=settings.service, port=settings.port
        )
        address = settings.address or self.info.address
        if not address or not re.match(r"https?://", address):
            raise ConfigError(
                f"SOAP {self.info.name}: the WSDL gives port {self.info.port} no http(s) "
                f"address ({address or 'none'}); set soap.address"
            )
        self.address = address
        self.transport = AiohttpTransport(session, seconds=call_timeout)
        self._settings = hardened_settings()
        wsse = UsernameToken.from_settings(settings.wsse) if settings.wsse else None
        self.client = _AsyncClient(
            self.wsdl.document, wsse=wsse, transport=self.transport, settings=self._settings
        )
        self._headers = [
            _Header(name, compile_expression(source, header_variables), self.wsdl, self.info)
            for name, source in settings.headers.items()
        ]

    def __repr__(self) -> str:
        return f"SoapCall({self.info.name!r}, {self.info.service}/{self.info.port})"

    async def invoke(
        self,
        arguments: Mapping[str, Any],
        *,
        header_values: Mapping[str, Any],
        idempotency_key: str | None = None,
    ) -> Response:
        """Call the operation with `arguments` (element name -> value); the response, or
        TransientDeliveryError / PermanentDeliveryError."""
        args, kwargs = self._arguments(arguments)
        try:
            soap_headers = [header.build(header_values) for header in self._headers]
        except ExpressionError as error:
            raise PermanentDeliveryError(f"cannot build a SOAP header: {error}") from error
        except (TypeError, ValueError, _ZeepError) as error:
            raise PermanentDeliveryError(
                f"cannot build a SOAP header: {_zeep_problem(error)}"
            ) from error
        reply = await self._exchange(args, kwargs, soap_headers, idempotency_key)
        if reply.status_code == 401 and self.auth is not None and await self.auth.refresh():
            reply = await self._exchange(args, kwargs, soap_headers, idempotency_key)
        return self._answer(reply)

    def _arguments(self, arguments: Mapping[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        ready = {name: _zeep_ready(value) for name, value in arguments.items()}
        if not self.info.input_is_value:
            return (), ready
        problems = request_problems(self.info, list(ready))
        if problems:
            raise PermanentDeliveryError(f"cannot build the SOAP request: {problems[0][1]}")
        return (next(iter(ready.values())),), {}

    def _envelope(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], soap_headers: list[Any]
    ) -> tuple[bytes, dict[str, str]]:
        options = {"address": self.address}
        extra = {"_soapheaders": soap_headers} if soap_headers else {}
        try:
            envelope, http_headers = self.info.binding._create(
                self.info.name, args, {**kwargs, **extra}, client=self.client, options=options
            )
        except (TypeError, ValueError, LookupError, _ZeepError) as error:
            raise PermanentDeliveryError(
                f"cannot build the SOAP request for {self.info.name}: {_zeep_problem(error)}"
            ) from error
        return serialize_envelope(envelope), {str(k): str(v) for k, v in http_headers.items()}

    async def _exchange(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        soap_headers: list[Any],
        idempotency_key: str | None,
    ) -> HttpReply:
        # Built for each try: a WS-Security nonce must not be sent twice.
        message, headers = self._envelope(args, kwargs, soap_headers)
        if idempotency_key:
            headers[IDEMPOTENCY_HEADER] = idempotency_key
        query: dict[str, str] = {}
        if self.auth is not None:
            try:
                await self.auth.apply(headers, query)
            except DeliveryError as error:
                raise credentials_error(error) from error
        try:
            address = str(URL(self.address).update_query(query)) if query else self.address
        except ValueError:
            raise invalid_url_error(self.address) from None
        try:
            return await self.transport.send(address, message, headers, seconds=self.seconds)
        except (TimeoutError, aiohttp.ClientError) as error:
            raise transport_error(error, self.address, self.seconds)  # noqa: B904 (its cause is set)
        except ResponseTooLargeError as error:
            raise PermanentDeliveryError(str(error), status=error.status) from error

    def _answer(self, reply: HttpReply) -> Response:
        status = reply.status_code
        headers = reply.lower_headers
        retry_after = parse_retry_after(headers.get("retry-after"))
        excerpt = reply.content[: 4 * EXCERPT_CHARS].decode("utf-8", "replace")[:EXCERPT_CHARS]
        media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media == "multipart/related" and 200 <= status < 300:
            raise PermanentDeliveryError(
                "the answer is multipart/related (MTOM), which is not supported",
                status=status,
                excerpt=excerpt,
            )
        document, problem = self._parsed(reply.content)
        fault = find_fault(document)
        if fault is not None:
            raise fault_error(fault, status=status, retry_after=retry_after)
        if not 200 <= status < 300:
            raise status_error(status, excerpt=excerpt, retry_after=retry_after)
        if not reply.content.strip():
            return Response(status=status, headers=headers, body=None)
        envelope = f"{{{self.info.envelope_namespace}}}Envelope"
        if document is None or document.tag != envelope:
            what = problem or f"its root is {document.tag if document is not None else None}"
            raise TransientDeliveryError(
                f"HTTP {status}, but the answer is not a SOAP {self.info.soap_version} "
                f"envelope: {what}",
                status=status,
                excerpt=excerpt,
            )
        try:
            body = self._output(document)
        except (TypeError, ValueError, LookupError, AttributeError, _ZeepError) as error:
            raise PermanentDeliveryError(
                f"the answer does not match the output of {self.info.name} in the WSDL "
                f"(the call was made): {_zeep_problem(error)}",
                status=status,
                excerpt=excerpt,
            ) from error
        return Response(status=status, headers=headers, body=body)

    def _parsed(self, content: bytes) -> tuple[Any, str | None]:
        """The parsed answer (DTDs, entities and external references refused), or None with
        why not."""
        if not content.strip():
            return None, "it is empty"
        try:
            return _parse_xml(content, None, settings=self._settings), None
        except (_ZeepError, ValueError, etree.LxmlError) as error:
            return None, _zeep_problem(error)

    def _output(self, document: Any) -> Any:
        output = self.info.operation.output
        if output is None or output.body is None:
            return None
        body = document.find(f"{{{self.info.envelope_namespace}}}Body")
        if body is None or not any(isinstance(child.tag, str) for child in body):
            return None
        # zeep's SoapMessage.deserialize without its unwrapping of one-child outputs.
        return plain(output._deserialize_body(body)["body"])


class SoapDelivery:
    """The `Delivery` of one `soap` outbound item."""

    def __init__(
        self,
        name: str,
        settings: SoapOutbound,
        *,
        field_map: Mapping[str, str],
        session: aiohttp.ClientSession,
        auth: OutboundAuth | None,
        call_timeout: float,
        wsdl: WsdlDocument | None = None,
    ) -> None:
        self.name = name
        self.soap = SoapCall(
            settings, session=session, auth=auth, call_timeout=call_timeout, wsdl=wsdl
        )
        info = self.soap.info
        if field_map or info.input_is_value:
            problems = request_problems(info, list(field_map))
        else:
            problems = []
        if problems:
            raise ConfigError(f"outbound {name!r}: map: {problems[0][1]}")
        self._fields = {
            field: compile_expression(source, OUTBOUND_VARIABLES)
            for field, source in field_map.items()
        }

    def __repr__(self) -> str:
        return f"SoapDelivery({self.name!r}, {self.soap!r})"

    async def call(self, decoded: DecodedEvent) -> Response:
        event = decoded.event
        values = {"event": event.data, "attributes": attributes_of(event)}
        try:
            if self._fields:
                arguments = {name: e.evaluate_in(values) for name, e in self._fields.items()}
            else:
                arguments = dict(event.data)
        except ExpressionError as error:
            raise PermanentDeliveryError(f"cannot build the request: {error}") from error
        return await self.soap.invoke(arguments, header_values=values, idempotency_key=event.id)

    async def close(self) -> None:
        """Nothing of its own to close: the session and credentials belong to the runtime."""


# -- values ---------------------------------------------------------------------------------


def _zeep_ready(value: Any) -> Any:
    """A copy of `value` that zeep serialises as meant: containers as dict and list, UUIDs as
    text; Decimal, date, datetime, time, bytes and numbers stay as they are."""
    if isinstance(value, Mapping):
        return {str(key): _zeep_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_zeep_ready(item) for item in value]
    if isinstance(value, UUID):
        return str(value)
    return value


def plain(value: Any) -> Any:
    """zeep's output as plain data: dict, list, str, int, float, bool, Decimal, date, datetime,
    time, timedelta, bytes or None (anything else as its text; xs:any content as XML text)."""
    return _plain(_serialize_object(value, dict))


_KEPT = (str, bool, int, float, Decimal, datetime, date, time, timedelta, bytes)


def _plain(value: Any) -> Any:
    if isinstance(value, CompoundValue):
        value = _serialize_object(value, dict)
    elif isinstance(value, datetime | time) and value.tzinfo is not None:
        value = _standard_zone(value)
    if value is None or isinstance(value, _KEPT):
        return value
    if isinstance(value, AnyObject):
        return _plain(value.value)
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, etree._Element):
        return etree.tostring(value, encoding="unicode")
    return str(value)


def _standard_zone(value: datetime | time) -> datetime | time:
    """The same time with the standard library's zone for its offset (zeep reads zones as
    isodate's own classes)."""
    offset = value.utcoffset()
    if offset is None:
        return value
    return value.replace(tzinfo=UTC if not offset else timezone(offset))


def _raw_element(name: str, value: Any) -> Any:
    """An element the WSDL does not declare: `{namespace}Name`, children for a map's entries
    (in the same namespace, sorted by name), repeated for a list, text for a value."""
    namespace = etree.QName(name).namespace
    node = etree.Element(name)
    _fill(node, value, namespace)
    return node


def _fill(node: Any, value: Any, namespace: str | None) -> None:
    if isinstance(value, Mapping):
        # CEL maps have no order: children come sorted by name, the same for every call.
        for key, item in sorted(value.items(), key=lambda entry: str(entry[0])):
            tag = key if str(key).startswith("{") else etree.QName(namespace, str(key)).text
            for each in item if isinstance(item, list) else [item]:
                child = etree.SubElement(node, tag)
                _fill(child, each, namespace)
    elif value is not None:
        node.text = _xml_text(value)


def _xml_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return str(value)


def _zeep_problem(error: BaseException) -> str:
    """zeep's message, on one line and not too long (a signature can be long)."""
    message = re.sub(r"\s+", " ", str(error) or type(error).__name__).strip()
    return message[:EXCERPT_CHARS]
