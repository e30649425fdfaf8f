"""The server side of a SOAP 1.1 document/literal service, driven by its WSDL.

zeep reads the WSDL and turns XML into Python values and back; lxml parses requests (no DTD, no
entities, no network: a SOAP endpoint is a classic XXE target) and validates each request body
against the WSDL's own XML Schema, so a wrong type or a missing element is a Client fault that
names it, as a real service answers, instead of a value silently read as None.
"""

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import zeep
import zeep.helpers
from aiohttp import web
from lxml import etree  # type: ignore[import-untyped]

SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
XSD = "http://www.w3.org/2001/XMLSchema"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"

_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, load_dtd=False, remove_comments=True
)

# zeep is untyped: these names are the boundary, typed as Any on purpose.
_Client: Any = zeep.Client
_Settings: Any = zeep.Settings
_serialize_object: Any = zeep.helpers.serialize_object


class SoapFault(Exception):  # noqa: N818 -- an answer the service gives, not a bug of ours
    """A fault to answer with. `code`: whose fault it is (Client: the request; Server: ours,
    try again later). `detail`: a declared fault element's local name and its values."""

    def __init__(
        self,
        code: Literal["Client", "Server", "VersionMismatch"],
        reason: str,
        *,
        detail: tuple[str, Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class SoapRequest:
    operation: str
    values: dict[str, Any]
    """The input element's children as plain data: decimals as Decimal, nested as dicts."""
    security: Any
    """The wsse:Security header element, or None."""


class SoapService:
    """One SOAP 1.1 port of a WSDL: reads its requests, writes its responses and faults."""

    def __init__(self, wsdl: Path, *, service: str, port: str) -> None:
        settings = _Settings(strict=True, forbid_dtd=True, forbid_entities=True)
        self._client = _Client(str(wsdl), settings=settings)
        self._binding = self._client.wsdl.services[service].ports[port].binding
        self._namespace = _target_namespace(wsdl)
        self._by_element = {
            operation.input.body.qname.text: name
            for name, operation in self._binding._operations.items()
        }
        self._schema = _schema_of(wsdl)

    def read(self, body: bytes) -> SoapRequest:
        """The call in a request body; a SoapFault when it is not one this port can take."""
        try:
            envelope = etree.fromstring(body, _PARSER)
        except etree.XMLSyntaxError as error:
            raise SoapFault("Client", f"the request is not well-formed XML: {error}") from None
        if envelope.tag != f"{{{SOAP11}}}Envelope":
            if etree.QName(envelope).localname == "Envelope":
                raise SoapFault("VersionMismatch", "this service speaks SOAP 1.1 only")
            raise SoapFault("Client", "the request is not a SOAP envelope")
        header = envelope.find(f"{{{SOAP11}}}Header")
        content = envelope.find(f"{{{SOAP11}}}Body")
        element = next(iter(content), None) if content is not None else None
        if element is None:
            raise SoapFault("Client", "the SOAP body is empty")
        tag = etree.QName(element)
        operation = self._by_element.get(tag.text)
        if operation is None:
            raise SoapFault(
                "Client",
                f"unknown operation {tag.localname}; this service offers "
                + ", ".join(sorted(self._binding._operations)),
            )
        if not self._schema.validate(element):
            problem = self._schema.error_log.last_error
            raise SoapFault("Client", f"invalid {operation} request: {problem.message}")
        parsed = self._binding._operations[operation].input.body.parse(
            element, self._client.wsdl.types
        )
        security = header.find(f"{{{WSSE}}}Security") if header is not None else None
        return SoapRequest(operation, dict(_serialize_object(parsed, dict)), security)

    def respond(self, operation: str, values: Mapping[str, Any]) -> web.Response:
        """The operation's output message, built from `values` (element name -> value)."""
        message = self._binding._operations[operation].output.serialize(**values)
        return _xml(etree.tostring(message.content, xml_declaration=True, encoding="utf-8"))

    def fault(self, fault: SoapFault) -> web.Response:
        """The fault as SOAP 1.1 says: HTTP 500, faultcode, faultstring, optional detail."""
        envelope = etree.Element(f"{{{SOAP11}}}Envelope", nsmap={"soap": SOAP11})
        node = etree.SubElement(
            etree.SubElement(envelope, f"{{{SOAP11}}}Body"), f"{{{SOAP11}}}Fault"
        )
        etree.SubElement(node, "faultcode").text = f"soap:{fault.code}"
        etree.SubElement(node, "faultstring").text = fault.reason
        if fault.detail is not None:
            name, values = fault.detail
            element = self._client.get_element(f"{{{self._namespace}}}{name}")
            element.render(etree.SubElement(node, "detail"), element(**values))
        body = etree.tostring(envelope, xml_declaration=True, encoding="utf-8")
        return _xml(body, status=500)


def _xml(body: bytes, *, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type="text/xml", charset="utf-8")


def _target_namespace(wsdl: Path) -> str:
    return str(etree.parse(str(wsdl), _PARSER).getroot().get("targetNamespace", ""))


def _schema_of(wsdl: Path) -> Any:
    """The WSDL's embedded xs:schema as an lxml XMLSchema.

    Copied out with every namespace in scope at its place in the WSDL: its QName references
    (type="tns:Address") use prefixes declared on wsdl:definitions, which a plain copy drops.
    """
    embedded = etree.parse(str(wsdl), _PARSER).find(f".//{{{XSD}}}schema")
    schema = etree.Element(embedded.tag, attrib=dict(embedded.attrib), nsmap=embedded.nsmap)
    schema.extend(copy.deepcopy(child) for child in embedded)
    return etree.XMLSchema(schema)
