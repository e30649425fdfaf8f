"""SOAP envelopes as an inbound endpoint reads and answers them: hardened XML parsing, the SOAP
version, header blocks addressed to us, and Faults.

Parsing refuses, before building anything: a DOCTYPE (so no DTD, no entity declarations, no
external entities: XXE and "billion laughs" never start), processing instructions, elements
nested deeper than `MAX_DEPTH` and more than `MAX_ELEMENTS` elements; libxml2 runs without
network access, entity substitution or its "huge tree" mode (text nodes and names stay under its
own limits). The body's size is bounded before parsing (the endpoint's `max_body`).

A Fault is answered in the shape of the request's SOAP version (1.1 `faultcode`/`faultstring`,
1.2 `Code`/`Reason`) with HTTP status 500, as SOAP 1.1, SOAP 1.2's HTTP binding for Receiver
faults and WS-I Basic Profile (R1126) ask; clients read the Fault, not the status. A Fault about
the body (validation, mapping) carries a `detail` with one `bus:error field="..."` per problem.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from aiohttp.helpers import parse_mimetype
from lxml import etree  # type: ignore[import-untyped]

from bus.http.problem import TYPE_PREFIX, FieldProblem

SOAP11_NS = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12_NS = "http://www.w3.org/2003/05/soap-envelope"
FAULT_DETAIL_NS = "tag:bus.dev,2026:soap-fault"
"""Namespace of the `problem` element in a Fault's detail."""

MAX_DEPTH = 100
MAX_ELEMENTS = 100_000
MAX_REASON_CHARS = 1000

# SOAP 1.1 actor / SOAP 1.2 role values that address the ultimate receiver, which we are.
_ACTOR_NEXT = "http://schemas.xmlsoap.org/soap/actor/next"
_ROLE_NEXT = SOAP12_NS + "/role/next"
_ROLE_ULTIMATE = SOAP12_NS + "/role/ultimateReceiver"


@dataclass(frozen=True)
class SoapVersion:
    """What differs between SOAP 1.1 and 1.2 on the wire."""

    name: Literal["1.1", "1.2"]
    namespace: str
    media_type: str
    sender: str
    """The fault code for the caller's mistakes: Client (1.1) or Sender (1.2)."""
    receiver: str
    """The fault code for ours: Server (1.1) or Receiver (1.2)."""

    def __str__(self) -> str:
        return f"SOAP {self.name}"

    @property
    def content_type(self) -> str:
        return f"{self.media_type}; charset=utf-8"


SOAP11 = SoapVersion("1.1", SOAP11_NS, "text/xml", "Client", "Server")
SOAP12 = SoapVersion("1.2", SOAP12_NS, "application/soap+xml", "Sender", "Receiver")
VERSIONS = {SOAP11.namespace: SOAP11, SOAP12.namespace: SOAP12}
BY_NAME = {SOAP11.name: SOAP11, SOAP12.name: SOAP12}

FaultCode = Literal["sender", "receiver", "version-mismatch", "must-understand"]


@dataclass(frozen=True)
class SoapFault(Exception):  # noqa: N818 -- raised, but it is an answer, like bus.http Problem
    """A Fault to answer with: `code` says whose fault it is, `reason` what happened and the fix.

    `slug` is the problem type (`tag:bus.dev,2026:problem:<slug>`, as the REST adapter's),
    sent in the detail of body faults. `headers` go on the HTTP response (Retry-After,
    WWW-Authenticate). `not_understood` are the Clark names of header blocks we had to
    understand and did not (SOAP 1.2 lists them in `NotUnderstood` headers).
    """

    code: FaultCode
    reason: str
    slug: str
    problems: Sequence[FieldProblem] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    not_understood: Sequence[str] = ()
    body_fault: bool = False
    """About the Body's content: then it has a detail (SOAP 1.1 keeps header faults without)."""

    def __str__(self) -> str:
        return f"{self.code} fault: {self.reason}"

    def response(self, version: SoapVersion) -> web.Response:
        return web.Response(
            status=500,
            body=fault_envelope(self, version),
            content_type=version.media_type,
            charset="utf-8",
            headers=dict(self.headers),
        )


def sender_fault(reason: str, slug: str, **options: Any) -> SoapFault:
    return SoapFault("sender", reason, slug, **options)


def receiver_fault(reason: str, slug: str, **options: Any) -> SoapFault:
    return SoapFault("receiver", reason, slug, **options)


def _code_name(code: FaultCode, version: SoapVersion) -> str:
    return {
        "sender": version.sender,
        "receiver": version.receiver,
        "version-mismatch": "VersionMismatch",
        "must-understand": "MustUnderstand",
    }[code]


def fault_envelope(fault: SoapFault, version: SoapVersion) -> bytes:
    """The Fault as a complete envelope of `version`, UTF-8 with an XML declaration."""
    ns = version.namespace
    envelope = etree.Element(f"{{{ns}}}Envelope", nsmap={"soap": ns})
    reason = fault.reason
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[: MAX_REASON_CHARS - 3] + "..."
    code = f"soap:{_code_name(fault.code, version)}"
    if version is SOAP12:
        _soap12_fault_headers(envelope, fault)
    body = etree.SubElement(envelope, f"{{{ns}}}Body")
    element = etree.SubElement(body, f"{{{ns}}}Fault")
    if version is SOAP11:
        etree.SubElement(element, "faultcode").text = code
        etree.SubElement(element, "faultstring").text = reason
        if fault.body_fault:
            _problem(etree.SubElement(element, "detail"), fault)
    else:
        value = etree.SubElement(etree.SubElement(element, f"{{{ns}}}Code"), f"{{{ns}}}Value")
        value.text = code
        text = etree.SubElement(etree.SubElement(element, f"{{{ns}}}Reason"), f"{{{ns}}}Text")
        text.set("{http://www.w3.org/XML/1998/namespace}lang", "en")
        text.text = reason
        if fault.body_fault:
            _problem(etree.SubElement(element, f"{{{ns}}}Detail"), fault)
    result: bytes = etree.tostring(envelope, xml_declaration=True, encoding="utf-8")
    return result


def _soap12_fault_headers(envelope: Any, fault: SoapFault) -> None:
    ns = SOAP12_NS
    if fault.code == "must-understand" and fault.not_understood:
        header = etree.SubElement(envelope, f"{{{ns}}}Header")
        for index, name in enumerate(fault.not_understood):
            qname = etree.QName(name)
            prefix = f"h{index}"
            block = etree.SubElement(
                header, f"{{{ns}}}NotUnderstood", nsmap={prefix: qname.namespace}
            )
            block.set(
                "qname", f"{prefix}:{qname.localname}" if qname.namespace else qname.localname
            )
    elif fault.code == "version-mismatch":
        header = etree.SubElement(envelope, f"{{{ns}}}Header")
        upgrade = etree.SubElement(header, f"{{{ns}}}Upgrade")
        for index, supported in enumerate((SOAP12_NS, SOAP11_NS)):
            prefix = f"v{index}"
            etree.SubElement(upgrade, f"{{{ns}}}SupportedEnvelope", nsmap={prefix: supported}).set(
                "qname", f"{prefix}:Envelope"
            )


def _problem(detail: Any, fault: SoapFault) -> None:
    problem = etree.SubElement(
        detail, f"{{{FAULT_DETAIL_NS}}}problem", nsmap={"bus": FAULT_DETAIL_NS}
    )
    problem.set("type", TYPE_PREFIX + fault.slug)
    for item in fault.problems:
        error = etree.SubElement(problem, f"{{{FAULT_DETAIL_NS}}}error")
        error.set("field", item.field)
        error.text = item.problem


# -- reading ------------------------------------------------------------------------------------


class _RefusedError(Exception):
    """What the guard parser stops at; its message is the fault's reason."""


class _Guard:
    """A parser target that sees the document before any tree is built, and stops it at the
    first thing a SOAP message may not hold."""

    def __init__(self) -> None:
        self.depth = 0
        self.elements = 0

    def doctype(self, *_: object) -> None:
        # Called at `<!DOCTYPE`, before its internal subset (entity declarations) is read.
        raise _RefusedError(
            "the message has a DOCTYPE; SOAP messages must not have one (no DTD, no entity "
            "declarations are accepted)"
        )

    def start(self, *_: object) -> None:
        self.depth += 1
        self.elements += 1
        if self.depth > MAX_DEPTH:
            raise _RefusedError(f"the XML is nested deeper than {MAX_DEPTH} elements")
        if self.elements > MAX_ELEMENTS:
            raise _RefusedError(f"the XML has more than {MAX_ELEMENTS} elements")

    def end(self, *_: object) -> None:
        self.depth -= 1

    def data(self, *_: object) -> None:
        pass

    def comment(self, *_: object) -> None:
        pass

    def pi(self, *_: object) -> None:
        raise _RefusedError("the message has a processing instruction; SOAP messages must not")

    def close(self) -> None:
        pass


def _parser(target: object | None = None) -> Any:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        collect_ids=False,
        remove_comments=True,
        target=target,
    )


def parse_xml(raw: bytes) -> Any:
    """The document's root element, or a Sender fault saying what is wrong with the XML."""
    if not raw.strip():
        raise sender_fault("the body is empty; send a SOAP envelope", "malformed-xml")
    try:
        # First pass: the guard refuses a DOCTYPE, PIs, depth and count, without building a tree.
        etree.fromstring(raw, _parser(_Guard()))
        root = etree.fromstring(raw, _parser())
    except _RefusedError as refused:
        raise sender_fault(str(refused), "malformed-xml") from None
    except etree.XMLSyntaxError as error:
        message = str(error.msg or error).split("\n", 1)[0]
        raise sender_fault(f"the body is not well-formed XML: {message}", "malformed-xml") from None
    return root


def version_of_media_type(content_type: str | None) -> SoapVersion | None:
    """SOAP 1.1 for text/xml, 1.2 for application/soap+xml, None for anything else."""
    media = parse_mimetype(content_type or "")
    kind = f"{media.type}/{media.subtype}{'+' + media.suffix if media.suffix else ''}".lower()
    if kind == "text/xml":
        return SOAP11
    if kind == "application/soap+xml":
        return SOAP12
    return None


def action_parameter(content_type: str | None) -> str | None:
    """SOAP 1.2's `action` parameter of the Content-Type, if any."""
    media = parse_mimetype(content_type or "")
    value = media.parameters.get("action")
    return str(value).strip() or None if value is not None else None


def soap_action_header(value: str | None) -> str | None:
    """SOAP 1.1's SOAPAction header without its quotes; None when absent or empty."""
    if value is None:
        return None
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1].strip()
    return value or None


@dataclass(frozen=True)
class Envelope:
    version: SoapVersion
    root: Any
    header: Any | None
    body: Any

    def header_blocks(self) -> list[Any]:
        """Every element in the Header."""
        if self.header is None:
            return []
        return [child for child in self.header if isinstance(child.tag, str)]

    def blocks_for_us(self) -> list[Any]:
        """The header blocks addressed to us: no actor/role, or `next`, or the ultimate
        receiver (SOAP 1.2's `none` and any other role are for someone else)."""
        ns = self.version.namespace
        attribute = f"{{{ns}}}actor" if self.version is SOAP11 else f"{{{ns}}}role"
        ours = (_ACTOR_NEXT,) if self.version is SOAP11 else (_ROLE_NEXT, _ROLE_ULTIMATE)
        return [
            block
            for block in self.header_blocks()
            if (block.get(attribute) or "").strip() in ("", *ours)
        ]

    def must_understand(self, block: Any) -> bool:
        value = block.get(f"{{{self.version.namespace}}}mustUnderstand")
        return (value or "").strip() in ("1", "true")

    def body_elements(self) -> list[Any]:
        return [child for child in self.body if isinstance(child.tag, str)]


def read_envelope(raw: bytes, media_version: SoapVersion) -> Envelope:
    """The envelope of a request whose Content-Type said `media_version`; Faults for XML that
    is not a SOAP envelope of that version."""
    root = parse_xml(raw)
    qname = etree.QName(root)
    if qname.localname != "Envelope":
        raise sender_fault(
            f"the root element is {{{qname.namespace or ''}}}{qname.localname}, not a SOAP "
            f"Envelope ({{{media_version.namespace}}}Envelope)",
            "not-soap",
        )
    version = VERSIONS.get(qname.namespace or "")
    if version is None:
        raise SoapFault(
            "version-mismatch",
            f"the Envelope's namespace {qname.namespace or '(none)'!r} is no SOAP version; use "
            f"{SOAP11_NS} (SOAP 1.1) or {SOAP12_NS} (SOAP 1.2)",
            "version-mismatch",
        )
    if version is not media_version:
        raise sender_fault(
            f"a {version} envelope must be sent as Content-Type {version.media_type}; the "
            f"request said {media_version.media_type} ({media_version})",
            "unsupported-media-type",
        )
    children = [child for child in root if isinstance(child.tag, str)]
    names = [etree.QName(child).localname for child in children]
    namespaces = {etree.QName(child).namespace for child in children}
    ns = version.namespace
    header = children[0] if names[:1] == ["Header"] else None
    rest = children[1:] if header is not None else children
    if not rest or etree.QName(rest[0]).localname != "Body" or namespaces - {ns} or len(rest) > 1:
        raise sender_fault(
            f"the Envelope must hold an optional soap:Header and then one soap:Body (in {ns}), "
            f"and nothing else; found {', '.join(names) or 'nothing'}",
            "not-soap",
        )
    body = rest[0]
    if (body.text or "").strip() or any((child.tail or "").strip() for child in body):
        raise sender_fault("the soap:Body holds text outside of elements", "not-soap")
    return Envelope(version=version, root=root, header=header, body=body)
