"""WSDL documents, loaded once per process and kept: which services, ports and operations they
describe, which SOAP version and style each binding speaks.

```python
wsdl = load_wsdl("wsdl/erp.wsdl")                 # or "https://erp.example/ws?wsdl"
info = wsdl.operation("UpsertCustomer", service="ErpService", port="ErpPort12")
info.soap_version, info.style, info.address       # "1.2", "document", "http://..."
info.input_elements                               # ("CustomerId", "Name", ...)
```

Loading is hardened: no DTD, no entity declarations, nothing resolved through the XML parser
(lxml's `resolve_entities=False`, libxml2's size and depth limits kept). A local file is read
with **no network at all**: an `xsd:import`, `xsd:include` or `wsdl:import` with a relative
(or absolute) file location next to it is read from disk, while an http(s) one is refused with a
ConfigError (download it next to the WSDL instead). A URL is fetched once, with a timeout and
without following redirects; its imports may be fetched the same way, but it may not read local
files. Either way a document is loaded at most once per process (`load_wsdl` caches by
location): flows build their calls from the cached one.

`WsdlDocument.operation` picks a port: the one that has the operation, or the one named by
`service` and `port` when several do (a ConfigError lists the choices otherwise).
"""

import os
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import zeep
import zeep.exceptions
import zeep.wsdl
from lxml import etree  # type: ignore[import-untyped]
from zeep.wsdl.bindings import Soap11Binding, Soap12Binding

from bus.errors import ConfigError

SoapVersion = Literal["1.1", "1.2"]

ENVELOPE_NAMESPACES: Mapping[SoapVersion, str] = {
    "1.1": "http://schemas.xmlsoap.org/soap/envelope/",
    "1.2": "http://www.w3.org/2003/05/soap-envelope",
}
"""The SOAP envelope namespace of each version."""

DEFAULT_LOAD_TIMEOUT_S = 30.0
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
"""The largest WSDL or XSD document read; larger ones are refused."""

# zeep is untyped at its edges (and some of its annotations are wrong): these names are the
# boundary, typed as Any on purpose.
_Document: Any = zeep.wsdl.Document
_Settings: Any = zeep.Settings
_ZeepError: type[Exception] = zeep.exceptions.Error
_ExternalReferenceForbidden: Any = zeep.exceptions.ExternalReferenceForbidden


def hardened_settings(*, allow_remote_imports: bool = False) -> Any:
    """zeep settings that parse XML safely: strict (no recovery from broken XML), no DTD, no
    entity declarations, no fetching of http(s) references unless `allow_remote_imports`."""
    return _Settings(
        strict=True,
        forbid_dtd=True,
        forbid_entities=True,
        forbid_external=not allow_remote_imports,
        xml_huge_tree=False,
    )


@dataclass(frozen=True)
class PortInfo:
    """One port of a service: where it is, the binding's SOAP version, its operations."""

    service: str
    port: str
    soap_version: SoapVersion
    binding_name: str
    address: str | None
    operations: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.service}/{self.port} (SOAP {self.soap_version})"


@dataclass(frozen=True)
class OperationInfo:
    """An operation of one port of a WSDL, and what zeep needs to call or serve it.

    `input_elements` are the names a request is built from: the children of the body element
    (document/literal, wrapped or bare), or the parts of the message (several parts, or rpc).
    When `input_is_value` is true the body element is of a simple type, so the request is one
    value (given under the part's or the element's name). `binding` and `operation` are zeep's
    own objects (`zeep.wsdl.bindings.soap.SoapBinding`, `...SoapOperation`).
    """

    name: str
    service: str
    port: str
    soap_version: SoapVersion
    style: str
    address: str | None
    soap_action: str | None
    input_element: str | None
    output_element: str | None
    input_elements: tuple[str, ...]
    input_is_value: bool
    output_elements: tuple[str, ...]
    wrapped: bool
    one_way: bool
    faults: tuple[str, ...]
    binding: Any = field(repr=False, compare=False)
    operation: Any = field(repr=False, compare=False)

    @property
    def envelope_namespace(self) -> str:
        return ENVELOPE_NAMESPACES[self.soap_version]

    @property
    def input_value_names(self) -> tuple[str, ...]:
        """For a one-value request: the names the value may be given under (part, element)."""
        if not self.input_is_value:
            return ()
        names = list(self.input_elements)
        if self.input_element is not None:
            names.append(etree.QName(self.input_element).localname)
        return tuple(dict.fromkeys(names))


class WsdlDocument:
    """A loaded WSDL; get one from `load_wsdl`."""

    def __init__(self, location: str, document: Any, sources: Mapping[str, bytes]) -> None:
        self.location = location
        self.document = document
        """zeep's `zeep.wsdl.Document`."""
        self.sources = dict(sources)
        """Every document read (the WSDL and what it imports): location -> bytes as read."""
        self._ports = tuple(_ports(document))

    def __repr__(self) -> str:
        return f"WsdlDocument({self.location!r})"

    @property
    def schema(self) -> Any:
        """zeep's `zeep.xsd.Schema` of the WSDL's types."""
        return self.document.types

    def ports(self) -> tuple[PortInfo, ...]:
        """Every SOAP port of every service, in document order."""
        return self._ports

    def operation(
        self, name: str, *, service: str | None = None, port: str | None = None
    ) -> OperationInfo:
        """The operation `name` of the port that `service` and `port` select (either may be left
        out when only one port has the operation); ConfigError listing the choices otherwise."""
        chosen = self._port(service, port)
        candidates = [info for info in chosen if name in info.operations]
        if not candidates:
            known = sorted({op for info in chosen for op in info.operations})
            where = ", ".join(str(info) for info in chosen)
            raise ConfigError(
                f"WSDL {self.location}: no operation {name!r} in {where}; "
                f"operations: {', '.join(known) or 'none'}"
            )
        if len(candidates) > 1:
            listed = "; ".join(f"service: {i.service}, port: {i.port}" for i in candidates)
            versions = ", ".join(str(info) for info in candidates)
            raise ConfigError(
                f"WSDL {self.location}: operation {name!r} is offered by several ports "
                f"({versions}); choose one with {listed}"
            )
        return _operation_info(self.document, candidates[0], name)

    def element(self, name: str) -> Any | None:
        """A global element of the schema by Clark name (`{urn:x}Name`) or by local name when
        only one namespace has it; None when there is none (or several by that local name)."""
        schema = self.document.types
        if name.startswith("{"):
            try:
                return schema.get_element(name)
            except (_ZeepError, KeyError, ValueError):
                return None
        found = [element for element in schema.elements if element.qname.localname == name]
        return found[0] if len(found) == 1 else None

    @property
    def target_namespace(self) -> str | None:
        root = next(iter(self.document._definitions.values()), None)
        return None if root is None else root.target_namespace

    def _port(self, service: str | None, port: str | None) -> list[PortInfo]:
        ports = list(self._ports)
        if service is not None:
            services = list(dict.fromkeys(info.service for info in ports))
            if service not in services:
                raise ConfigError(
                    f"WSDL {self.location}: no service {service!r}; services: {', '.join(services)}"
                )
            ports = [info for info in ports if info.service == service]
        if port is not None:
            matching = [info for info in ports if info.port == port]
            if not matching:
                raise ConfigError(
                    f"WSDL {self.location}: no port {port!r}"
                    + (f" in service {service!r}" if service else "")
                    + f"; ports: {', '.join(str(info) for info in ports)}"
                )
            ports = matching
        return ports


def load_wsdl(location: str | Path, *, timeout: float = DEFAULT_LOAD_TIMEOUT_S) -> WsdlDocument:
    """The WSDL at `location` (a file path, relative to the current directory, or an http(s)
    URL), loaded the first time it is asked for and then kept for the process. `timeout` bounds
    each network fetch of a URL. ConfigError says why a WSDL cannot be loaded."""
    key = _key(location)
    with _lock:
        cached = _cache.get(key)
        if cached is None:
            cached = _cache[key] = _load(key, timeout)
        return cached


def clear_wsdl_cache() -> None:
    """Forget every loaded WSDL (tests; a long-running process keeps them)."""
    with _lock:
        _cache.clear()


_cache: dict[str, WsdlDocument] = {}
_lock = threading.Lock()


def _is_url(location: str) -> bool:
    return urlsplit(location).scheme.lower() in ("http", "https")


def _key(location: str | Path) -> str:
    text = str(location)
    if _is_url(text):
        return text
    return str(Path(os.path.expanduser(text)).resolve())


class _Loader:
    """What zeep reads documents through while loading a WSDL (its `transport.load`)."""

    binding_classes = (Soap11Binding, Soap12Binding)
    """The bindings to read: SOAP only (zeep's HTTP GET/POST bindings are left out)."""

    def __init__(self, *, remote: bool, seconds: float) -> None:
        self.remote = remote
        self.seconds = seconds
        self.sources: dict[str, bytes] = {}

    def load(self, url: str) -> bytes:
        scheme = urlsplit(url).scheme.lower()
        network = scheme in ("http", "https")
        if network and not self.remote:
            raise _ExternalReferenceForbidden(url)
        if not network and self.remote:
            raise _LocalFileForbiddenError(url)
        content = _fetch(url, self.seconds) if network else _read_file(url)
        self.sources[url] = content
        return content


class _LocalFileForbiddenError(Exception):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


def _read_file(location: str) -> bytes:
    path = Path(location.removeprefix("file://") if location.startswith("file://") else location)
    try:
        with path.open("rb") as handle:
            content = handle.read(MAX_DOCUMENT_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"WSDL: file {path} does not exist") from None
    except OSError as error:
        raise ConfigError(f"WSDL: cannot read {path}: {error.strerror or error}") from None
    if len(content) > MAX_DOCUMENT_BYTES:
        raise ConfigError(f"WSDL: {path} is larger than {MAX_DOCUMENT_BYTES} bytes")
    return content


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises HTTPError for the 3xx


_OPENER = urllib.request.build_opener(_NoRedirects)


def _fetch(url: str, seconds: float) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "bus-soap"})  # noqa: S310
    try:
        with _OPENER.open(request, timeout=seconds) as answer:
            content: bytes = answer.read(MAX_DOCUMENT_BYTES + 1)
    except urllib.error.HTTPError as error:
        moved = error.headers.get("Location") if 300 <= error.code < 400 else None
        hint = f" (redirected to {moved}; use that URL)" if moved else ""
        raise ConfigError(f"WSDL: {url} answered HTTP {error.code}{hint}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ConfigError(f"WSDL: cannot fetch {url} within {seconds:g} s: {reason}") from None
    if len(content) > MAX_DOCUMENT_BYTES:
        raise ConfigError(f"WSDL: {url} is larger than {MAX_DOCUMENT_BYTES} bytes")
    return content


def _load(location: str, seconds: float) -> WsdlDocument:
    remote = _is_url(location)
    loader = _Loader(remote=remote, seconds=seconds)
    settings = hardened_settings(allow_remote_imports=remote)
    try:
        document = _Document(location, loader, settings=settings)
    except ConfigError:
        raise
    except zeep.exceptions.ExternalReferenceForbidden as error:
        raise ConfigError(
            f"WSDL {location}: refused to fetch {error.url} over the network: a local WSDL is "
            "read without any network access; save that document next to the WSDL and point "
            "its location (schemaLocation) at the file"
        ) from None
    except _LocalFileForbiddenError as error:
        raise ConfigError(
            f"WSDL {location}: refused to read {error.url}: a WSDL fetched from a URL may not "
            "read local files"
        ) from None
    except (zeep.exceptions.DTDForbidden, zeep.exceptions.EntitiesForbidden):
        raise ConfigError(
            f"WSDL {location}: has a DOCTYPE or entity declarations, which are refused "
            "(they can read files or expand without bound)"
        ) from None
    except zeep.exceptions.XMLSyntaxError as error:
        raise ConfigError(f"WSDL {location}: not well-formed XML: {error.message}") from None
    except (_ZeepError, etree.LxmlError, ValueError, KeyError, IndexError) as error:
        raise ConfigError(f"WSDL {location}: cannot be read: {error}") from None
    wsdl = WsdlDocument(location, document, loader.sources)
    if not wsdl.ports():
        raise ConfigError(f"WSDL {location}: describes no service with a SOAP port")
    return wsdl


def _soap_version(binding: Any) -> SoapVersion | None:
    if isinstance(binding, Soap12Binding):
        return "1.2"
    if isinstance(binding, Soap11Binding):
        return "1.1"
    return None


def _ports(document: Any) -> list[PortInfo]:
    found = []
    for service in document.services.values():
        for port in service.ports.values():
            binding = port.binding
            version = _soap_version(binding)
            if version is None:
                continue
            found.append(
                PortInfo(
                    service=str(service.name),
                    port=str(port.name),
                    soap_version=version,
                    binding_name=str(binding.name.localname),
                    address=port.binding_options.get("address"),
                    operations=tuple(binding._operations),
                )
            )
    return found


def _operation_info(document: Any, port: PortInfo, name: str) -> OperationInfo:
    service = document.services[port.service]
    binding = service.ports[port.port].binding
    operation = binding._operations[name]
    request = operation.input
    reply = operation.output
    body = request.body if request is not None else None
    names, is_value = _element_names(body)
    if request is not None and request.body is not None and request._is_body_wrapped:
        is_value = False
    reply_body = reply.body if reply is not None else None
    reply_names, _ = _element_names(reply_body)
    parts = list(request.abstract.parts.values()) if request is not None else []
    if is_value and parts:
        names = (str(next(iter(request.abstract.parts))),)
    wrapped = (
        operation.style == "document"
        and len(parts) == 1
        and parts[0].element is not None
        and etree.QName(parts[0].element.qname).localname == name
        and not is_value
    )
    return OperationInfo(
        name=name,
        service=port.service,
        port=port.port,
        soap_version=port.soap_version,
        style=str(operation.style),
        address=port.address,
        soap_action=operation.soapaction or None,
        input_element=_qname(body),
        output_element=_qname(reply_body),
        input_elements=names,
        input_is_value=is_value,
        output_elements=reply_names,
        wrapped=wrapped,
        one_way=reply is None or reply_body is None,
        faults=tuple(operation.faults),
        binding=binding,
        operation=operation,
    )


def _qname(element: Any) -> str | None:
    qname = getattr(element, "qname", None)
    return None if qname is None else str(qname.text if hasattr(qname, "text") else qname)


def _element_names(element: Any) -> tuple[tuple[str, ...], bool]:
    """The child element and attribute names of `element`'s type, and whether it is a simple
    value instead."""
    if element is None:
        return (), False
    kind = element.type
    children = getattr(kind, "elements", None)
    if children is None:
        return (), True
    names = [child_name for child_name, _ in children]
    names += [attribute for attribute, _ in getattr(kind, "attributes", [])]
    return tuple(names), False
