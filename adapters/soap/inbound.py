"""Inbound SOAP: an operation of a WSDL, served at a path, whose calls become canonical events.

```yaml
inbound:
  - name: erp-customer-notify
    soap:
      path: /soap/crm                 # where it is served (GET ?wsdl, POST calls)
      wsdl: crm.wsdl                  # the WSDL: a file (the plugin reads a relative path
                                      # from the flow file's directory) or an http(s) URL
      service: CrmService             # optional, when the WSDL has several
      port: CrmPort                   # optional: only this port (and its SOAP version)
      operation: NotifyCustomer       # the operation this item handles
      response: {Ack: 'true', CustomerId: event.customerId}   # over `event` and `attributes`
      auth: {wsse: {users: {crm: "${CRM_PASSWORD}"}}}         # or {basic: {users: {...}}}
                                      # or {anonymous: true}; omitted: only on a loopback host
      max_body: 512KiB
    event:
      type: com.acme.crm.CustomerChanged
      key: body.customerId            # `body`: the input message as plain data; `headers`
      map: {customerId: body.customerId, ...}
    topic: crm.customer-changed.v1
```

Several items may share a path (and then the same wsdl, service, port, auth and max_body): one
per operation. Without `port`, every SOAP port of the service is served at once, SOAP 1.1 and
1.2 alike, each request answered in its own version.

A POST goes through these stages; the first that fails answers with a Fault (HTTP 500, in the
request's SOAP version, see `envelope`), and nothing is stored:

| stage | failure | fault |
|---|---|---|
| size | more than `max_body` bytes | Client/Sender `body-too-large` |
| media type | not text/xml (1.1) or application/soap+xml (1.2) | Client `unsupported-media-type` |
| HTTP Basic | missing or wrong credentials (+ WWW-Authenticate) | Client `unauthenticated` |
| XML | not well-formed; a DOCTYPE (XXE, entity bombs), a PI; too deep or big | `malformed-xml` |
| envelope | not a SOAP Envelope; an unknown envelope namespace | Client; VersionMismatch |
| WS-Security | no, wrong, stale or replayed UsernameToken | Client `unauthenticated` |
| dispatch | no served operation for the SOAPAction / body element | Client `unknown-operation` |
| headers | a mustUnderstand header block we do not process | MustUnderstand |
| WSDL types | the body does not validate against the WSDL's schema | Client `invalid-request` |
| event | a mapped field missing, or the event invalid | Client `invalid-event` |
| Kafka | not acknowledged in time | Server/Receiver `unavailable` + Retry-After |

Then, and only then, the answer: the operation's declared response message (HTTP 200), built by
zeep from `response:` over the stored event; a one-way operation gets HTTP 202 with no body.

The operation: the SOAPAction header (SOAP 1.1), the `action` parameter of the Content-Type
(SOAP 1.2) or a `wsa:Action` header, when it names an operation served here; else the body's
element (document/literal: the input part's element). The body is validated against the WSDL's
types with libxml2's XML Schema validator (zeep's parser turns an invalid value into None
without a word), then read into plain data by zeep: xs:int as int, xs:decimal as Decimal,
xs:dateTime as datetime, repeated elements as lists, absent optional ones as None.

Event ids: an `Idempotency-Key` header, else a WS-Addressing `wsa:MessageID`, gives an id
derived from the item's name and the key (a retry is the same event); else a random one.
`GET <path>?wsdl` returns the WSDL with each served port's address set to the URL it was
fetched at (from Host, or X-Forwarded-Host/-Proto behind a proxy), and the documents it imports
at `?xsd=<n>` (their references rewritten accordingly). The WSDL is public: ?wsdl asks no
credentials.
"""

import copy
import functools
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import aiohttp
import zeep.exceptions
from aiohttp import web
from lxml import etree  # type: ignore[import-untyped]
from pydantic import ConfigDict, Field, ValidationError
from zeep import loader
from zeep.xsd import context as xsd_context

from adapters.soap.envelope import (
    BY_NAME,
    SOAP11,
    Envelope,
    SoapFault,
    SoapVersion,
    action_parameter,
    read_envelope,
    receiver_fault,
    sender_fault,
    soap_action_header,
    version_of_media_type,
)
from adapters.soap.outbound import plain
from adapters.soap.wsdl import PortInfo, WsdlDocument, load_wsdl
from bus.auth.basic import BasicAuth
from bus.auth.settings import AuthBlock, BasicInbound, OneOf, Secret, UserName
from bus.auth.wsse import SECURITY, UsernameTokenAuth
from bus.errors import AuthenticationError, ConfigError, SchemaError
from bus.events.catalog import SchemaCatalog
from bus.events.event import Event
from bus.flows.expressions import Expression as CompiledExpression
from bus.flows.expressions import ExpressionError, compile_expression
from bus.flows.loading import settings_problems
from bus.flows.model import (
    DEFAULT_MAX_BODY,
    Block,
    ByteCount,
    Duration,
    Expression,
    Inbound,
    KeyPath,
    duration_field,
)
from bus.flows.steps.base import attributes_of
from bus.http.problem import FieldProblem, Problem
from bus.inbound import idempotency
from bus.inbound.body import read_body
from bus.inbound.ingest import RETRY_AFTER_S, EventTooLargeError, Ingest, StorageUnavailableError
from bus.inbound.mapping import InboundMapping, MappingError

log = logging.getLogger(__name__)

# zeep is untyped at these edges: the names are the boundary, typed as Any on purpose.
_absolute_location: Any = loader.absolute_location
_XmlParserContext: Any = xsd_context.XmlParserContext

INBOUND_VARIABLES = ("body", "headers")
"""What an item's `event:` expressions see: the input message as plain data, and the HTTP
headers (names in lower case)."""
RESPONSE_VARIABLES = ("event", "attributes")
"""What `response:` expressions see: the stored event's data and its CloudEvents attributes."""

WSDL_NS = "http://schemas.xmlsoap.org/wsdl/"
XSD_NS = "http://www.w3.org/2001/XMLSchema"
_ADDRESS_TAGS = frozenset(
    {
        "{http://schemas.xmlsoap.org/wsdl/soap/}address",
        "{http://schemas.xmlsoap.org/wsdl/soap12/}address",
    }
)
WSA_NAMESPACES = (
    "http://www.w3.org/2005/08/addressing",
    "http://schemas.xmlsoap.org/ws/2004/08/addressing",
)
_MAX_MESSAGE_ID = idempotency.MAX_KEY_LENGTH
_HOST = re.compile(r"[A-Za-z0-9.\-]+(?::\d{1,5})?|\[[0-9A-Fa-f:.]+\](?::\d{1,5})?")

# -- settings -------------------------------------------------------------------------------------


class WsseInbound(AuthBlock):
    """WS-Security UsernameToken (password as text or digest) in the envelope's header."""

    users: dict[UserName, Secret] = Field(
        min_length=1, description="User name -> password of each caller."
    )
    tolerance: Duration = duration_field(
        "5m", "How far a Created time may be from our clock, either way."
    )

    def build(self) -> UsernameTokenAuth:
        users = {user: password.get_secret_value() for user, password in self.users.items()}
        return UsernameTokenAuth(users, tolerance=self.tolerance.total_seconds())


class SoapInboundAuth(OneOf):
    """How the callers of a SOAP endpoint prove who they are: exactly one of the keys."""

    _EXAMPLES: ClassVar[str] = "wsse: {users: {crm: ${CRM_PASSWORD}}}"

    basic: BasicInbound | None = Field(default=None, description="HTTP Basic user and password.")
    wsse: WsseInbound | None = Field(
        default=None, description="A WS-Security UsernameToken in the SOAP header."
    )
    anonymous: Literal[True] | None = Field(
        default=None,
        description="true: anyone may call, on purpose (without auth, an endpoint is only "
        "allowed on a loopback http.host).",
    )


_PATH = r"/(?:[A-Za-z0-9._~!$&'()*+,;=:@-]+/?)*"
_NAME = r"[A-Za-z_][A-Za-z0-9_.-]*"


class SoapInbound(Block):
    """The `soap:` settings of an inbound item: one operation of a WSDL, served at `path`."""

    # Settings hold secrets: an error message may quote the input, so it must not.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    path: Annotated[str, Field(pattern=f"^{_PATH}$")] = Field(
        description="The path served: POST for calls, GET ?wsdl for the WSDL."
    )
    wsdl: Annotated[str, Field(min_length=1)] = Field(
        description="The WSDL: a file (relative: to the flow file's directory) or an http(s) URL."
    )
    service: Annotated[str, Field(pattern=f"^{_NAME}$")] | None = Field(
        default=None, description="The WSDL service; needed when it has several."
    )
    port: Annotated[str, Field(pattern=f"^{_NAME}$")] | None = Field(
        default=None,
        description="Serve this port only; omitted: every SOAP port of the service (1.1, 1.2).",
    )
    operation: Annotated[str, Field(pattern=f"^{_NAME}$")] = Field(
        description="The operation this item handles."
    )
    response: dict[str, Expression] | None = Field(
        default=None,
        description="The response message, element -> expression over event and attributes; "
        "omitted for one-way operations.",
    )
    auth: SoapInboundAuth | None = Field(
        default=None,
        description="Who may call; omitted: refused unless http.host is a loopback address "
        "(anonymous: true lets anyone call on purpose).",
    )
    max_body: ByteCount = Field(
        default=DEFAULT_MAX_BODY, description="Largest accepted request; larger ones get a Fault."
    )


# -- configuration problems -----------------------------------------------------------------------


class SoapSettingError(ConfigError):
    """A problem with one inbound item's settings: `at` is the key path below the item."""

    def __init__(self, at: KeyPath, message: str) -> None:
        super().__init__(message)
        self.at = at
        self.message = message


def _problem_at(at: KeyPath, message: str) -> SoapSettingError:
    return SoapSettingError(at, message)


def check_soap_inbound(item: Inbound, catalog: SchemaCatalog) -> list[tuple[KeyPath, str]]:
    """Everything wrong with one `soap` inbound item, offline (the WSDL is loaded): for
    `bus validate`. Key paths are below the item, e.g. ("soap", "operation")."""
    try:
        settings = SoapInbound.model_validate(item.config)
    except ValidationError as invalid:
        return [
            ((item.adapter, *at), message)
            for at, message in settings_problems(invalid, item.config)
        ]
    try:
        wsdl = _load(settings)
        ports = _select_ports(wsdl, settings)
        _served(item, settings, wsdl, ports, catalog)
    except SoapSettingError as problem:
        return [(problem.at, problem.message)]
    return []


# -- what is served -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Binding:
    """An operation as one SOAP version's binding serves it."""

    version: SoapVersion
    port: PortInfo
    operation: Any
    """zeep's SoapOperation."""
    action: str | None
    body_elements: tuple[str, ...]
    """Clark names of the elements the Body holds, in order."""
    multipart: bool
    """Several body parts: zeep reads the Body itself, else its one element."""
    header_elements: frozenset[str]
    one_way: bool


@dataclass(frozen=True)
class _Served:
    """One inbound item: an operation and what its calls become."""

    item: Inbound
    operation: str
    bindings: Mapping[SoapVersion, _Binding]
    mapping: InboundMapping
    response: Mapping[str, CompiledExpression]
    response_value: bool
    """The response element is of a simple type: the one mapped value is the message."""

    def describe(self, version: SoapVersion) -> str:
        binding = self.bindings[version]
        body = ", ".join(binding.body_elements) or "an empty body"
        action = f"SOAPAction {binding.action!r}, " if binding.action else ""
        return f"{self.operation} ({action}body {body})"


def _load(settings: SoapInbound) -> WsdlDocument:
    try:
        return load_wsdl(settings.wsdl)
    except ConfigError as error:
        raise _problem_at(("soap", "wsdl"), str(error)) from None


def _select_ports(wsdl: WsdlDocument, settings: SoapInbound) -> dict[SoapVersion, PortInfo]:
    """The ports served, one per SOAP version."""
    ports = [
        port
        for port in wsdl.ports()
        if settings.service in (None, port.service) and settings.port in (None, port.port)
    ]
    listed = ", ".join(
        f"service {p.service}, port {p.port} ({p.soap_version})" for p in wsdl.ports()
    )
    if not ports:
        at = ("soap", "port") if settings.port else ("soap", "service")
        raise _problem_at(at, f"no such SOAP port in {wsdl.location}; it has: {listed}")
    services = sorted({port.service for port in ports})
    if len(services) > 1:
        raise _problem_at(
            ("soap", "service"),
            f"{wsdl.location} has several services ({', '.join(services)}); choose one with "
            "service:",
        )
    chosen: dict[SoapVersion, PortInfo] = {}
    for port in ports:
        version = BY_NAME[port.soap_version]
        first = chosen.setdefault(version, port)
        if first.binding_name != port.binding_name:
            raise _problem_at(
                ("soap", "port"),
                f"service {port.service} has several {version} ports with different bindings "
                f"({first.port}, {port.port}); choose one with port:",
            )
    return chosen


def _served(
    item: Inbound,
    settings: SoapInbound,
    wsdl: WsdlDocument,
    ports: Mapping[SoapVersion, PortInfo],
    catalog: SchemaCatalog,
) -> _Served:
    name = settings.operation
    bindings: dict[SoapVersion, _Binding] = {}
    for version, port in ports.items():
        if name in port.operations:
            bindings[version] = _binding(wsdl, version, port, name)
    if not bindings:
        known = sorted({op for port in ports.values() for op in port.operations})
        raise _problem_at(
            ("soap", "operation"),
            f"no operation {name!r} in {wsdl.location} (ports "
            f"{', '.join(p.port for p in ports.values())}); operations: {', '.join(known)}",
        )
    first = next(iter(bindings.values()))
    response, value = _response(settings, first)
    try:
        mapping = InboundMapping.compile(item.event, catalog, INBOUND_VARIABLES, whole="body")
    except ExpressionError as error:
        raise _problem_at(("event",), str(error)) from None
    except SchemaError as error:
        raise _problem_at(("event", "type"), str(error)) from None
    return _Served(item, name, bindings, mapping, response, value)


def _binding(wsdl: WsdlDocument, version: SoapVersion, port: PortInfo, name: str) -> _Binding:
    try:
        info = wsdl.operation(name, service=port.service, port=port.port)
    except ConfigError as error:
        raise _problem_at(("soap", "operation"), str(error)) from None
    operation = info.operation
    at = ("soap", "operation")
    if info.style != "document":
        raise _problem_at(
            at,
            f"operation {name} of port {port.port} is {info.style} style; inbound SOAP serves "
            "document/literal operations (rpc is not supported)",
        )
    request = operation.input
    parts = list(request.abstract.parts.items()) if request is not None else []
    untyped = [part for part, value in parts if value.element is None]
    if untyped:
        raise _problem_at(
            at,
            f"operation {name}'s input part(s) {', '.join(untyped)} use type= instead of "
            "element=, which document/literal does not allow (WS-I Basic Profile R2204)",
        )
    body = request.body if request is not None else None
    multipart = bool(getattr(request, "_is_body_wrapped", False))
    if body is None:
        elements: tuple[str, ...] = ()
    elif multipart:
        elements = tuple(_clark(child.qname) for _, child in body.type.elements)
    else:
        elements = (_clark(body.qname),)
    header = getattr(request, "header", None)
    header_elements = frozenset(
        _clark(child.qname)
        for _, child in (getattr(header.type, "elements", []) if header is not None else [])
        if getattr(child, "qname", None) is not None
    )
    return _Binding(
        version=version,
        port=port,
        operation=operation,
        action=info.soap_action,
        body_elements=elements,
        multipart=multipart,
        header_elements=header_elements,
        one_way=info.one_way,
    )


def _response(
    settings: SoapInbound, binding: _Binding
) -> tuple[dict[str, CompiledExpression], bool]:
    """The compiled `response:` mapping, and whether the response is a single value."""
    name = settings.operation
    declared = settings.response
    if binding.one_way:
        if declared is not None:
            raise _problem_at(
                ("soap", "response"),
                f"operation {name} is one-way (the WSDL declares no output message): the caller "
                "gets HTTP 202 once the event is stored; remove response",
            )
        return {}, False
    body = binding.operation.output.body
    element = _clark(body.qname).split("}")[-1] if getattr(body, "qname", None) else "output"
    children: list[tuple[str, Any]] = list(getattr(body.type, "elements", None) or [])
    value = not hasattr(body.type, "elements")
    if value:
        allowed, required = [element], [element]
    elif getattr(binding.operation.output, "_is_body_wrapped", False):
        allowed = [part for part, _ in children]
        required = allowed
    else:
        allowed = [child for child, _ in children] + [a for a, _ in body.type.attributes]
        required = [
            child
            for child, definition in children
            if not child.startswith("_value_") and not getattr(definition, "is_optional", True)
        ]
    mapped = declared or {}
    for key in mapped:
        if key not in allowed:
            raise _problem_at(
                ("soap", "response", key),
                f"{element} (the response of {name}) has no {key!r}; it has: {', '.join(allowed)}",
            )
    missing = [child for child in required if child not in mapped]
    if missing:
        example = ", ".join(f"{child}: ..." for child in missing)
        raise _problem_at(
            ("soap", "response"),
            f"operation {name} answers {element}, which requires {', '.join(missing)}: map "
            f"them from the stored event, e.g. response: {{{example}}} (expressions see event "
            "and attributes)",
        )
    compiled = {}
    for key, source in mapped.items():
        try:
            compiled[key] = compile_expression(source, RESPONSE_VARIABLES)
        except ExpressionError as error:
            raise _problem_at(("soap", "response", key), str(error)) from None
    return compiled, value


def _clark(qname: Any) -> str:
    return str(etree.QName(qname).text)


# -- the WSDL's types as an XML Schema ------------------------------------------------------------


def _hardened_parser() -> Any:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


@functools.lru_cache(maxsize=64)
def _schema(wsdl: WsdlDocument) -> Any:
    """libxml2's XML Schema of every schema in the WSDL (inline, and what they import), to
    validate bodies with. Only documents zeep read when loading the WSDL are read."""
    documents: dict[str, bytes] = {}
    by_namespace: dict[str | None, list[str]] = {}
    for location, raw in wsdl.sources.items():
        root = etree.fromstring(raw, _hardened_parser(), base_url=location)
        if etree.QName(root).text != f"{{{WSDL_NS}}}definitions":
            continue
        for index, schema in enumerate(root.iterfind(f"{{{WSDL_NS}}}types/{{{XSD_NS}}}schema")):
            # On its own, with every namespace declaration in scope at its place in the WSDL
            # (QNames in attribute values, type="tns:Customer", need them).
            alone = etree.Element(schema.tag, nsmap=schema.nsmap, attrib=dict(schema.attrib))
            alone.text = schema.text
            alone.extend(copy.deepcopy(child) for child in schema)
            name = f"{location}.bus-schema-{index}.xsd"
            documents[name] = etree.tostring(alone)
            by_namespace.setdefault(schema.get("targetNamespace"), []).append(name)
    wrapper = etree.Element(f"{{{XSD_NS}}}schema", nsmap={"xs": XSD_NS})
    for namespace, names in by_namespace.items():
        if namespace is None:
            for name in names:
                etree.SubElement(wrapper, f"{{{XSD_NS}}}include", schemaLocation=name)
            continue
        location = names[0]
        if len(names) > 1:  # one import per namespace: libxml2 skips a second one
            group = etree.Element(
                f"{{{XSD_NS}}}schema", nsmap={"xs": XSD_NS}, targetNamespace=namespace
            )
            for name in names:
                etree.SubElement(group, f"{{{XSD_NS}}}include", schemaLocation=name)
            location = f"{wsdl.location}.bus-group-{len(documents)}.xsd"
            documents[location] = etree.tostring(group)
        etree.SubElement(
            wrapper, f"{{{XSD_NS}}}import", namespace=namespace, schemaLocation=location
        )
    known = {**wsdl.sources, **documents}

    class _Known(etree.Resolver):  # type: ignore[misc]
        def resolve(self, url: str, pubid: object, context: object) -> Any:
            content = known.get(url)
            if content is None:  # nothing but what zeep read: no file, no network
                return self.resolve_string(b"", context)
            return self.resolve_string(content, context, base_url=url)

    parser = _hardened_parser()
    parser.resolvers.add(_Known())
    try:
        root = etree.fromstring(
            etree.tostring(wrapper), parser, base_url=f"{wsdl.location}.bus-types.xsd"
        )
        return etree.XMLSchema(root)
    except (etree.XMLSchemaParseError, etree.XMLSyntaxError) as error:
        raise ConfigError(
            f"WSDL {wsdl.location}: its types cannot be compiled to validate requests: {error}"
        ) from None


# -- the documents served at ?wsdl ----------------------------------------------------------------


class _Documents:
    """The WSDL and what it imports, as served: `?wsdl` is the WSDL, `?xsd=<n>` the others."""

    def __init__(self, wsdl: WsdlDocument, ports: Sequence[PortInfo]) -> None:
        locations = [wsdl.location, *(key for key in wsdl.sources if key != wsdl.location)]
        self._locations = locations
        self._index = {location: index for index, location in enumerate(locations)}
        self._roots = [
            etree.fromstring(wsdl.sources[location], _hardened_parser(), base_url=location)
            for location in locations
        ]
        self._ports = {(port.service, port.port) for port in ports}

    def __len__(self) -> int:
        return len(self._locations)

    def render(self, index: int, url: str) -> bytes:
        """Document `index` with references to the others and the served ports' addresses
        pointing at `url`, the endpoint's URL as the caller sees it."""
        root = copy.deepcopy(self._roots[index])
        location = self._locations[index]
        for element in root.iter(
            f"{{{XSD_NS}}}import", f"{{{XSD_NS}}}include", f"{{{XSD_NS}}}redefine"
        ):
            self._point(element, "schemaLocation", location, url)
        for element in root.iter(f"{{{WSDL_NS}}}import"):
            self._point(element, "location", location, url)
        for service in root.iterfind(f"{{{WSDL_NS}}}service"):
            for port in service.iterfind(f"{{{WSDL_NS}}}port"):
                if (service.get("name"), port.get("name")) not in self._ports:
                    continue
                for address in port:
                    if address.tag in _ADDRESS_TAGS:
                        address.set("location", url)
        result: bytes = etree.tostring(root, xml_declaration=True, encoding="utf-8")
        return result

    def _point(self, element: Any, attribute: str, base: str, url: str) -> None:
        reference = element.get(attribute)
        if not reference:
            return
        target = self._index.get(str(_absolute_location(reference, base)))
        if target is not None:
            element.set(attribute, f"{url}?xsd={target}")


# -- the endpoint ---------------------------------------------------------------------------------


class SoapEndpoint:
    """One served path: the operations of one WSDL port (or of each SOAP version's port)."""

    def __init__(
        self,
        *,
        path: str,
        wsdl: WsdlDocument,
        served: Sequence[_Served],
        basic: BasicAuth | None,
        wsse: UsernameTokenAuth | None,
        max_body: int,
        ingest: Ingest,
        catalog: SchemaCatalog,
    ) -> None:
        self.path = path
        self.wsdl = wsdl
        self.served = tuple(served)
        self.basic = basic
        self.wsse = wsse
        self.max_body = max_body
        self.ingest = ingest
        self.catalog = catalog
        self.versions = sorted(
            {version for item in served for version in item.bindings}, key=lambda v: v.name
        )
        ports = {b.port for item in served for b in item.bindings.values()}
        self.documents = _Documents(wsdl, sorted(ports, key=lambda p: p.port))
        self.schema = _schema(wsdl)

    def __repr__(self) -> str:
        operations = ", ".join(item.operation for item in self.served)
        return f"SoapEndpoint({self.path!r}, {self.wsdl.location!r}, [{operations}])"

    # -- GET ?wsdl

    async def handle_get(self, request: web.Request) -> web.Response:
        query = {key.lower(): value for key, value in request.query.items()}
        index: int | None = None
        if "wsdl" in query and not query["wsdl"]:
            index = 0
        else:
            wanted = query.get("xsd") or query.get("wsdl")
            if wanted is not None and wanted.isdigit() and int(wanted) < len(self.documents):
                index = int(wanted)
        if index is None:
            raise Problem(
                404,
                "not-found",
                "No such document",
                f"GET {self.path}?wsdl returns the WSDL (and ?xsd=<n> the documents it "
                f"imports); SOAP calls are POSTed to {self.path}",
            )
        body = self.documents.render(index, _public_url(request, self.path))
        return web.Response(body=body, content_type="text/xml", charset="utf-8")

    # -- POST

    async def handle_post(self, request: web.Request) -> web.Response:
        media = version_of_media_type(request.headers.get("Content-Type"))
        call = _Call(media or SOAP11)
        try:
            return await self._call(request, call, media)
        except SoapFault as fault:
            return fault.response(call.version)
        except Exception:
            # A bug of ours: logged with its traceback, answered as a Server fault without it.
            log.exception("POST %s failed", self.path)
            failed = receiver_fault(
                "the call failed on our side (it is logged); the event may not be stored: send "
                "it again, with the same Idempotency-Key or wsa:MessageID",
                "internal-error",
            )
            return failed.response(call.version)

    async def _call(
        self, request: web.Request, call: "_Call", media: SoapVersion | None
    ) -> web.Response:
        try:
            raw = await read_body(request, self.max_body)
        except Problem as problem:
            raise sender_fault(problem.detail, problem.slug) from None
        if media is None:
            sent = request.headers.get("Content-Type", "none")
            raise sender_fault(
                "a SOAP call is sent as text/xml (SOAP 1.1) or application/soap+xml (SOAP 1.2); "
                f"the request said Content-Type: {sent[:100]}",
                "unsupported-media-type",
            )
        if self.basic is not None:
            try:
                self.basic.verify(request.headers)
            except AuthenticationError as refused:
                raise _unauthenticated(refused) from None
        envelope = read_envelope(raw, media)
        call.version = envelope.version
        nonce = self._verify_wsse(envelope) if self.wsse is not None else None
        served, binding = self._dispatch(request, envelope)
        self._check_must_understand(envelope, binding)
        body = self._body(envelope, served, binding)
        values = {
            "body": body,
            "headers": {name.lower(): value for name, value in request.headers.items()},
        }
        name = served.item.name
        try:
            event = served.mapping.event(
                self.catalog,
                values,
                event_id=self._event_id(request, envelope, name),
                source=f"/inbound/{name}",
            )
        except MappingError as invalid:
            raise sender_fault(
                str(invalid),
                "invalid-event",
                problems=[
                    FieldProblem(field or "<event>", text) for field, text in invalid.problems
                ],
                body_fault=True,
            ) from None
        # The response is made before the event is stored: a response mapping that fails must
        # not leave a stored event behind a fault (the caller would send it again, a new event).
        answer = (
            web.Response(status=202) if binding.one_way else self._respond(served, binding, event)
        )
        try:
            await self._store(served, event)
        except BaseException:
            # Not stored: the caller is told to send it again, and may send the very same
            # envelope; its nonce must not then count as a replay.
            if nonce is not None and self.wsse is not None:
                self.wsse.nonces.forget(*nonce)
            raise
        return answer

    def _verify_wsse(self, envelope: Envelope) -> tuple[str, bytes] | None:
        """The user and nonce that authenticated (None without a nonce); a Fault otherwise."""
        assert self.wsse is not None  # noqa: S101 -- called only with wsse set
        blocks = [block for block in envelope.blocks_for_us() if block.tag == SECURITY]
        if len(blocks) > 1:
            raise sender_fault(
                "authentication failed: several wsse:Security headers are addressed to us; "
                "send one",
                "unauthenticated",
            )
        try:
            user, nonce = self.wsse.verify_token(blocks[0] if blocks else None, now=time.time())
        except AuthenticationError as refused:
            raise _unauthenticated(refused) from None
        return None if nonce is None else (user, nonce)

    def _dispatch(self, request: web.Request, envelope: Envelope) -> tuple[_Served, _Binding]:
        version = envelope.version
        candidates = [
            (served, served.bindings[version])
            for served in self.served
            if version in served.bindings
        ]
        if not candidates:
            spoken = " and ".join(str(v) for v in self.versions)
            raise sender_fault(
                f"this endpoint speaks {spoken}, not {version}; send a "
                f"{self.versions[0]} envelope as {self.versions[0].media_type}",
                "unsupported-soap-version",
            )
        action = _action(request, envelope)
        found = tuple(_clark(element) for element in envelope.body_elements())
        chosen = None
        if action is not None:
            named = [pair for pair in candidates if pair[1].action == action]
            if len(named) == 1:
                chosen = named[0]
        if chosen is None:
            matching = [pair for pair in candidates if pair[1].body_elements == found]
            if len(matching) > 1:
                listed = "; ".join(
                    f"{served.operation}: {binding.action!r}"
                    for served, binding in matching
                    if binding.action
                )
                raise sender_fault(
                    f"the body ({', '.join(found) or 'empty'}) is the input of several operations"
                    f" served here; say which with the SOAPAction ({listed})",
                    "unknown-operation",
                )
            if not matching:
                listed = "; ".join(served.describe(version) for served, _ in candidates)
                said = f"SOAPAction {action!r} and " if action else ""
                raise sender_fault(
                    f"no operation served here matches {said}the body "
                    f"({', '.join(found) or 'empty'}); operations: {listed}",
                    "unknown-operation",
                )
            chosen = matching[0]
        served, binding = chosen
        if binding.body_elements != found:
            expected = ", ".join(binding.body_elements) or "an empty body"
            raise sender_fault(
                f"operation {served.operation} (SOAPAction {action!r}) takes {expected} in the "
                f"body; the body holds {', '.join(found) or 'nothing'}",
                "invalid-request",
                problems=[FieldProblem("Body", f"expected {expected}")],
                body_fault=True,
            )
        return chosen

    def _check_must_understand(self, envelope: Envelope, binding: _Binding) -> None:
        understood = set(binding.header_elements)
        if self.wsse is not None:
            understood.add(SECURITY)
        refused = [
            _clark(block)
            for block in envelope.blocks_for_us()
            if envelope.must_understand(block)
            and _clark(block) not in understood
            and etree.QName(block).namespace not in WSA_NAMESPACES
        ]
        if refused:
            raise SoapFault(
                "must-understand",
                f"header block(s) {', '.join(refused)} are marked mustUnderstand, and this "
                "endpoint does not process them; leave them out or unmark them",
                "must-understand",
                not_understood=refused,
            )

    def _body(self, envelope: Envelope, served: _Served, binding: _Binding) -> Any:
        """The body, validated against the WSDL's types, as plain data."""
        elements = envelope.body_elements()
        for element in elements:
            if not self.schema.validate(element):
                error = next(iter(self.schema.error_log))
                where = str(error.path or "")
                message = str(error.message)
                raise sender_fault(
                    f"the {served.operation} request does not match the WSDL's types: {message}"
                    + (f" (at {where})" if where else ""),
                    "invalid-request",
                    problems=[FieldProblem(where or _clark(element), message)],
                    body_fault=True,
                )
        message = binding.operation.input
        if message is None or message.body is None:
            return {}
        context = _XmlParserContext(settings=self.wsdl.document.settings)
        source = envelope.body if binding.multipart else elements[0]
        try:
            value = message.body.parse(source, self.wsdl.document.types, context=context)
        except (zeep.exceptions.Error, ValueError, TypeError) as error:
            raise sender_fault(
                f"the {served.operation} request cannot be read: {error}",
                "invalid-request",
                body_fault=True,
            ) from None
        return plain(value)

    def _event_id(self, request: web.Request, envelope: Envelope, name: str) -> str:
        key = request.headers.get(idempotency.HEADER)
        if key is not None:
            why = idempotency.key_problem(key)
            if why is not None:
                raise sender_fault(why, "bad-idempotency-key")
            return idempotency.event_id_for(name, key)
        message_id = _message_id(envelope)
        if message_id is not None:
            return idempotency.event_id_for(name, f"wsa:MessageID:{message_id}")
        return idempotency.event_id_for(name, None)

    async def _store(self, served: _Served, event: Event) -> None:
        try:
            await self.ingest.store(served.item.topic, event, item=served.item.name)
        except StorageUnavailableError as unavailable:
            log.warning("%s: %s", served.item.name, unavailable)
            raise receiver_fault(
                "the event was not stored; retry (with the same Idempotency-Key or "
                "wsa:MessageID, so that it stays one event): Kafka did not acknowledge it in time",
                "unavailable",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            ) from None
        except EventTooLargeError as too_large:
            raise sender_fault(str(too_large), "event-too-large") from None

    def _respond(self, served: _Served, binding: _Binding, event: Event) -> web.Response:
        values = {"event": event.data, "attributes": attributes_of(event)}
        try:
            mapped = {name: expr.evaluate_in(values) for name, expr in served.response.items()}
            output = binding.operation.output
            if served.response_value:
                message = output.serialize(*mapped.values())
            else:
                message = output.serialize(**mapped)
            envelope = message.content
            for element in envelope.iterfind(f"{{{binding.version.namespace}}}Body/*"):
                if not self.schema.validate(element):
                    raise ValueError(str(next(iter(self.schema.error_log)).message))
        except (ExpressionError, zeep.exceptions.Error, ValueError, TypeError) as error:
            log.error("%s: the response to event %s failed: %s", served.item.name, event.id, error)
            raise receiver_fault(
                f"the response message could not be made ({error}), so the event was not "
                f"stored; the response mapping of inbound {served.item.name} needs fixing",
                "response-failed",
            ) from None
        body: bytes = etree.tostring(envelope, xml_declaration=True, encoding="utf-8")
        return web.Response(
            status=200, body=body, content_type=binding.version.media_type, charset="utf-8"
        )


@dataclass
class _Call:
    version: SoapVersion
    """The request's SOAP version as far as known: the Fault's shape."""


def _unauthenticated(refused: AuthenticationError) -> SoapFault:
    challenge = {"WWW-Authenticate": refused.challenge} if refused.challenge else {}
    return sender_fault(
        f"authentication failed: {refused.reason}", "unauthenticated", headers=challenge
    )


def _action(request: web.Request, envelope: Envelope) -> str | None:
    """What the caller says the operation is: SOAPAction (1.1), the action parameter (1.2),
    else a WS-Addressing Action header."""
    if envelope.version is SOAP11:
        action = soap_action_header(request.headers.get("SOAPAction"))
    else:
        action = action_parameter(request.headers.get("Content-Type"))
    if action is None:
        for block in envelope.blocks_for_us():
            qname = etree.QName(block)
            if qname.namespace in WSA_NAMESPACES and qname.localname == "Action":
                action = (block.text or "").strip() or None
    return action


def _message_id(envelope: Envelope) -> str | None:
    for block in envelope.blocks_for_us():
        qname = etree.QName(block)
        if qname.namespace in WSA_NAMESPACES and qname.localname == "MessageID":
            text = (block.text or "").strip()
            if not text:
                return None
            if len(text) > _MAX_MESSAGE_ID:
                raise sender_fault(
                    f"the wsa:MessageID is longer than {_MAX_MESSAGE_ID} characters",
                    "bad-idempotency-key",
                )
            return str(text)
    return None


def _public_url(request: web.Request, path: str) -> str:
    """This endpoint's URL as the caller reached it (through a proxy: X-Forwarded-*)."""
    scheme = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    if scheme not in ("http", "https"):
        scheme = request.scheme
    host = request.headers.get("X-Forwarded-Host", "").split(",")[0].strip()
    if not _HOST.fullmatch(host):
        host = request.host
    if not _HOST.fullmatch(host):
        host = "localhost"
    return f"{scheme}://{host}{path}"


# -- building -------------------------------------------------------------------------------------

_SHARED = ("wsdl", "service", "port", "auth", "max_body")


def soap_routes(
    items: Sequence[tuple[Inbound, SoapInbound]],
    *,
    ingest: Ingest,
    catalog: SchemaCatalog,
    session: aiohttp.ClientSession,
) -> list[web.RouteDef]:
    """The routes serving `items` (GET and POST of each path) on the inbound server.

    Items with the same path are one endpoint and must agree on wsdl, service, port, auth and
    max_body; each serves its own operation. `session` is unused today (no inbound SOAP
    authentication fetches anything). Raises ConfigError naming the item and key at fault.
    """
    del session
    by_path: dict[str, list[tuple[Inbound, SoapInbound]]] = {}
    for item, settings in items:
        by_path.setdefault(settings.path, []).append((item, settings))
    routes: list[web.RouteDef] = []
    verifiers: dict[object, UsernameTokenAuth] = {}
    for path, members in by_path.items():
        endpoint = build_endpoint(
            path, members, ingest=ingest, catalog=catalog, verifiers=verifiers
        )
        routes += [web.get(path, endpoint.handle_get), web.post(path, endpoint.handle_post)]
    return routes


def _verifier(
    settings: WsseInbound, verifiers: dict[object, UsernameTokenAuth] | None
) -> UsernameTokenAuth:
    """One verifier (one nonce memory) for all paths with the same users: a captured header
    replayed on another path is a replay too."""
    if verifiers is None:
        return settings.build()
    key = (
        tuple(sorted((user, secret.get_secret_value()) for user, secret in settings.users.items())),
        settings.tolerance,
    )
    if key not in verifiers:
        verifiers[key] = settings.build()
    return verifiers[key]


def _same_setting(key: str, one: SoapInbound, other: SoapInbound) -> bool:
    if key == "wsdl":  # the same file, however its path is spelt
        return one.wsdl == other.wsdl or _load(one) is _load(other)
    return bool(getattr(one, key) == getattr(other, key))


def build_endpoint(
    path: str,
    members: Sequence[tuple[Inbound, SoapInbound]],
    *,
    ingest: Ingest,
    catalog: SchemaCatalog,
    verifiers: dict[object, UsernameTokenAuth] | None = None,
) -> SoapEndpoint:
    """The endpoint at `path` serving `members` (all with that path)."""
    first_item, first = members[0]
    operations: dict[str, Inbound] = {}
    served: list[_Served] = []
    for item, settings in members:
        try:
            for key in _SHARED:
                if not _same_setting(key, settings, first):
                    raise _problem_at(
                        ("soap", key),
                        f"inbound {first_item.name!r} serves {path} too, with another {key}; "
                        f"items sharing a path share {', '.join(_SHARED)} (one endpoint, one "
                        "operation each): make them equal, or use another path",
                    )
            other = operations.setdefault(settings.operation, item)
            if other is not item:
                raise _problem_at(
                    ("soap", "operation"),
                    f"operation {settings.operation} at {path} is already served by inbound "
                    f"{other.name!r}; each operation is served by one item",
                )
            wsdl = _load(settings)
            ports = _select_ports(wsdl, settings)
            served.append(_served(item, settings, wsdl, ports, catalog))
        except SoapSettingError as problem:
            raise ConfigError(item.origin.problem(problem.message, *problem.at)) from None
    auth = first.auth
    try:
        return SoapEndpoint(
            path=path,
            wsdl=load_wsdl(first.wsdl),
            served=served,
            basic=auth.basic.build() if auth is not None and auth.basic is not None else None,
            wsse=_verifier(auth.wsse, verifiers) if auth is not None and auth.wsse else None,
            max_body=first.max_body,
            ingest=ingest,
            catalog=catalog,
        )
    except ConfigError as error:
        raise ConfigError(first_item.origin.problem(str(error), "soap", "wsdl")) from None


__all__ = [
    "INBOUND_VARIABLES",
    "RESPONSE_VARIABLES",
    "SoapEndpoint",
    "SoapInbound",
    "SoapInboundAuth",
    "SoapSettingError",
    "WsseInbound",
    "build_endpoint",
    "check_soap_inbound",
    "soap_routes",
]
