"""Outbound SOAP calls and SOAP lookups against a real SOAP service on localhost
(tests/soap_service.py): WSDL loading, how each request is built, WS-Security, and how each
answer is classified. Nothing here mocks HTTP."""

import asyncio
import base64
import socket
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from lxml import etree

from adapters.soap.faults import PermanentSoapFaultError, TransientSoapFaultError, find_fault
from adapters.soap.lookup import SoapLookup
from adapters.soap.outbound import SoapDelivery, SoapOutbound, UsernameToken
from adapters.soap.wsdl import clear_wsdl_cache, load_wsdl
from bus.auth.settings import outbound_auth
from bus.delivery.runner import describe
from bus.errors import ConfigError, PermanentDeliveryError, TransientDeliveryError
from bus.events.catalog import SchemaCatalog
from bus.events.codec import DecodedEvent
from bus.events.event import Event
from bus.flows.expressions import compile_expression
from bus.flows.steps.base import Item, StepError
from bus.flows.steps.enrich import Enrich
from tests.conftest import free_port
from tests.soap_service import ENVELOPES, ERP, SOAP11, SOAP12, WSDL_DIR, WSSE, WSU, SoapService

ROOT = Path(__file__).resolve().parents[1]
CATALOG = SchemaCatalog.load(ROOT / "schemas")
ERP_WSDL = WSDL_DIR / "erp-accounts.wsdl"
PORTS = {"1.1": "ErpPort", "1.2": "ErpPort12"}
PATHS = {"1.1": "/erp/accounts", "1.2": "/erp/accounts12"}
PASSWORD = "erp-s3cret-9f2c"
UPSERT_MAP = {
    "CustomerId": "event.customerId",
    "Name": "event.name",
    "CreditLimit": "event.limit",
    "Since": "event.since",
    "ChangedAt": "event.at",
    "Address": '{"Street": event.street, "City": "Boston"}',
    "Tag": "event.tags",
}


@pytest.fixture
async def service() -> AsyncIterator[SoapService]:
    service = SoapService()
    await service.start()
    yield service
    await service.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def customer(customer_id: str = "c-1", **data: Any) -> DecodedEvent:
    values = {
        "customerId": customer_id,
        "name": "Ada Lovelace",
        "limit": Decimal("5000.10"),
        "since": date(2020, 1, 31),
        "at": datetime(2026, 11, 24, 12, 30, 15, 250000, tzinfo=UTC),
        "street": "Pine Street 200",
        "tags": ["vip", "eu"],
    } | data
    event = Event(type="com.acme.crm.CustomerChanged", data=values, key=customer_id)
    return DecodedEvent(event=event, writer=CATALOG.current("com.acme.crm.CustomerChanged"))


def delivery(
    service: SoapService,
    session: aiohttp.ClientSession,
    soap: dict[str, Any] | None = None,
    *,
    version: str = "1.1",
    field_map: dict[str, str] | None = None,
    seconds: float = 2.0,
) -> SoapDelivery:
    settings = SoapOutbound.model_validate(
        {
            "wsdl": str(ERP_WSDL),
            "service": "ErpService",
            "port": PORTS[version],
            "operation": "UpsertCustomer",
            "address": service.url + PATHS[version],
        }
        | (soap or {})
    )
    auth = outbound_auth(settings.auth, session) if settings.auth else None
    return SoapDelivery(
        "erp-sync",
        settings,
        field_map=UPSERT_MAP if field_map is None else field_map,
        session=session,
        auth=auth,
        call_timeout=seconds,
    )


def children(element: Any) -> list[tuple[str, str | None]]:
    return [(etree.QName(child).localname, child.text) for child in element]


# -- the WSDL ----------------------------------------------------------------------------------


def test_an_operation_says_its_version_style_and_elements() -> None:
    wsdl = load_wsdl(ERP_WSDL)
    wrapped = wsdl.operation("UpsertCustomer", service="ErpService", port="ErpPort12")
    assert (wrapped.soap_version, wrapped.style, wrapped.wrapped) == ("1.2", "document", True)
    assert wrapped.input_elements[:2] == ("CustomerId", "Name")
    assert wrapped.output_elements == ("AccountId", "Outcome", "ProcessedAt", "Balance", "Warning")
    assert wrapped.faults == ("CustomerRejected",)
    assert wrapped.address == "http://127.0.0.1:9/erp/accounts12"
    assert wrapped.soap_action == "urn:acme:erp:accounts/UpsertCustomer"
    bare = wsdl.operation("RegisterPayment", port="ErpArchivePort")
    assert (bare.soap_version, bare.wrapped, bare.input_is_value) == ("1.1", False, False)
    assert bare.input_element == f"{{{ERP}}}Payment"
    value = wsdl.operation("Ping", port="ErpPort")
    assert value.input_is_value
    assert value.input_value_names == ("text", "PingText")
    assert load_wsdl(str(ERP_WSDL)) is wsdl  # loaded once


@pytest.mark.parametrize(
    ("choice", "message"),
    [
        ({}, "offered by several ports .*ErpService/ErpPort \\(SOAP 1.1\\), "
         "ErpService/ErpPort12 \\(SOAP 1.2\\), ErpArchiveService/ErpArchivePort"),
        ({"service": "ErpService"}, "choose one with service: ErpService, port: ErpPort; "
         "service: ErpService, port: ErpPort12"),
        ({"service": "Erp"}, "no service 'Erp'; services: ErpService, ErpArchiveService"),
        ({"port": "ErpPort13"}, "no port 'ErpPort13'; ports: ErpService/ErpPort"),
    ],
)  # fmt: skip
def test_an_ambiguous_or_wrong_port_lists_the_choices(choice: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_wsdl(ERP_WSDL).operation("UpsertCustomer", **choice)


def test_an_unknown_operation_lists_the_operations() -> None:
    with pytest.raises(ConfigError, match="operations: GetCustomer, Ping, RegisterPayment, Upsert"):
        load_wsdl(ERP_WSDL).operation("UpsertCustomers", port="ErpPort")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Any attempt to open a connection fails the test (and the WSDL cache starts empty)."""
    clear_wsdl_cache()

    def refuse(*args: Any, **kwargs: Any) -> None:
        pytest.fail(f"network access while loading a local WSDL: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield
    clear_wsdl_cache()


@pytest.mark.usefixtures("no_network")
def test_local_wsdls_load_with_no_network() -> None:
    for name in ("erp-accounts.wsdl", "cxf-CustomerService-faults.wsdl", "calculator.wsdl"):
        assert load_wsdl(WSDL_DIR / name).ports()
    imported = load_wsdl(WSDL_DIR / "import" / "mtom_attachment.wsdl")
    # The types come from the XSD next to it, imported with a relative schemaLocation.
    assert imported.operation("upload").input_elements == ("fileName", "fileBytes")
    assert [Path(p).name for p in imported.sources] == [
        "mtom_attachment.wsdl",
        "mtom_attachment.xsd",
    ]


async def test_a_local_wsdl_never_fetches_a_remote_import(
    service: SoapService, tmp_path: Path
) -> None:
    service.files["types.xsd"] = (WSDL_DIR / "import" / "mtom_attachment.xsd").read_bytes()
    text = (WSDL_DIR / "import" / "mtom_attachment.wsdl").read_text()
    wsdl = tmp_path / "remote-import.wsdl"
    wsdl.write_text(text.replace('"mtom_attachment.xsd"', f'"{service.url}/files/types.xsd"'))
    # In a thread, so that the service (on this loop) would answer if it were asked.
    with pytest.raises(ConfigError, match=r"refused to fetch http://127\.0\.0\.1.*types\.xsd"):
        await asyncio.to_thread(load_wsdl, wsdl)
    assert service.file_requests == []


async def test_a_url_wsdl_is_fetched_once_with_its_imports(service: SoapService) -> None:
    for name in ("mtom_attachment.wsdl", "mtom_attachment.xsd"):
        service.files[name] = (WSDL_DIR / "import" / name).read_bytes()
    url = f"{service.url}/files/mtom_attachment.wsdl"
    first = await asyncio.to_thread(load_wsdl, url, timeout=5.0)
    again = await asyncio.to_thread(load_wsdl, url)
    assert first is again
    assert service.file_requests == ["mtom_attachment.wsdl", "mtom_attachment.xsd"]
    assert first.operation("upload").output_elements == ("message",)


async def test_a_url_wsdl_may_not_read_local_files(service: SoapService) -> None:
    text = (WSDL_DIR / "import" / "mtom_attachment.wsdl").read_text()
    local = (WSDL_DIR / "import" / "mtom_attachment.xsd").resolve().as_uri()
    service.files["sly.wsdl"] = text.replace('"mtom_attachment.xsd"', f'"{local}"').encode()
    with pytest.raises(ConfigError, match="may not read local files"):
        await asyncio.to_thread(load_wsdl, f"{service.url}/files/sly.wsdl")
    with pytest.raises(ConfigError, match="answered HTTP 404"):
        await asyncio.to_thread(load_wsdl, f"{service.url}/files/missing.wsdl")


def test_a_wsdl_with_a_doctype_or_entities_is_refused(tmp_path: Path) -> None:
    text = ERP_WSDL.read_text().replace(
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY file SYSTEM "file:///etc/passwd">]>',
    )
    path = tmp_path / "xxe.wsdl"
    path.write_text(text)
    with pytest.raises(ConfigError, match="DOCTYPE or entity declarations"):
        load_wsdl(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_wsdl(tmp_path / "nope.wsdl")


# -- requests and responses ------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.1", "1.2"])
async def test_a_wrapped_call_sends_exact_values_and_returns_plain_data(
    service: SoapService, session: aiohttp.ClientSession, version: str
) -> None:
    event = customer()
    response = await delivery(service, session, version=version).call(event)
    (call,) = service.calls
    assert call.path == PATHS[version]
    assert call.operation == "UpsertCustomer"
    assert call.headers["Idempotency-Key"] == event.event.id
    if version == "1.1":
        assert call.headers["Content-Type"].startswith("text/xml")
        assert call.headers["SOAPAction"] == '"urn:acme:erp:accounts/UpsertCustomer"'
    else:
        assert call.headers["Content-Type"].startswith("application/soap+xml")
        assert 'action="urn:acme:erp:accounts/UpsertCustomer"' in call.headers["Content-Type"]
    assert children(call.body) == [
        ("CustomerId", "c-1"),
        ("Name", "Ada Lovelace"),
        ("CreditLimit", "5000.10"),  # exact, scale kept
        ("Since", "2020-01-31"),
        ("ChangedAt", "2026-11-24T12:30:15.250000Z"),
        ("Address", None),
        ("Tag", "vip"),
        ("Tag", "eu"),
    ]
    assert children(call.body.find(f"{{{ERP}}}Address")) == [
        ("Street", "Pine Street 200"),
        ("City", "Boston"),
    ]
    assert response.status == 200
    assert response.headers["content-type"].startswith(
        "text/xml" if version == "1.1" else "application/soap+xml"
    )
    assert response.body == {
        "AccountId": "A-c-1",
        "Outcome": "CREATED",
        "ProcessedAt": datetime(2026, 11, 24, 12, 0, tzinfo=UTC),
        "Balance": Decimal("5000.10"),
        "Warning": ["vip is unknown", "eu is unknown"],
    }
    assert type(response.body) is dict
    assert response.body["ProcessedAt"].tzinfo is UTC
    assert response.as_variable()["body"]["Balance"] == Decimal("5000.10")


async def test_the_reply_mapping_reads_the_body_like_rest(
    service: SoapService, session: aiohttp.ClientSession
) -> None:
    response = await delivery(service, session).call(customer("c-2"))
    variables = {"response": response.as_variable(), "event": {}, "attributes": {}}
    read = compile_expression("response.body.AccountId", ("response", "event", "attributes"))
    assert read.evaluate_in(variables) == "A-c-2"
    computed = compile_expression(
        'response.body.Outcome + ":" + string(size(response.body.Warning))',
        ("response", "event", "attributes"),
    )
    assert computed.evaluate_in(variables) == "CREATED:2"


async def test_without_a_map_the_event_data_is_the_request(
    service: SoapService, session: aiohttp.ClientSession
) -> None:
    data = {"CustomerId": "c-3", "Name": "Grace", "CreditLimit": Decimal("1.50"), "Tag": []}
    event = Event(type="com.acme.crm.CustomerChanged", data=data)
    decoded = DecodedEvent(event=event, writer=CATALOG.current("com.acme.crm.CustomerChanged"))
    response = await delivery(service, session, field_map={}).call(decoded)
    assert children(service.calls[0].body) == [
        ("CustomerId", "c-3"),
        ("Name", "Grace"),
        ("CreditLimit", "1.50"),
    ]
    assert response.body["Balance"] == Decimal("1.50")


@pytest.mark.parametrize("version", ["1.1", "1.2"])
async def test_bare_operations(
    service: SoapService, session: aiohttp.ClientSession, version: str
) -> None:
    payment = delivery(
        service,
        session,
        # The binding declares this header: it is named by its part.
        {"operation": "RegisterPayment", "headers": {"tenant": '{"Tenant": "acme"}'}},
        version=version,
        field_map={"CustomerId": "event.customerId", "Amount": "event.limit", "Currency": '"EUR"'},
    )
    response = await payment.call(customer("c-4"))
    call = service.calls[-1]
    assert call.operation == "Payment"  # the element, not the operation's name
    assert [(h.tag, children(h)) for h in call.soap_headers] == [
        (f"{{{ERP}}}TenantHeader", [("Tenant", "acme")])
    ]
    assert response.body == {"ReceiptNo": "R-c-4-5000.10-EUR"}
    # A body element of a simple type: the request is one value, the answer too.
    ping = delivery(
        service, session, {"operation": "Ping"}, version=version, field_map={"text": "event.name"}
    )
    assert (await ping.call(customer())).body == "Ada Lovelace"
    assert service.calls[-1].operation == "PingText"


async def test_an_xsd_imported_beside_the_wsdl_serves_calls(
    service: SoapService, session: aiohttp.ClientSession
) -> None:
    settings = SoapOutbound.model_validate(
        {
            "wsdl": str(WSDL_DIR / "import" / "mtom_attachment.wsdl"),
            "operation": "upload",
            "address": service.url + "/mtom",
        }
    )
    upload = SoapDelivery(
        "upload",
        settings,
        field_map={"fileName": '"report.pdf"', "fileBytes": "event.content"},
        session=session,
        auth=None,
        call_timeout=2.0,
    )
    event = Event(type="com.acme.Files", data={"content": b"%PDF-1.7 \x00\xff"})
    response = await upload.call(DecodedEvent(event=event, writer=customer().writer))
    assert response.body == {"message": "got report.pdf: 11 bytes, b'%PDF-'"}
    (call,) = service.calls
    assert base64.b64decode(call.text("fileBytes") or "") == b"%PDF-1.7 \x00\xff"


async def test_the_cxf_service_one_way_call_typed_answer_and_declared_fault(
    service: SoapService, session: aiohttp.ClientSession
) -> None:
    def cxf(operation: str, field_map: dict[str, str]) -> SoapDelivery:
        settings = SoapOutbound.model_validate(
            {
                "wsdl": str(WSDL_DIR / "cxf-CustomerService-faults.wsdl"),
                "operation": operation,
                "address": service.url + "/cxf",
            }
        )
        return SoapDelivery(
            "cxf", settings, field_map=field_map, session=session, auth=None, call_timeout=2.0
        )

    one_way = cxf(
        "updateCustomer",
        {
            "customer": '{"customerId": 7, "name": event.name, "revenue": 1.5, '
            '"test": event.limit, "birthDate": event.since, "type": "PRIVATE"}'
        },
    )
    response = await one_way.call(customer())
    assert (response.status, response.body) == (202, None)
    sent = service.calls[0].body.find("customer")  # unqualified elements
    assert children(sent)[:2] == [("customerId", "7"), ("name", "Ada Lovelace")]
    assert ("test", "5000.10") in children(sent)
    assert ("birthDate", "2020-01-31") in children(sent)

    lookup = cxf("getCustomersByName", {"name": "event.name"})
    answer = (await lookup.call(customer())).body
    assert answer == {
        "return": [
            {
                "customerId": 7,
                "name": "Ada Lovelace",
                "address": ["Pine Street 200", "Boston"],
                "numOrders": 3,
                "revenue": 1234.5,
                "test": Decimal("0.10"),
                "birthDate": date(1815, 12, 10),
                "type": "BUSINESS",
            }
        ]
    }
    with pytest.raises(PermanentSoapFaultError) as caught:
        await lookup.call(customer(name="nobody"))
    assert caught.value.fault.code == "Client"
    assert "Did not find any matching customer" in caught.value.reason
    assert caught.value.excerpt == (
        '<ns2:NoSuchCustomer xmlns:ns2="http://customerservice.example.com/">'
        "<customerName>nobody</customerName></ns2:NoSuchCustomer>"
    )


@pytest.mark.parametrize("version", ["1.1", "1.2"])
async def test_the_calculator_request_and_captured_response(
    service: SoapService, session: aiohttp.ClientSession, version: str
) -> None:
    settings = SoapOutbound.model_validate(
        {
            "wsdl": str(WSDL_DIR / "calculator.wsdl"),
            "port": {"1.1": "CalculatorSoap", "1.2": "CalculatorSoap12"}[version],
            "operation": "Add",
            "address": service.url + "/calculator",
        }
    )
    add = SoapDelivery(
        "add",
        settings,
        field_map={"intA": "event.a", "intB": "event.b"},
        session=session,
        auth=None,
        call_timeout=2.0,
    )
    event = Event(type="com.acme.Sum", data={"a": 2, "b": 3})
    response = await add.call(DecodedEvent(event=event, writer=customer().writer))
    # 1.1: the calculator's own captured answer, as it is.
    assert response.body == {"AddResult": 5}
    if version == "1.2":  # what we sent has the shape of the captured SOAP 1.2 request
        captured = etree.parse(ENVELOPES / "dneonline-soap12-Add-request.xml").getroot()
        expected = captured.find(f"{{{SOAP12}}}Body")[0]
        sent = service.calls[0].body
        assert sent.tag == expected.tag
        assert [(c.tag, c.text) for c in sent] == [(c.tag, c.text) for c in expected]


# -- WS-Security and other headers -------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.1", "1.2"])
@pytest.mark.parametrize("digest", [False, True])
async def test_ws_security_text_and_digest_are_accepted(
    service: SoapService, session: aiohttp.ClientSession, version: str, digest: bool
) -> None:
    service.users = {"bus": PASSWORD}
    wsse = {"username": "bus", "password": PASSWORD, "digest": digest}
    sync = delivery(service, session, {"wsse": wsse}, version=version)
    await sync.call(customer("c-5"))
    await sync.call(customer("c-5"))
    first, second = service.calls
    assert (first.user, second.user) == ("bus", "bus")
    assert first.password_type.endswith("#PasswordDigest" if digest else "#PasswordText")
    envelope_ns = SOAP12 if version == "1.2" else SOAP11
    assert first.security.get(f"{{{envelope_ns}}}mustUnderstand") == "1"
    stamp = first.security.find(f"{{{WSU}}}Timestamp")
    created = datetime.fromisoformat(stamp.findtext(f"{{{WSU}}}Created").replace("Z", "+00:00"))
    expires = datetime.fromisoformat(stamp.findtext(f"{{{WSU}}}Expires").replace("Z", "+00:00"))
    assert (expires - created).total_seconds() == 300
    if digest:  # fresh for each call: a nonce sent twice is a replay
        nonces = [c.security.findtext(f".//{{{WSSE}}}Nonce") for c in (first, second)]
        assert nonces[0] != nonces[1]
        assert PASSWORD not in etree.tostring(first.security).decode()


@pytest.mark.parametrize("version", ["1.1", "1.2"])
@pytest.mark.parametrize("digest", [False, True])
async def test_a_wrong_password_is_refused_by_the_service_and_permanent(
    service: SoapService, session: aiohttp.ClientSession, version: str, digest: bool
) -> None:
    service.users = {"bus": PASSWORD}
    wsse = {"username": "bus", "password": "not-" + PASSWORD, "digest": digest}
    with pytest.raises(PermanentSoapFaultError) as caught:
        await delivery(service, session, {"wsse": wsse}, version=version).call(customer())
    error = caught.value
    assert "could not be authenticated" in error.reason
    if version == "1.1":  # WS-Security's own fault code
        assert (error.fault.code, error.fault.code_namespace) == ("FailedAuthentication", WSSE)
        assert error.status == 500
    else:
        assert error.fault.code == "Sender"
        assert error.fault.subcodes == (f"{{{WSSE}}}FailedAuthentication",)
        assert error.status == 400
    assert PASSWORD not in repr(error) + error.reason + error.excerpt


async def test_ws_security_without_a_timestamp_is_refused(
    service: SoapService, session: aiohttp.ClientSession
) -> None:
    service.users = {"bus": PASSWORD}
    wsse = {"username": "bus", "password": PASSWORD, "timestamp": False}
    with pytest.raises(PermanentDeliveryError, match="wsu:Timestamp is required"):
        await delivery(service, session, {"wsse": wsse}).call(customer())


@pytest.mark.parametrize("version", ["1.1", "1.2"])
async def test_extra_soap_headers_are_sent(
    service: SoapService, session: aiohttp.ClientSession, version: str
) -> None:
    headers = {
        "TenantHeader": '{"Tenant": "acme-" + event.customerId}',  # a global element of the WSDL
        "{urn:acme:trace}Trace": '{"Id": attributes.id, "Hop": [1, 2]}',  # one it does not have
        "{urn:acme:trace}Channel": '"crm"',
    }
    service.users = {"bus": PASSWORD}
    wsse = {"username": "bus", "password": PASSWORD, "digest": True}
    event = customer("c-6")
    await delivery(service, session, {"headers": headers, "wsse": wsse}, version=version).call(
        event
    )
    (call,) = service.calls
    assert call.user == "bus"
    tenant, trace, channel = call.soap_headers
    assert tenant.tag == f"{{{ERP}}}TenantHeader"
    assert children(tenant) == [("Tenant", "acme-c-6")]
    assert trace.tag == "{urn:acme:trace}Trace"
    assert [(c.tag, c.text) for c in trace] == [  # sorted: CEL maps have no order
        ("{urn:acme:trace}Hop", "1"),
        ("{urn:acme:trace}Hop", "2"),
        ("{urn:acme:trace}Id", event.event.id),
    ]
    assert (channel.tag, channel.text) == ("{urn:acme:trace}Channel", "crm")


def test_a_header_the_wsdl_lacks_must_be_namespaced(session: aiohttp.ClientSession) -> None:
    settings = SoapOutbound.model_validate(
        {"wsdl": str(ERP_WSDL), "port": "ErpPort", "operation": "Ping", "headers": {"Nope": "1"}}
    )
    with pytest.raises(ConfigError, match=r"SOAP header 'Nope'.*\{namespace\}Name"):
        SoapDelivery("x", settings, field_map={}, session=session, auth=None, call_timeout=1.0)


async def test_http_basic_auth_goes_along(
    service: SoapService, session: aiohttp.ClientSession
) -> None:
    service.basic = ("bus", "http-pass")
    auth = {"basic": {"user": "bus", "password": "http-pass"}}
    response = await delivery(service, session, {"auth": auth}).call(customer())
    assert response.status == 200
    assert service.calls[0].headers["Authorization"].startswith("Basic ")
    wrong = {"basic": {"user": "bus", "password": "wrong"}}
    with pytest.raises(PermanentDeliveryError, match="HTTP 401") as caught:
        await delivery(service, session, {"auth": wrong}).call(customer())
    assert caught.value.status == 401


# -- classification ----------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.1", "1.2"])
async def test_a_client_fault_is_permanent_with_code_string_and_detail(
    service: SoapService, session: aiohttp.ClientSession, version: str
) -> None:
    with pytest.raises(PermanentSoapFaultError) as caught:
        await delivery(service, session, version=version).call(customer("reject-7"))
    error = caught.value
    code = "soap:Client" if version == "1.1" else "soap12:Sender"
    assert error.reason.startswith(f"SOAP fault {code}: Customer rejected; detail: ")
    assert error.status == (500 if version == "1.1" else 400)
    assert error.excerpt == (
        f'<e:CustomerRejected xmlns:e="{ERP}"><e:CustomerId>reject-7</e:CustomerId>'
        "<e:Reason>credit limit above policy</e:Reason></e:CustomerRejected>"
    )
    # The dead letter states the detail once: it is in the reason, so not again as the excerpt.
    assert describe(error) == f"{error.reason} (HTTP {error.status})"


@pytest.mark.parametrize("version", ["1.1", "1.2"])
async def test_captured_dotnet_faults_are_permanent(
    service: SoapService, session: aiohttp.ClientSession, version: str
) -> None:
    with pytest.raises(PermanentSoapFaultError) as caught:
        await delivery(service, session, version=version).call(customer("dotnet-1"))
    fault = caught.value.fault
    assert fault.code == ("Client" if version == "1.1" else "Sender")
    assert fault.string.startswith("System.Web.Services.Protocols.SoapException: ")
    assert "Boolean& abortProcessing" in fault.string  # the entity, read
    assert "\n" not in caught.value.reason
    assert len(caught.value.reason) <= 500


def test_the_captured_fault_envelopes_parse_as_faults() -> None:
    eleven = etree.parse(ENVELOPES / "dneonline-soap11-fault-invalid-soapaction.xml").getroot()
    twelve = etree.parse(ENVELOPES / "dneonline-soap12-fault-missing-action.xml").getroot()
    answer = etree.parse(ENVELOPES / "dneonline-soap11-Add-response.xml").getroot()
    one, two = find_fault(eleven), find_fault(twelve)
    assert one is not None
    assert two is not None
    assert (one.version, one.qualified_code, one.transient, one.detail) == (
        "1.1",
        "soap:Client",
        False,
        "",
    )
    assert (two.version, two.qualified_code, two.transient) == ("1.2", "soap12:Sender", False)
    assert "valid action parameter" in two.string
    assert find_fault(answer) is None


@pytest.mark.parametrize("version", ["1.1", "1.2"])
async def test_a_server_fault_is_transient(
    service: SoapService, session: aiohttp.ClientSession, version: str
) -> None:
    with pytest.raises(TransientSoapFaultError) as caught:
        await delivery(service, session, version=version).call(customer("down-1"))
    code = "soap:Server" if version == "1.1" else "soap12:Receiver"
    assert caught.value.reason == f"SOAP fault {code}: ERP database unavailable"
    assert caught.value.status == 500


@pytest.mark.parametrize(
    "case",
    [
        ("busy-1", TransientDeliveryError, 503, "HTTP 503"),
        ("gone-1", PermanentDeliveryError, 404, "HTTP 404"),
        ("moved-1", PermanentDeliveryError, 302, "HTTP 302"),  # not followed
        ("html-1", TransientDeliveryError, 200, "not a SOAP 1.1 envelope"),
    ],
)
async def test_answers_without_a_fault_are_classified_by_status(
    service: SoapService,
    session: aiohttp.ClientSession,
    case: tuple[str, type[Exception], int, str],
) -> None:
    customer_id, kind, status, message = case
    with pytest.raises(kind, match=message) as caught:
        await delivery(service, session).call(customer(customer_id))
    assert getattr(caught.value, "status", None) == status
    assert len(service.calls) == 1
    if status == 503:
        assert caught.value.retry_after == 7.0  # type: ignore[attr-defined]
        assert caught.value.excerpt == "maintenance"  # type: ignore[attr-defined]


async def test_a_timeout_is_transient(service: SoapService, session: aiohttp.ClientSession) -> None:
    with pytest.raises(TransientDeliveryError, match=r"no answer within 0.5 s from http://127"):
        await delivery(service, session, seconds=0.5).call(customer("slow-1"))


async def test_a_refused_connection_is_transient(session: aiohttp.ClientSession) -> None:
    closed = SoapService()
    closed.url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(TransientDeliveryError, match=r"cannot call http://127\.0\.0\.1:"):
        await delivery(closed, session).call(customer())


@pytest.mark.parametrize(
    ("field_map", "data", "message"),
    [
        (UPSERT_MAP | {"Address": '{"Street": "x", "City": "y", "Zip": "z"}'}, {},
         "unexpected keyword argument 'Zip'"),
        (UPSERT_MAP, {"name": None}, r"Missing element Name \(UpsertCustomer.Name\)"),
        (UPSERT_MAP | {"Address": '{"Street": "x"}'}, {},
         r"Missing element City \(UpsertCustomer.Address.City\)"),
        (UPSERT_MAP | {"Name": "event.nope"}, {}, "event has no field 'nope'"),
        (UPSERT_MAP | {"Name": "event.tags"}, {}, "doesn't accept collections"),
    ],
)  # fmt: skip
async def test_a_request_the_mapping_cannot_build_is_permanent(
    service: SoapService,
    session: aiohttp.ClientSession,
    field_map: dict[str, str],
    data: dict[str, Any],
    message: str,
) -> None:
    with pytest.raises(PermanentDeliveryError, match=message):
        await delivery(service, session, field_map=field_map).call(customer(**data))
    assert service.calls == []


def test_a_map_naming_an_unknown_element_is_a_config_error(
    session: aiohttp.ClientSession,
) -> None:
    nowhere = SoapService(url="http://127.0.0.1:9")
    with pytest.raises(ConfigError, match="no input element 'Email2'; its elements: CustomerId"):
        delivery(nowhere, session, field_map={"Email2": '"x"'})
    with pytest.raises(ConfigError, match="Ping takes one value: map it under text or PingText"):
        delivery(nowhere, session, {"operation": "Ping"}, field_map={})


def test_secrets_stay_out_of_reprs_and_errors() -> None:
    settings = SoapOutbound.model_validate(
        {
            "wsdl": str(ERP_WSDL),
            "operation": "Ping",
            "wsse": {"username": "bus", "password": PASSWORD},
        }
    )
    assert PASSWORD not in repr(settings) + str(settings.model_dump())
    assert settings.wsse is not None
    assert PASSWORD not in repr(UsernameToken.from_settings(settings.wsse))
    with pytest.raises(ValueError, match="digest") as caught:
        SoapOutbound.model_validate(
            {
                "wsdl": str(ERP_WSDL),
                "operation": "Ping",
                "wsse": {"username": "bus", "password": PASSWORD, "digest": "maybe"},
            }
        )
    assert PASSWORD not in str(caught.value)


# -- the enrich lookup -------------------------------------------------------------------------


async def test_a_soap_lookup_enriches_events_and_fails_by_kind(
    service: SoapService, session: aiohttp.ClientSession
) -> None:
    service.users = {"bus": PASSWORD}
    service.customers = {
        "c-7": {"Name": "Ada", "CreditLimit": "5000.00", "Tag": ["vip"]},
        "c-8": {"Name": "Bob", "down": True},
    }
    settings = SoapOutbound.model_validate(
        {
            "wsdl": str(ERP_WSDL),
            "port": "ErpArchivePort",
            "operation": "GetCustomer",
            "address": service.url + "/erp/accounts",
            "wsse": {"username": "bus", "password": PASSWORD, "digest": True},
            "headers": {"TenantHeader": '{"Tenant": arguments.CustomerId}'},
        }
    )
    lookup = SoapLookup("erp-customer", settings, session=session, auth=None, call_timeout=2.0)
    step = Enrich(
        "steps[0].enrich",
        lookup,
        {"CustomerId": compile_expression("event.customerId")},
        "customer",
    )
    (item,) = await step.apply(Item(customer("c-7").event))
    assert item.event.data["customer"] == {
        "Customer": {
            "CustomerId": "c-7",
            "Name": "Ada",
            "CreditLimit": Decimal("5000.00"),
            "Since": date(2020, 1, 31),
            "Tag": ["vip"],
        }
    }
    assert item.event.data["name"] == "Ada Lovelace"  # the rest of the event is kept
    assert children(service.calls[0].soap_headers[0]) == [("Tenant", "c-7")]

    # A Client fault: the event's own problem, so the step fails it (a dead letter) ...
    with pytest.raises(StepError, match="no customer c-9") as refused:
        await step.apply(Item(customer("c-9").event))
    assert isinstance(refused.value.__cause__, PermanentDeliveryError)
    # ... a Server fault is an outage, which the processor does not dead-letter.
    with pytest.raises(StepError) as outage:
        await step.apply(Item(customer("c-8").event))
    assert isinstance(outage.value.__cause__, TransientDeliveryError)
    assert PASSWORD not in str(refused.value) + str(outage.value)
