"""A real SOAP service on localhost (aiohttp), playing the external systems of the outbound tests.

It parses each envelope with lxml (no DTD, no entities, no network), checks the SOAP version
against the endpoint and its Content-Type, checks WS-Security when `users` is set (the
UsernameToken's password as text, or as Base64(SHA-1(nonce + created + password)), and a
wsu:Timestamp that has not expired), and answers canned responses or faults. Endpoints:

- `/erp/accounts` (SOAP 1.1) and `/erp/accounts12` (SOAP 1.2): tests/data/wsdl/erp-accounts.wsdl.
  UpsertCustomer answers by the customer id's prefix:
  `reject-` a Client/Sender fault with the declared CustomerRejected detail; `down-` a
  Server/Receiver fault; `busy-` HTTP 503 with `Retry-After: 7` and no fault; `slow-` an answer
  after 1.5 s; `gone-` HTTP 404 without a fault; `moved-` a redirect (302); `html-` a 200 HTML
  page; `dotnet-` the captured .NET fault envelope of the version as it is
  (envelopes/dneonline-*-fault-*.xml); otherwise the UpsertCustomerResponse. GetCustomer
  answers from `customers` (else a Client fault), RegisterPayment a receipt, Ping the text it
  got.
- `/calculator`: Add answers with the captured SOAP 1.1 response (envelopes/
  dneonline-soap11-Add-response.xml) as it is, or a SOAP 1.2 one of the same shape.
- `/cxf`: the Apache CXF customer service (cxf-CustomerService-faults.wsdl): updateCustomer is
  one-way (202, no body); getCustomersByName answers customers, or for "nobody" the declared
  NoSuchCustomer fault.
- `/mtom`: python-zeep's upload service (import/mtom_attachment.wsdl).
- `GET /files/{name}`: serves `files` (WSDLs and XSDs for URL loading), counting requests.

Every SOAP call is recorded in `calls`.
"""

import asyncio
import base64
import hashlib
import hmac
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from aiohttp import web
from lxml import etree

WSDL_DIR = Path(__file__).parent / "data" / "wsdl"
ENVELOPES = WSDL_DIR / "envelopes"

SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
PASSWORD_TEXT = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0"
    "#PasswordText"
)
PASSWORD_DIGEST = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0"
    "#PasswordDigest"
)
ERP = "urn:acme:erp:accounts"
CXF = "http://customerservice.example.com/"
TEMPURI = "http://tempuri.org/"
MTOM = "http://test.ellethee.org/"

_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, load_dtd=False, remove_comments=True
)


@dataclass
class Call:
    path: str
    headers: dict[str, str]
    version: str
    operation: str
    body: Any  # the body's first element
    soap_headers: list[Any]  # header elements other than wsse:Security
    security: Any  # the wsse:Security element, or None
    user: str | None = None
    password_type: str | None = None

    def text(self, name: str) -> str | None:
        """The text of the first element called `name` (local name) in the body."""
        for element in self.body.iter():
            if isinstance(element.tag, str) and etree.QName(element).localname == name:
                return str(element.text) if element.text is not None else None
        return None


class Refused(Exception):  # noqa: N818 -- a fault answer, not an error of the service
    def __init__(self, code: str, reason: str, *, subcode: str | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.subcode = subcode


@dataclass
class SoapService:
    users: dict[str, str] = field(default_factory=dict)
    """WS-Security users (name -> password); empty: no WS-Security required."""
    basic: tuple[str, str] | None = None
    """HTTP Basic credentials required, if set."""
    customers: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    file_requests: list[str] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/erp/accounts", self.erp)
        app.router.add_post("/erp/accounts12", self.erp)
        app.router.add_post("/calculator", self.calculator)
        app.router.add_post("/cxf", self.cxf)
        app.router.add_post("/mtom", self.mtom)
        app.router.add_get("/files/{name}", self.file)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # -- endpoints ------------------------------------------------------------------------

    async def erp(self, request: web.Request) -> web.StreamResponse:
        version = "1.2" if request.path.endswith("12") else "1.1"
        try:
            call = await self._receive(request, version)
        except Refused as refused:
            return fault(version, refused.code, refused.reason, subcode=refused.subcode)
        handler = {
            "UpsertCustomer": self._upsert,
            "GetCustomer": self._get_customer,
            "Payment": self._payment,
            "PingText": self._ping,
        }.get(call.operation)
        if handler is None:
            return fault(version, "Client", f"unknown operation {call.operation}")
        return await handler(call)

    async def calculator(self, request: web.Request) -> web.StreamResponse:
        version = "1.2" if request.content_type == "application/soap+xml" else "1.1"
        try:
            call = await self._receive(request, version)
        except Refused as refused:
            return fault(version, refused.code, refused.reason)
        total = int(call.text("intA") or 0) + int(call.text("intB") or 0)
        if version == "1.1" and total == 5:
            return xml_response((ENVELOPES / "dneonline-soap11-Add-response.xml").read_bytes())
        result = f'<AddResponse xmlns="{TEMPURI}"><AddResult>{total}</AddResult></AddResponse>'
        return envelope_response(version, result)

    async def cxf(self, request: web.Request) -> web.StreamResponse:
        try:
            call = await self._receive(request, "1.1")
        except Refused as refused:
            return fault("1.1", refused.code, refused.reason)
        if call.operation == "updateCustomer":
            return web.Response(status=202)
        name = call.text("name")
        if name == "nobody":
            detail = (
                f'<ns2:NoSuchCustomer xmlns:ns2="{CXF}"><customerName>{name}</customerName>'
                "</ns2:NoSuchCustomer>"
            )
            return fault("1.1", "Client", "Did not find any matching customer", detail=detail)
        result = (
            f'<ns2:getCustomersByNameResponse xmlns:ns2="{CXF}"><return>'
            f"<customerId>7</customerId><name>{name}</name><address>Pine Street 200</address>"
            "<address>Boston</address><numOrders>3</numOrders><revenue>1234.5</revenue>"
            "<test>0.10</test><birthDate>1815-12-10</birthDate><type>BUSINESS</type>"
            "</return></ns2:getCustomersByNameResponse>"
        )
        return envelope_response("1.1", result)

    async def mtom(self, request: web.Request) -> web.StreamResponse:
        try:
            call = await self._receive(request, "1.1")
        except Refused as refused:
            return fault("1.1", refused.code, refused.reason)
        content = base64.b64decode(call.text("fileBytes") or "")
        message = f"got {call.text('fileName')}: {len(content)} bytes, {content[:5]!r}"
        result = (
            f'<ns0:uploadResponse xmlns:ns0="{MTOM}"><message>{message}</message>'
            "</ns0:uploadResponse>"
        )
        return envelope_response("1.1", result)

    async def file(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.file_requests.append(name)
        if name not in self.files:
            return web.Response(status=404, text="no such file")
        return web.Response(body=self.files[name], content_type="text/xml")

    # -- operations of the ERP --------------------------------------------------------------

    async def _upsert(self, call: Call) -> web.StreamResponse:
        version = call.version
        customer = call.text("CustomerId") or ""
        prefix = customer.split("-", 1)[0]
        if prefix == "slow":
            await asyncio.sleep(1.5)
        canned = self._canned(version, customer).get(prefix)
        if canned is not None:
            return canned
        limit = Decimal(call.text("CreditLimit") or "0")
        known = customer in self.customers
        self.customers.setdefault(customer, {"Name": call.text("Name")})
        warnings = "".join(
            f"<e:Warning>{tag} is unknown</e:Warning>"
            for tag in (e.text for e in call.body.iter(f"{{{ERP}}}Tag"))
        )
        result = (
            f'<e:UpsertCustomerResponse xmlns:e="{ERP}"><e:AccountId>A-{customer}</e:AccountId>'
            f"<e:Outcome>{'UPDATED' if known else 'CREATED'}</e:Outcome>"
            "<e:ProcessedAt>2026-11-24T12:00:00Z</e:ProcessedAt>"
            f"<e:Balance>{limit:.2f}</e:Balance>{warnings}</e:UpsertCustomerResponse>"
        )
        return envelope_response(version, result)

    def _canned(self, version: str, customer: str) -> dict[str, web.Response]:
        """The answers of UpsertCustomer that its customer id's prefix asks for."""
        detail = (
            f'<e:CustomerRejected xmlns:e="{ERP}"><e:CustomerId>{customer}</e:CustomerId>'
            "<e:Reason>credit limit above policy</e:Reason></e:CustomerRejected>"
        )
        captured = {
            "1.1": "dneonline-soap11-fault-invalid-soapaction.xml",
            "1.2": "dneonline-soap12-fault-missing-action.xml",
        }[version]
        return {
            "reject": fault(version, "Client", "Customer rejected", detail=detail),
            "down": fault(version, "Server", "ERP database unavailable"),
            "busy": web.Response(status=503, text="maintenance", headers={"Retry-After": "7"}),
            "gone": web.Response(status=404, text="no such endpoint"),
            "moved": web.Response(status=302, headers={"Location": "/erp/elsewhere"}),
            "html": web.Response(
                text="<html><body>Welcome</body></html>", content_type="text/html"
            ),
            "dotnet": xml_response(
                (ENVELOPES / captured).read_bytes(), version=version, status=500
            ),
        }

    async def _get_customer(self, call: Call) -> web.StreamResponse:
        customer = call.text("CustomerId") or ""
        record = self.customers.get(customer)
        if record is None:
            return fault(call.version, "Client", f"no customer {customer}")
        if record.get("down"):
            return fault(call.version, "Server", "customer archive offline")
        tags = "".join(f"<e:Tag>{tag}</e:Tag>" for tag in record.get("Tag", []))
        result = (
            f'<e:GetCustomerResponse xmlns:e="{ERP}"><e:Customer>'
            f"<e:CustomerId>{customer}</e:CustomerId><e:Name>{record['Name']}</e:Name>"
            f"<e:CreditLimit>{record.get('CreditLimit', '0.00')}</e:CreditLimit>"
            f"<e:Since>{record.get('Since', '2020-01-31')}</e:Since>{tags}"
            "</e:Customer></e:GetCustomerResponse>"
        )
        return envelope_response(call.version, result)

    async def _payment(self, call: Call) -> web.StreamResponse:
        number = f"R-{call.text('CustomerId')}-{call.text('Amount')}-{call.text('Currency')}"
        result = (
            f'<e:PaymentReceipt xmlns:e="{ERP}"><e:ReceiptNo>{number}</e:ReceiptNo>'
            "</e:PaymentReceipt>"
        )
        return envelope_response(call.version, result)

    async def _ping(self, call: Call) -> web.StreamResponse:
        result = f'<e:PingEcho xmlns:e="{ERP}">{call.body.text}</e:PingEcho>'
        return envelope_response(call.version, result)

    # -- reading a request ------------------------------------------------------------------

    async def _receive(self, request: web.Request, version: str) -> Call:
        if self.basic is not None:
            expected = base64.b64encode(":".join(self.basic).encode()).decode()
            if request.headers.get("Authorization") != f"Basic {expected}":
                raise web.HTTPUnauthorized(text="who are you?")
        raw = await request.read()
        envelope_ns = SOAP12 if version == "1.2" else SOAP11
        media = request.content_type
        if version == "1.1" and (media != "text/xml" or "SOAPAction" not in request.headers):
            raise Refused("Client", f"SOAP 1.1 wants text/xml and SOAPAction, not {media}")
        if version == "1.2" and media != "application/soap+xml":
            raise Refused("Client", f"SOAP 1.2 wants application/soap+xml, not {media}")
        try:
            root = etree.fromstring(raw, _PARSER)
        except etree.XMLSyntaxError as error:
            raise Refused("Client", f"not XML: {error}") from None
        if root.getroottree().docinfo.doctype:
            raise Refused("Client", "DOCTYPE refused")
        if root.tag != f"{{{envelope_ns}}}Envelope":
            raise Refused("VersionMismatch", f"expected a SOAP {version} envelope")
        header = root.find(f"{{{envelope_ns}}}Header")
        body = root.find(f"{{{envelope_ns}}}Body")
        first = next(iter(body)) if body is not None and len(body) else None
        if first is None:
            raise Refused("Client", "empty body")
        security = header.find(f"{{{WSSE}}}Security") if header is not None else None
        others = [
            element
            for element in (header if header is not None else [])
            if element.tag != f"{{{WSSE}}}Security"
        ]
        call = Call(
            path=request.path,
            headers=dict(request.headers),
            version=version,
            operation=etree.QName(first).localname,
            body=first,
            soap_headers=others,
            security=security,
        )
        self.calls.append(call)
        if self.users:
            call.user, call.password_type = self._check_wsse(security)
        return call

    def _check_wsse(self, security: Any) -> tuple[str, str]:
        failed = ("Client", "The security token could not be authenticated or authorized")
        subcode = "FailedAuthentication"
        if security is None:
            raise Refused(*failed, subcode=subcode)
        token = security.find(f"{{{WSSE}}}UsernameToken")
        stamp = security.find(f"{{{WSU}}}Timestamp")
        if stamp is None or stamp.find(f"{{{WSU}}}Created") is None:
            raise Refused("Client", "a wsu:Timestamp is required", subcode="InvalidSecurity")
        expires = stamp.findtext(f"{{{WSU}}}Expires")
        if not expires or _instant(expires) <= datetime.now(UTC):
            raise Refused("Client", "the message has expired", subcode="MessageExpired")
        if token is None:
            raise Refused(*failed, subcode=subcode)
        user = token.findtext(f"{{{WSSE}}}Username") or ""
        password = token.find(f"{{{WSSE}}}Password")
        if password is None or user not in self.users:
            raise Refused(*failed, subcode=subcode)
        kind = password.get("Type", PASSWORD_TEXT)
        secret = self.users[user].encode()
        if kind == PASSWORD_DIGEST:
            nonce = base64.b64decode(token.findtext(f"{{{WSSE}}}Nonce") or "")
            created = token.findtext(f"{{{WSU}}}Created") or ""
            expected = base64.b64encode(
                hashlib.sha1(nonce + created.encode() + secret).digest()  # noqa: S324
            ).decode()
            good = bool(nonce and created) and hmac.compare_digest(
                expected, (password.text or "").strip()
            )
        else:
            good = hmac.compare_digest(secret, (password.text or "").encode())
        if not good:
            raise Refused(*failed, subcode=subcode)
        return user, kind


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def envelope_response(version: str, body: str, *, status: int = 200) -> web.Response:
    namespace = SOAP12 if version == "1.2" else SOAP11
    text = (
        f'<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="{namespace}">'
        f"<soap:Body>{body}</soap:Body></soap:Envelope>"
    )
    return xml_response(text.encode(), version=version, status=status)


def xml_response(content: bytes, *, version: str = "1.1", status: int = 200) -> web.Response:
    media = "application/soap+xml" if version == "1.2" else "text/xml"
    return web.Response(
        body=content, status=status, headers={"Content-Type": f"{media}; charset=utf-8"}
    )


def fault(
    version: str,
    code: str,
    reason: str,
    *,
    detail: str = "",
    subcode: str | None = None,
) -> web.Response:
    """A fault: SOAP 1.1 with HTTP 500; SOAP 1.2 with 400 for Sender, 500 otherwise. A
    WS-Security subcode becomes the 1.1 faultcode itself (wsse:FailedAuthentication), as the
    WS-Security specification has it, and a 1.2 Subcode."""
    if version == "1.1":
        faultcode = f"wsse:{subcode}" if subcode else f"soap:{code}"
        text = (
            f'<soap:Fault xmlns:wsse="{WSSE}"><faultcode>{faultcode}</faultcode>'
            f"<faultstring>{reason}</faultstring>"
            + (f"<detail>{detail}</detail>" if detail else "")
            + "</soap:Fault>"
        )
        return envelope_response("1.1", text, status=500)
    value = {"Client": "Sender", "Server": "Receiver"}.get(code, code)
    sub = (
        f'<soap:Subcode><soap:Value xmlns:wsse="{WSSE}">wsse:{subcode}</soap:Value></soap:Subcode>'
        if subcode
        else ""
    )
    text = (
        f"<soap:Fault><soap:Code><soap:Value>soap:{value}</soap:Value>{sub}</soap:Code>"
        f'<soap:Reason><soap:Text xml:lang="en">{reason}</soap:Text></soap:Reason>'
        + (f"<soap:Detail>{detail}</soap:Detail>" if detail else "")
        + "</soap:Fault>"
    )
    return envelope_response("1.2", text, status=400 if value == "Sender" else 500)
