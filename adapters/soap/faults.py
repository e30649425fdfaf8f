"""SOAP faults: reading one out of an answer, and what it means for a delivery.

A fault is the other side saying why it did not do what was asked. Its code says whose fault
it is: SOAP 1.1 `Client` / SOAP 1.2 `Sender` (the request is wrong: asking again cannot help,
so the event goes to the dead-letter topic), `Server` / `Receiver` (the service failed: worth
trying again later). SOAP 1.1 codes may be refined with dots (`Client.Authentication`), which
count as their first part. Any other code (`VersionMismatch`, `MustUnderstand`, a WS-Security
code such as `wsse:FailedAuthentication`, an application's own) cannot be fixed by waiting, so
it is permanent too.
"""

import re
from dataclasses import dataclass, field
from typing import Any

from lxml import etree  # type: ignore[import-untyped]

from adapters.soap.wsdl import ENVELOPE_NAMESPACES, SoapVersion
from bus.errors import PermanentDeliveryError, TransientDeliveryError

EXCERPT_CHARS = 500
_REASON_CHARS = 500
_TRANSIENT_CODES = frozenset({"Server", "Receiver"})


@dataclass(frozen=True)
class SoapFault:
    """A SOAP fault as the answer carried it.

    `code` is the fault code's local name (`Client`, `Sender`, `Server.Busy`, ...), with its
    namespace in `code_namespace`; `subcodes` are SOAP 1.2's, as `{namespace}name`. `detail`
    is the detail element's content as XML text ("" without one).
    """

    version: SoapVersion
    code: str
    code_namespace: str | None
    string: str
    actor: str | None = None
    subcodes: tuple[str, ...] = ()
    detail: str = ""
    detail_element: Any = field(default=None, repr=False, compare=False)

    @property
    def qualified_code(self) -> str:
        """The code as it is usually written: `soap:Client`, `soap12:Sender`, `wsse:...`."""
        prefix = {
            ENVELOPE_NAMESPACES["1.1"]: "soap",
            ENVELOPE_NAMESPACES["1.2"]: "soap12",
        }.get(self.code_namespace or "")
        if prefix:
            return f"{prefix}:{self.code}"
        return f"{{{self.code_namespace}}}{self.code}" if self.code_namespace else self.code

    @property
    def transient(self) -> bool:
        """Whether the fault is the service's own (Server/Receiver): worth trying again."""
        standard = self.code_namespace in (None, *ENVELOPE_NAMESPACES.values())
        return standard and self.code.split(".", 1)[0] in _TRANSIENT_CODES

    def describe(self) -> str:
        """One line: code, subcodes and fault string (no detail), cut at 500 characters."""
        subcodes = f" [{', '.join(self.subcodes)}]" if self.subcodes else ""
        text = _one_line(self.string) or "(no fault string)"
        return f"SOAP fault {self.qualified_code}{subcodes}: {text}"[:_REASON_CHARS]


class PermanentSoapFaultError(PermanentDeliveryError):
    """A Client/Sender (or other non-transient) fault; `fault` is what the service said."""

    def __init__(self, fault: SoapFault, *, status: int | None = None) -> None:
        super().__init__(_reason(fault), status=status, excerpt=fault.detail[:EXCERPT_CHARS])
        self.fault = fault


class TransientSoapFaultError(TransientDeliveryError):
    """A Server/Receiver fault; `fault` is what the service said."""

    def __init__(
        self, fault: SoapFault, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(
            _reason(fault),
            status=status,
            excerpt=fault.detail[:EXCERPT_CHARS],
            retry_after=retry_after,
        )
        self.fault = fault


def fault_error(
    fault: SoapFault, *, status: int | None = None, retry_after: float | None = None
) -> PermanentSoapFaultError | TransientSoapFaultError:
    """The delivery error a fault makes: transient for Server/Receiver, else permanent."""
    if fault.transient:
        return TransientSoapFaultError(fault, status=status, retry_after=retry_after)
    return PermanentSoapFaultError(fault, status=status)


def find_fault(envelope: Any) -> SoapFault | None:
    """The fault in a parsed envelope (an lxml element; SOAP 1.1 or 1.2, whichever it is), or
    None when its body holds none."""
    if envelope is None or not isinstance(envelope.tag, str):
        return None
    for version, namespace in ENVELOPE_NAMESPACES.items():
        node = envelope.find(f"{{{namespace}}}Body/{{{namespace}}}Fault")
        if node is not None:
            if version == "1.1":
                return _fault_11(node)
            return _fault_12(node)
    return None


def _fault_11(node: Any) -> SoapFault:
    code_node = _child(node, "faultcode")
    namespace, code = _resolve(code_node)
    detail = _child(node, "detail")
    return SoapFault(
        version="1.1",
        code=code,
        code_namespace=namespace,
        string=_text(_child(node, "faultstring")),
        actor=_text(_child(node, "faultactor")) or None,
        detail=detail_text(detail),
        detail_element=detail,
    )


def _fault_12(node: Any) -> SoapFault:
    env = ENVELOPE_NAMESPACES["1.2"]
    namespace, code = _resolve(node.find(f"{{{env}}}Code/{{{env}}}Value"))
    subcodes = []
    sub = node.find(f"{{{env}}}Code/{{{env}}}Subcode")
    while sub is not None:
        sub_namespace, sub_code = _resolve(sub.find(f"{{{env}}}Value"))
        subcodes.append(f"{{{sub_namespace}}}{sub_code}" if sub_namespace else sub_code)
        sub = sub.find(f"{{{env}}}Subcode")
    reasons = node.findall(f"{{{env}}}Reason/{{{env}}}Text")
    english = [text for text in reasons if (text.get(_XML_LANG) or "").startswith("en")]
    reason = (english or reasons or [None])[0]
    detail = node.find(f"{{{env}}}Detail")
    return SoapFault(
        version="1.2",
        code=code,
        code_namespace=namespace,
        string=_text(reason),
        actor=_text(node.find(f"{{{env}}}Role")) or None,
        subcodes=tuple(subcodes),
        detail=detail_text(detail),
        detail_element=detail,
    )


_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"


def detail_text(detail: Any) -> str:
    """A fault detail's content as XML text (its text alone when it has no elements)."""
    if detail is None:
        return ""
    children = [child for child in detail if isinstance(child.tag, str)]
    if not children:
        return (detail.text or "").strip()
    parts = []
    for child in children:
        copy = etree.fromstring(etree.tostring(child))
        etree.cleanup_namespaces(copy)
        parts.append(etree.tostring(copy, encoding="unicode", with_tail=False))
    return "".join(parts).strip()


def _child(node: Any, name: str) -> Any:
    """An unqualified child (as SOAP 1.1 fault children are), or a qualified one by local name
    (which some toolkits write)."""
    found = node.find(name)
    if found is not None:
        return found
    return next(
        (c for c in node if isinstance(c.tag, str) and etree.QName(c).localname == name), None
    )


def _text(node: Any) -> str:
    return "" if node is None else (node.text or "").strip()


def _resolve(node: Any) -> tuple[str | None, str]:
    """A QName value (`soap:Client`) as (namespace, local name), by the node's prefixes."""
    value = _text(node)
    prefix, _, local = value.rpartition(":")
    if not prefix:
        return (node.nsmap.get(None) if node is not None else None), local
    return node.nsmap.get(prefix), local


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _reason(fault: SoapFault) -> str:
    detail = _one_line(fault.detail)
    if not detail:
        return fault.describe()
    room = max(0, _REASON_CHARS - len(fault.describe()) - 10)
    return f"{fault.describe()}; detail: {detail[:room]}" if room > 20 else fault.describe()
