"""Inbound SOAP on the real broker, over real sockets: WSDLs served, calls stored, then answered.

One inbound server (bus.inbound.server.InboundServer with `soap_routes`) serves several SOAP
endpoints built from tests/data/wsdl: our own crm-notify.wsdl (request-response and one-way
operations, SOAP 1.1 and 1.2 bindings), Apache CXF's CustomerService (a one-way operation with
unqualified elements) and zeep's MTOM WSDL (types in an imported XSD). Each test calls it with
aiohttp, with envelopes written out here or built by zeep, and reads what reached Kafka. Every
refusal is checked for its Fault (shape, code, reason) and that nothing was stored.
"""

import asyncio
import base64
import hashlib
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import zeep
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from lxml import etree  # type: ignore[import-untyped]
from zeep.wsse.username import UsernameToken

from adapters.soap.envelope import MAX_DEPTH, SOAP11_NS, SOAP12_NS, SoapFault, parse_xml
from adapters.soap.inbound import SoapInbound, check_soap_inbound, soap_routes
from bus.auth.wsse import (
    BASE64_BINARY,
    PASSWORD_DIGEST,
    PASSWORD_TEXT,
    WSSE_NS,
    WSU_NS,
    NonceCache,
    UsernameTokenAuth,
)
from bus.errors import AuthenticationError, ConfigError
from bus.events.codec import EventCodec
from bus.events.event import Event
from bus.flows.model import Inbound
from bus.inbound.ingest import Ingest
from bus.inbound.server import InboundServer
from tests.conftest import free_port
from tests.flow_harness import CATALOG, decode, read_all

WSDL_DIR = Path(__file__).parent / "data" / "wsdl"
CRM_WSDL = str(WSDL_DIR / "crm-notify.wsdl")
CXF_WSDL = str(WSDL_DIR / "cxf-CustomerService-faults.wsdl")
MTOM_WSDL = str(WSDL_DIR / "import" / "mtom_attachment.wsdl")
CRM_NS = "urn:acme:crm:notify"
CXF_NS = "http://customerservice.example.com/"
ACTION = "urn:acme:crm:notify/"
WSA_NS = "http://www.w3.org/2005/08/addressing"
PASSWORD = "soap-inbound-password-6d1f"
CALL_S = 15.0  # every call of a test is bounded by this


for _path in (CRM_WSDL, CXF_WSDL, MTOM_WSDL):
    assert Path(_path).is_file(), f"missing {_path}: see tests/data/wsdl/NOTICE"

CUSTOMER_MAP = {
    "customerId": "body.customerId",
    "change": "body.change",
    "email": "body.email",
    "name": "body.name",
    "phone": "body.phone",
    "tags": "body.tag",
    "changedAt": "body.changedAt",
}


def item(name: str, topic: str, soap: dict[str, Any], event: dict[str, Any]) -> Inbound:
    return Inbound.model_validate({"name": name, "topic": topic, "soap": soap, "event": event})


def crm_items(topic: str) -> list[Inbound]:
    notify_response = {
        "Ack": "true",
        "CustomerId": "event.customerId",
        "EventId": "attributes.id",
    }
    customer = {
        "type": "com.acme.crm.CustomerChanged",
        "key": "body.customerId",
        "map": {
            **CUSTOMER_MAP,
            "attributes": '{"operation": "NotifyCustomer", "tenant": "x-crm-tenant" in headers'
            ' ? headers["x-crm-tenant"] : "none"}',
        },
    }
    audit = {
        "type": "com.acme.crm.CustomerChanged",
        "key": "body.customerId",
        "map": {**CUSTOMER_MAP, "attributes": '{"operation": "AuditCustomer"}'},
    }
    deleted = {
        "type": "com.acme.crm.CustomerChanged",
        "key": "body.customerId",
        "map": {
            "customerId": "body.customerId",
            "change": '"DELETED"',
            "email": "body.email",
            "name": '"(deleted)"',
            "changedAt": "body.deletedAt",
        },
    }
    crm = {"path": "/soap/crm", "wsdl": CRM_WSDL}
    return [
        item(
            "notify",
            topic,
            {**crm, "operation": "NotifyCustomer", "response": notify_response},
            customer,
        ),
        item("audit", topic, {**crm, "operation": "AuditCustomer"}, audit),
        item("deleted", topic, {**crm, "operation": "CustomerDeleted"}, deleted),
        item(
            "notify-basic",
            topic,
            {
                "path": "/soap/crm-basic",
                "wsdl": CRM_WSDL,
                "operation": "NotifyCustomer",
                "response": notify_response,
                "auth": {"basic": {"users": {"crm": PASSWORD}, "realm": "crm"}},
            },
            customer,
        ),
        item(
            "notify-wsse",
            topic,
            {
                "path": "/soap/crm-wsse",
                "wsdl": CRM_WSDL,
                "operation": "NotifyCustomer",
                "response": notify_response,
                "auth": {"wsse": {"users": {"crm": PASSWORD}, "tolerance": "5m"}},
            },
            customer,
        ),
        item(
            "notify-wsse-too",  # another path, the same users: one nonce memory
            topic,
            {
                "path": "/soap/crm-wsse-too",
                "wsdl": CRM_WSDL,
                "operation": "NotifyCustomer",
                "response": notify_response,
                "auth": {"wsse": {"users": {"crm": PASSWORD}, "tolerance": "5m"}},
            },
            customer,
        ),
        item(
            "cxf-update",
            topic,
            {"path": "/soap/cxf", "wsdl": CXF_WSDL, "operation": "updateCustomer"},
            {
                "type": "com.acme.crm.CustomerChanged",
                "key": "string(body.customer.customerId)",
                "map": {
                    "customerId": "string(body.customer.customerId)",
                    "change": '"UPDATED"',
                    "email": '"unknown@example.com"',
                    "name": "body.customer.name",
                    "tags": "body.customer.address",
                    "changedAt": "1700000000000",
                },
            },
        ),
        item(
            "mtom-upload",
            topic,
            {
                "path": "/soap/mtom",
                "wsdl": MTOM_WSDL,
                "operation": "upload",
                "response": {"message": '"stored as " + attributes.id'},
            },
            {
                "type": "com.acme.crm.CustomerChanged",
                "map": {
                    "customerId": "body.fileName",
                    "change": '"CREATED"',
                    "email": '"files@example.com"',
                    "name": "body.fileName",
                    "changedAt": "1700000000000",
                },
            },
        ),
    ]


# -- envelopes ------------------------------------------------------------------------------------


def notification(
    customer_id: str = "c-1",
    *,
    change: str = "CREATED",
    email: str | None = "ada@example.com",
    points: str | None = None,
    element: str = "CustomerNotification",
    extra: str = "",
) -> str:
    parts = [
        f"<n:customerId>{customer_id}</n:customerId>",
        f"<n:change>{change}</n:change>",
        f"<n:email>{email}</n:email>" if email is not None else "",
        "<n:name>Ada Lovelace</n:name>",
        "<n:phone>+44 20 7946 0000</n:phone>",
        "<n:tag>vip</n:tag><n:tag>early</n:tag>",
        f"<n:loyaltyPoints>{points}</n:loyaltyPoints>" if points is not None else "",
        "<n:changedAt>2026-11-24T10:00:00Z</n:changedAt>",
        extra,
    ]
    return f'<n:{element} xmlns:n="{CRM_NS}">{"".join(parts)}</n:{element}>'


def deletion(customer_id: str = "c-9") -> str:
    return (
        f'<n:CustomerDeleted xmlns:n="{CRM_NS}"><n:customerId>{customer_id}</n:customerId>'
        "<n:email>gone@example.com</n:email><n:deletedAt>2026-11-24T11:00:00Z</n:deletedAt>"
        "</n:CustomerDeleted>"
    )


def envelope(body: str, *, header: str = "", version: str = "1.1") -> bytes:
    ns = SOAP11_NS if version == "1.1" else SOAP12_NS
    head = f"<soap:Header>{header}</soap:Header>" if header else ""
    text = f'<?xml version="1.0" encoding="UTF-8"?>\n<soap:Envelope xmlns:soap="{ns}">{head}'
    return (text + f"<soap:Body>{body}</soap:Body></soap:Envelope>").encode()


def soap11_headers(action: str | None) -> dict[str, str]:
    headers = {"Content-Type": "text/xml; charset=utf-8"}
    if action is not None:
        headers["SOAPAction"] = f'"{action}"'
    return headers


def soap12_headers(action: str | None) -> dict[str, str]:
    media = "application/soap+xml; charset=utf-8"
    return {"Content-Type": media + (f'; action="{action}"' if action else "")}


def created_now(offset: float = 0.0) -> str:
    moment = datetime.now(UTC) + timedelta(seconds=offset)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def username_token(
    password: str,
    *,
    user: str = "crm",
    digest: bool = False,
    nonce: bytes | None = None,
    created: str | None = None,
    timestamp: tuple[str, str] | None = None,
) -> str:
    """A wsse:Security header written out by hand (zeep builds them in other tests)."""
    nonce = nonce if nonce is not None else os.urandom(16)
    created = created if created is not None else created_now()
    if digest:
        value = base64.b64encode(
            hashlib.sha1(nonce + created.encode() + password.encode()).digest()  # noqa: S324
        ).decode()
        kind = PASSWORD_DIGEST
    else:
        value, kind = password, PASSWORD_TEXT
    stamp = (
        f"<wsu:Timestamp><wsu:Created>{timestamp[0]}</wsu:Created>"
        f"<wsu:Expires>{timestamp[1]}</wsu:Expires></wsu:Timestamp>"
        if timestamp
        else ""
    )
    return (
        f'<wsse:Security xmlns:wsse="{WSSE_NS}" xmlns:wsu="{WSU_NS}">{stamp}<wsse:UsernameToken>'
        f"<wsse:Username>{user}</wsse:Username>"
        f'<wsse:Password Type="{kind}">{value}</wsse:Password>'
        f'<wsse:Nonce EncodingType="{BASE64_BINARY}">{base64.b64encode(nonce).decode()}'
        f"</wsse:Nonce><wsu:Created>{created}</wsu:Created></wsse:UsernameToken></wsse:Security>"
    )


# -- the running endpoint -------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes
    elapsed: float

    @property
    def xml(self) -> Any:
        return etree.fromstring(self.body)

    def fault(self, version: str = "1.1") -> tuple[str, str, Any]:
        """(code, reason, detail element or None) of a Fault answer, checking its shape."""
        assert self.status == 500, self.body
        ns = SOAP11_NS if version == "1.1" else SOAP12_NS
        media = "text/xml" if version == "1.1" else "application/soap+xml"
        assert self.headers["Content-Type"].startswith(media), self.headers["Content-Type"]
        fault = self.xml.find(f"{{{ns}}}Body/{{{ns}}}Fault")
        assert fault is not None, self.body
        if version == "1.1":
            return fault.findtext("faultcode"), fault.findtext("faultstring"), fault.find("detail")
        code = fault.findtext(f"{{{ns}}}Code/{{{ns}}}Value")
        reason = fault.findtext(f"{{{ns}}}Reason/{{{ns}}}Text")
        return code, reason, fault.find(f"{{{ns}}}Detail")


class Soap:
    def __init__(self, url: str, topic: str, session: aiohttp.ClientSession, servers: str) -> None:
        self.url = url
        self.topic = topic
        self.session = session
        self.bootstrap_servers = servers

    async def post(self, path: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        started = time.monotonic()
        async with asyncio.timeout(CALL_S):
            async with self.session.post(self.url + path, data=body, headers=headers) as answer:
                content = await answer.read()
                return Answer(
                    answer.status, dict(answer.headers), content, time.monotonic() - started
                )

    async def call11(
        self, path: str, body: str, *, action: str | None = None, header: str = "", **more: Any
    ) -> Answer:
        headers = {**soap11_headers(action), **more.pop("headers", {})}
        return await self.post(path, envelope(body, header=header), headers)

    async def call12(
        self, path: str, body: str, *, action: str | None = None, header: str = "", **more: Any
    ) -> Answer:
        headers = {**soap12_headers(action), **more.pop("headers", {})}
        return await self.post(path, envelope(body, header=header, version="1.2"), headers)

    async def get(self, path: str, **options: Any) -> tuple[int, Mapping[str, str], bytes]:
        async with asyncio.timeout(CALL_S):
            async with self.session.get(self.url + path, **options) as answer:
                return answer.status, dict(answer.headers), await answer.read()

    async def stored(self) -> list[Event]:
        return await decode(await read_all(self.bootstrap_servers, self.topic, 1.0))

    async def event(self, event_id: str) -> Event:
        async with asyncio.timeout(30):
            while True:
                found = [event for event in await self.stored() if event.id == event_id]
                if found:
                    return found[-1]
                await asyncio.sleep(0.2)

    async def nothing_stored_by(self, call: Any) -> Answer:
        before = len(await self.stored())
        answer: Answer = await call
        assert len(await self.stored()) == before, "a refused call stored an event"
        return answer


async def create_topic(bootstrap_servers: str, name: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()


@pytest.fixture(scope="module")
async def soap(bootstrap_servers: str) -> AsyncIterator[Soap]:
    topic = f"soap-inbound-{free_port()}-{os.getpid()}"
    await create_topic(bootstrap_servers, topic)
    items = [(inbound, SoapInbound.model_validate(inbound.config)) for inbound in crm_items(topic)]
    ingest = Ingest(bootstrap_servers, EventCodec(CATALOG), deadline=10.0)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CALL_S)) as session:
        routes = soap_routes(items, ingest=ingest, catalog=CATALOG, session=session)
        server = InboundServer("127.0.0.1", 0, routes)
        await ingest.start()
        assert await ingest.connected(within=30)
        await server.start()
        try:
            yield Soap(server.url, topic, session, bootstrap_servers)
        finally:
            await server.stop()
            await ingest.stop()


def response_values(answer: Answer, version: str = "1.1") -> dict[str, str]:
    assert answer.status == 200, answer.body
    ns = SOAP11_NS if version == "1.1" else SOAP12_NS
    media = "text/xml" if version == "1.1" else "application/soap+xml"
    assert answer.headers["Content-Type"].startswith(media)
    (element,) = answer.xml.find(f"{{{ns}}}Body")
    return {etree.QName(child).localname: child.text for child in element}


# -- ?wsdl ----------------------------------------------------------------------------------------


async def test_the_wsdl_is_served_with_its_address_set_to_where_it_is_served(soap: Soap) -> None:
    status, headers, body = await soap.get("/soap/crm?wsdl")
    assert status == 200
    assert headers["Content-Type"].startswith("text/xml")
    root = etree.fromstring(body)
    addresses = [
        element.get("location")
        for element in root.iter(
            "{http://schemas.xmlsoap.org/wsdl/soap/}address",
            "{http://schemas.xmlsoap.org/wsdl/soap12/}address",
        )
    ]
    assert addresses == [f"{soap.url}/soap/crm"] * 2
    # The rest of the document is the WSDL as written.
    assert root.get("targetNamespace") == CRM_NS
    assert len(root.findall("{http://schemas.xmlsoap.org/wsdl/}binding")) == 2
    # .NET asks ?WSDL; behind a proxy, the address is the proxy's.
    status, _, body = await soap.get(
        "/soap/crm?WSDL",
        headers={"X-Forwarded-Host": "esb.example.com", "X-Forwarded-Proto": "https"},
    )
    assert status == 200
    assert b'location="https://esb.example.com/soap/crm"' in body


async def test_a_wsdl_with_an_imported_xsd_is_served_whole_and_zeep_reads_it(soap: Soap) -> None:
    status, _, body = await soap.get("/soap/mtom?wsdl")
    assert status == 200
    root = etree.fromstring(body)
    (imported,) = root.iter("{http://www.w3.org/2001/XMLSchema}import")
    assert imported.get("schemaLocation") == f"{soap.url}/soap/mtom?xsd=1"
    status, _, xsd = await soap.get("/soap/mtom?xsd=1")
    assert status == 200
    assert b'name="uploadResponse"' in xsd
    # zeep (sync, in a thread: the server runs on this loop) loads the WSDL as served, imports
    # fetched over HTTP, and sees the port at our address.
    client = await asyncio.wait_for(
        asyncio.to_thread(zeep.Client, f"{soap.url}/soap/mtom?wsdl"), 30
    )
    assert client.service._binding_options["address"] == f"{soap.url}/soap/mtom"
    assert "upload" in client.service._operations


async def test_get_without_wsdl_and_unknown_documents_are_404(soap: Soap) -> None:
    for query in ("", "?xsd=7", "?xsd=abc"):
        status, headers, _ = await soap.get("/soap/crm" + query)
        assert status == 404
        assert headers["Content-Type"].startswith("application/problem+json")


# -- calls that are stored ------------------------------------------------------------------------


async def test_a_soap11_call_is_stored_then_answered_with_the_mapped_response(soap: Soap) -> None:
    answer = await soap.call11(
        "/soap/crm",
        notification("c-11"),
        action=ACTION + "NotifyCustomer",
        headers={"X-Crm-Tenant": "acme"},
    )
    values = response_values(answer)
    assert values["Ack"] == "true"
    assert values["CustomerId"] == "c-11"
    event = await soap.event(values["EventId"])
    assert event.type == "com.acme.crm.CustomerChanged"
    assert event.source == "/inbound/notify"
    assert event.key == "c-11"
    assert event.data["customerId"] == "c-11"
    assert event.data["change"] == "CREATED"
    assert event.data["phone"] == "+44 20 7946 0000"
    assert event.data["tags"] == ["vip", "early"]
    assert event.data["changedAt"] == datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
    assert event.data["attributes"] == {"operation": "NotifyCustomer", "tenant": "acme"}


async def test_a_soap12_call_is_stored_then_answered_in_soap12(soap: Soap) -> None:
    answer = await soap.call12(
        "/soap/crm", notification("c-12", change="UPDATED"), action=ACTION + "NotifyCustomer"
    )
    values = response_values(answer, "1.2")
    assert values["CustomerId"] == "c-12"
    event = await soap.event(values["EventId"])
    assert event.data["change"] == "UPDATED"
    assert event.data["attributes"]["tenant"] == "none"


async def test_zeep_built_envelopes_are_understood(soap: Soap) -> None:
    client = zeep.Client(CRM_WSDL)
    for port, version in (("CrmNotifyPort", "1.1"), ("CrmNotifyPort12", "1.2")):
        service = client.bind("CrmNotifyService", port)
        message = client.create_message(
            service,
            "NotifyCustomer",
            customerId=f"z-{version}",
            change="CREATED",
            email="zeep@example.com",
            name="Zeep",
            tag=["a"],
            changedAt=datetime(2026, 11, 24, 9, 0, tzinfo=UTC),
        )
        raw = etree.tostring(message, xml_declaration=True, encoding="utf-8")
        headers = (soap11_headers if version == "1.1" else soap12_headers)(
            ACTION + "NotifyCustomer"
        )
        answer = await soap.post("/soap/crm", raw, headers)
        values = response_values(answer, version)
        assert values["CustomerId"] == f"z-{version}"
        assert (await soap.event(values["EventId"])).data["name"] == "Zeep"


async def test_soapaction_chooses_between_operations_with_the_same_body(soap: Soap) -> None:
    """NotifyCustomer and AuditCustomer both take CustomerNotification: the action decides."""
    before = {event.id for event in await soap.stored()}
    answer = await soap.call11(
        "/soap/crm", notification("c-audit"), action=ACTION + "AuditCustomer"
    )
    assert (answer.status, answer.body) == (202, b"")
    answer = await soap.call12(
        "/soap/crm", notification("c-audit12"), action=ACTION + "AuditCustomer"
    )
    assert (answer.status, answer.body) == (202, b"")
    # 202 came after the store: the events are there right away, from the audit item.
    new = [event for event in await soap.stored() if event.id not in before]
    assert sorted(event.data["customerId"] for event in new) == ["c-audit", "c-audit12"]
    assert {event.data["attributes"]["operation"] for event in new} == {"AuditCustomer"}
    assert {event.source for event in new} == {"/inbound/audit"}
    # Without SOAPAction, a WS-Addressing Action header says it as well.
    header = f'<wsa:Action xmlns:wsa="{WSA_NS}">{ACTION}AuditCustomer</wsa:Action>'
    answer = await soap.call12("/soap/crm", notification("c-wsa"), header=header)
    assert (answer.status, answer.body) == (202, b"")


async def test_without_soapaction_the_body_element_chooses(soap: Soap) -> None:
    before = {event.id for event in await soap.stored()}
    for answer in (
        await soap.call11("/soap/crm", deletion("c-del"), action=""),
        await soap.call12("/soap/crm", deletion("c-del12")),
    ):
        assert (answer.status, answer.body) == (202, b"")
    new = [event for event in await soap.stored() if event.id not in before]
    assert sorted(event.data["customerId"] for event in new) == ["c-del", "c-del12"]
    assert {event.data["change"] for event in new} == {"DELETED"}
    # A SOAPAction that names no operation here: the body decides as well.
    answer = await soap.call11("/soap/crm", deletion("c-del2"), action="urn:other")
    assert answer.status == 202


async def test_a_body_two_operations_take_needs_the_soapaction(soap: Soap) -> None:
    answer = await soap.nothing_stored_by(soap.call11("/soap/crm", notification(), action=None))
    code, reason, _ = answer.fault()
    assert code == "soap:Client"
    assert "several operations" in reason
    assert ACTION + "NotifyCustomer" in reason
    assert ACTION + "AuditCustomer" in reason


async def test_the_cxf_one_way_operation_is_202_once_stored(soap: Soap) -> None:
    body = (
        f'<c:updateCustomer xmlns:c="{CXF_NS}"><customer><customerId>42</customerId>'
        "<name>Grace Hopper</name><address>1 Navy Way</address><address>Arlington</address>"
        "<numOrders>3</numOrders><revenue>1234.5</revenue><test>10.25</test>"
        "<birthDate>1906-12-09</birthDate><type>BUSINESS</type></customer></c:updateCustomer>"
    )
    before = {event.id for event in await soap.stored()}
    answer = await soap.call11("/soap/cxf", body, action="")
    assert (answer.status, answer.body) == (202, b"")
    (event,) = [event for event in await soap.stored() if event.id not in before]
    assert event.key == "42"
    assert event.data["name"] == "Grace Hopper"
    assert event.data["tags"] == ["1 Navy Way", "Arlington"]
    assert event.source == "/inbound/cxf-update"


async def test_a_call_to_an_operation_with_types_in_an_imported_xsd(soap: Soap) -> None:
    body = (
        '<t:upload xmlns:t="http://test.ellethee.org/"><fileName>report.pdf</fileName>'
        f"<fileBytes>{base64.b64encode(b'%PDF-1.7').decode()}</fileBytes></t:upload>"
    )
    answer = await soap.call11("/soap/mtom", body, action="")
    message = response_values(answer)["message"]
    assert message.startswith("stored as ")
    event = await soap.event(message.removeprefix("stored as "))
    assert event.data["customerId"] == "report.pdf"
    # The imported XSD validates too.
    bad = body.replace("<fileName>report.pdf</fileName>", "")
    code, reason, _ = (await soap.nothing_stored_by(soap.call11("/soap/mtom", bad))).fault()
    assert code == "soap:Client"
    assert "fileName" in reason


# -- idempotency ----------------------------------------------------------------------------------


async def test_the_same_idempotency_key_or_message_id_is_the_same_event(soap: Soap) -> None:
    def call(key: str | None = None, message_id: str | None = None) -> Any:
        header = f'<wsa:MessageID xmlns:wsa="{WSA_NS}">{message_id}</wsa:MessageID>'
        return soap.call11(
            "/soap/crm",
            notification("c-idem"),
            action=ACTION + "NotifyCustomer",
            header=header if message_id else "",
            headers={"Idempotency-Key": key} if key else {},
        )

    first, again, other = [
        response_values(await call(key))["EventId"] for key in ("k-1", "k-1", "k-2")
    ]
    assert first == again != other
    by_message = [
        response_values(await call(message_id=mid))["EventId"]
        for mid in ("urn:uuid:8d5c2a9e-0c1f-4a55-9d7e-1f2a3b4c5d6e",) * 2
    ]
    assert by_message[0] == by_message[1] not in (first, other)
    plain = [response_values(await call())["EventId"] for _ in range(2)]
    assert plain[0] != plain[1]
    assert [event.id for event in await soap.stored()].count(first) == 2
    answer = await soap.nothing_stored_by(call("k" * 300))
    assert "Idempotency-Key" in answer.fault()[1]


# -- invalid calls: a Fault each, nothing stored --------------------------------------------------


NOTIFY = ACTION + "NotifyCustomer"


INVALID_CALLS = [
    (
        "malformed XML",
        envelope(notification())[:-30],
        soap11_headers(NOTIFY),
        "not well-formed XML",
    ),
    (
        "wrong body element",
        envelope(notification(element="CustomerNotice")),
        soap11_headers(NOTIFY),
        f"takes {{{CRM_NS}}}CustomerNotification in the body; the body holds "
        f"{{{CRM_NS}}}CustomerNotice",
    ),
    (
        "missing required element",
        envelope(notification(email=None)),
        soap11_headers(NOTIFY),
        "Expected is ( {urn:acme:crm:notify}email )",
    ),
    (
        "wrong type",
        envelope(notification(points="many")),
        soap11_headers(NOTIFY),
        "'many' is not a valid value of the atomic type 'xs:int'",
    ),
    (
        "value outside the enumeration",
        envelope(notification(change="MERGED")),
        soap11_headers(NOTIFY),
        "Element '{urn:acme:crm:notify}change': [facet 'enumeration']",
    ),
    (
        "unknown element",
        envelope(notification(extra=f'<n:shoeSize xmlns:n="{CRM_NS}">44</n:shoeSize>')),
        soap11_headers(NOTIFY),
        "Element '{urn:acme:crm:notify}shoeSize': This element is not expected",
    ),
    (
        "unknown operation",
        envelope(f'<n:CancelCustomer xmlns:n="{CRM_NS}"/>'),
        soap11_headers(ACTION + "CancelCustomer"),
        "no operation served here matches SOAPAction 'urn:acme:crm:notify/CancelCustomer'",
    ),
    ("not SOAP", b"<customer><id>1</id></customer>", soap11_headers(NOTIFY), "not a SOAP"),
    (
        "not a SOAP media type",
        envelope(notification()),
        {"Content-Type": "application/json"},
        "the request said Content-Type: application/json",
    ),
    (
        "a SOAP 1.2 envelope as text/xml",
        envelope(notification(), version="1.2"),
        soap11_headers(NOTIFY),
        "must be sent as Content-Type application/soap+xml",
    ),
    (
        "an empty body",
        b"",
        soap11_headers(NOTIFY),
        "the body is empty",
    ),
]


@pytest.mark.parametrize(
    ("name", "raw", "headers", "said"), INVALID_CALLS, ids=[case[0] for case in INVALID_CALLS]
)
async def test_each_invalid_call_gets_its_client_fault_and_stores_nothing(
    soap: Soap, name: str, raw: bytes, headers: dict[str, str], said: str
) -> None:
    answer = await soap.nothing_stored_by(soap.post("/soap/crm", raw, headers))
    code, reason, _ = answer.fault("1.1")
    assert code == "soap:Client", name
    assert said in reason, reason


async def test_the_unknown_operation_fault_lists_the_operations(soap: Soap) -> None:
    answer = await soap.call12(
        "/soap/crm", f'<n:CancelCustomer xmlns:n="{CRM_NS}"/>', action=ACTION + "CancelCustomer"
    )
    code, reason, _ = answer.fault("1.2")
    assert code == "soap:Sender"
    for operation in ("NotifyCustomer", "AuditCustomer", "CustomerDeleted"):
        assert operation in reason


async def test_a_validation_fault_has_a_detail_naming_the_element(soap: Soap) -> None:
    answer = await soap.call12("/soap/crm", notification(points="x"), action=NOTIFY)
    code, _, detail = answer.fault("1.2")
    assert code == "soap:Sender"
    problem = detail.find("{tag:bus.dev,2026:soap-fault}problem")
    assert problem.get("type") == "tag:bus.dev,2026:problem:invalid-request"
    (error,) = problem
    assert error.get("field").endswith("loyaltyPoints")


async def test_a_mapping_fault_names_the_event_field(soap: Soap) -> None:
    """CXF's customer name is optional in the WSDL, but the event requires one."""
    body = (
        f'<c:updateCustomer xmlns:c="{CXF_NS}"><customer><customerId>7</customerId>'
        "<revenue>1</revenue></customer></c:updateCustomer>"
    )
    answer = await soap.nothing_stored_by(soap.call11("/soap/cxf", body))
    code, reason, detail = answer.fault()
    assert code == "soap:Client"
    assert "does not make a valid com.acme.crm.CustomerChanged" in reason
    problem = detail.find("{tag:bus.dev,2026:soap-fault}problem")
    assert problem.get("type") == "tag:bus.dev,2026:problem:invalid-event"
    assert [error.get("field") for error in problem] == ["name"]


async def test_an_unknown_envelope_namespace_is_a_version_mismatch(soap: Soap) -> None:
    raw = b'<e:Envelope xmlns:e="urn:not-soap"><e:Body/></e:Envelope>'
    answer = await soap.nothing_stored_by(soap.post("/soap/crm", raw, soap11_headers(NOTIFY)))
    code, reason, _ = answer.fault()
    assert code == "soap:VersionMismatch"
    assert SOAP11_NS in reason


async def test_a_mustunderstand_header_we_do_not_process_is_refused(soap: Soap) -> None:
    header = (
        f'<x:Transaction xmlns:x="urn:tx" xmlns:soap="{SOAP12_NS}" soap:mustUnderstand="true">'
        "5</x:Transaction>"
    )
    answer = await soap.nothing_stored_by(
        soap.call12("/soap/crm", notification(), action=NOTIFY, header=header)
    )
    code, reason, _ = answer.fault("1.2")
    assert code == "soap:MustUnderstand"
    assert "{urn:tx}Transaction" in reason
    not_understood = answer.xml.find(f"{{{SOAP12_NS}}}Header/{{{SOAP12_NS}}}NotUnderstood")
    assert not_understood.get("qname").endswith(":Transaction")
    # The same block for another role is not ours to understand.
    other = header.replace(
        'soap:mustUnderstand="true"', 'soap:mustUnderstand="true" soap:role="urn:x"'
    )
    answer = await soap.call12("/soap/crm", notification(), action=NOTIFY, header=other)
    assert answer.status == 200


async def test_soap12_to_a_soap11_only_endpoint_is_a_sender_fault(soap: Soap) -> None:
    body = f'<c:updateCustomer xmlns:c="{CXF_NS}"/>'
    answer = await soap.nothing_stored_by(soap.call12("/soap/cxf", body))
    code, reason, _ = answer.fault("1.2")
    assert code == "soap:Sender"
    assert "speaks SOAP 1.1" in reason


# -- XML attacks: refused fast, nothing stored ----------------------------------------------------

_BILLION_LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + "".join(
        f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10 if i > 1 else "&lol;" * 10}">'
        for i in range(1, 10)
    )
    + f']><soap:Envelope xmlns:soap="{SOAP11_NS}"><soap:Body>'
    + notification(customer_id="&lol9;")
    + "</soap:Body></soap:Envelope>"
).encode()
_XXE = (
    '<?xml version="1.0"?><!DOCTYPE e [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
    f'<soap:Envelope xmlns:soap="{SOAP11_NS}"><soap:Body>'
    + notification(customer_id="&xxe;")
    + "</soap:Body></soap:Envelope>"
).encode()
_PARAMETER_ENTITY = (
    '<?xml version="1.0"?><!DOCTYPE e [<!ENTITY % ext SYSTEM "file:///etc/passwd"> %ext;]>'
    f'<soap:Envelope xmlns:soap="{SOAP11_NS}"><soap:Body/></soap:Envelope>'
).encode()
_EXTERNAL_DTD = (
    '<?xml version="1.0"?><!DOCTYPE soap:Envelope SYSTEM "http://127.0.0.1:9/evil.dtd">'
    + envelope(notification()).decode().split("\n", 1)[1]
).encode()
_QUADRATIC = (
    f'<?xml version="1.0"?><!DOCTYPE e [<!ENTITY big "{"x" * 20_000}">]>'
    f'<soap:Envelope xmlns:soap="{SOAP11_NS}"><soap:Body>'
    + notification(customer_id="&big;" * 20_000)
    + "</soap:Body></soap:Envelope>"
).encode()
_HUGE_ATTRIBUTE = envelope(
    notification().replace("<n:name>", f'<n:name junk="{"A" * 400_000}">', 1)
)
_DEEP = envelope(notification(extra="<n:x>" * (MAX_DEPTH + 20) + "</n:x>" * (MAX_DEPTH + 20)))
_VERY_DEEP = envelope("<a>" * 5000 + "</a>" * 5000)
_OVERSIZED = envelope(notification(customer_id="c" * 600_000))
_PI = envelope(notification()).replace(b"<soap:Envelope", b"<?evil cmd?><soap:Envelope", 1)


@pytest.mark.parametrize(
    ("raw", "said"),
    [
        pytest.param(_XXE, "has a DOCTYPE", id="xxe-etc-passwd"),
        pytest.param(_BILLION_LAUGHS, "has a DOCTYPE", id="billion-laughs"),
        pytest.param(_PARAMETER_ENTITY, "has a DOCTYPE", id="parameter-entity"),
        pytest.param(_EXTERNAL_DTD, "has a DOCTYPE", id="external-dtd"),
        pytest.param(_QUADRATIC, "has a DOCTYPE", id="quadratic-blowup"),
        pytest.param(_HUGE_ATTRIBUTE, "attribute 'junk' is not allowed", id="huge-attribute"),
        pytest.param(_DEEP, f"nested deeper than {MAX_DEPTH}", id="deep"),
        pytest.param(_VERY_DEEP, f"nested deeper than {MAX_DEPTH}", id="very-deep"),
        pytest.param(_OVERSIZED, "at most 524288 bytes", id="oversized"),
        pytest.param(_PI, "processing instruction", id="processing-instruction"),
    ],
)
async def test_xml_attacks_are_refused_quickly_with_a_fault(
    soap: Soap, raw: bytes, said: str
) -> None:
    answer = await soap.nothing_stored_by(soap.post("/soap/crm", raw, soap11_headers(NOTIFY)))
    code, reason, _ = answer.fault()
    assert code == "soap:Client"
    assert said in reason, reason
    assert answer.elapsed < 3.0
    assert b"root:" not in answer.body  # nothing of /etc/passwd


async def test_an_oversized_chunked_body_is_refused_too(soap: Soap) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"<a>" + b"x" * 65_536 + b"</a>"

    call = soap.post("/soap/crm", chunks(), soap11_headers(NOTIFY))  # type: ignore[arg-type]
    answer = await soap.nothing_stored_by(call)
    code, reason, _ = answer.fault()
    assert code == "soap:Client"
    assert "at most 524288 bytes" in reason


def test_the_parser_itself_refuses_what_soap_forbids() -> None:
    for raw in (_XXE, _BILLION_LAUGHS, _QUADRATIC, _VERY_DEEP, _PI):
        started = time.monotonic()
        with pytest.raises(SoapFault):
            parse_xml(raw)
        assert time.monotonic() - started < 1.0


# -- authentication -------------------------------------------------------------------------------


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def test_http_basic_is_checked_before_the_call_is_read(soap: Soap) -> None:
    for headers, said in (
        ({}, "missing Authorization header"),
        (basic("crm", "wrong"), "wrong user name or password"),
        (basic("nobody", PASSWORD), "wrong user name or password"),
    ):
        answer = await soap.nothing_stored_by(
            soap.call11("/soap/crm-basic", notification(), action=NOTIFY, headers=headers)
        )
        code, reason, _ = answer.fault()
        assert code == "soap:Client"
        assert reason.startswith(f"authentication failed: {said}")
        assert answer.headers["WWW-Authenticate"] == 'Basic realm="crm", charset="UTF-8"'
        assert PASSWORD.encode() not in answer.body
    answer = await soap.call12(
        "/soap/crm-basic", notification("c-basic"), action=NOTIFY, headers=basic("crm", PASSWORD)
    )
    assert response_values(answer, "1.2")["CustomerId"] == "c-basic"


async def test_ws_security_text_and_digest_passwords(soap: Soap) -> None:
    for version, digest in (("1.1", False), ("1.1", True), ("1.2", True)):
        call = soap.call11 if version == "1.1" else soap.call12
        header = username_token(PASSWORD, digest=digest)
        answer = await call("/soap/crm-wsse", notification("c-wsse"), action=NOTIFY, header=header)
        assert response_values(answer, version)["CustomerId"] == "c-wsse"


async def test_zeep_usernametoken_digest_is_accepted(soap: Soap) -> None:
    for digest in (False, True):
        client = zeep.Client(CRM_WSDL, wsse=UsernameToken("crm", PASSWORD, use_digest=digest))
        message = client.create_message(
            client.service,
            "NotifyCustomer",
            customerId="c-zeep-wsse",
            change="CREATED",
            email="z@example.com",
            name="Z",
            changedAt=datetime.now(UTC),
        )
        raw = etree.tostring(message, xml_declaration=True, encoding="utf-8")
        answer = await soap.post("/soap/crm-wsse", raw, soap11_headers(NOTIFY))
        assert response_values(answer)["CustomerId"] == "c-zeep-wsse"


# Headers are made when each test runs: their timestamps must be fresh then, not at collection.
@pytest.mark.parametrize(
    ("make_header", "said"),
    [
        pytest.param(lambda: "", "no wsse:Security header", id="missing"),
        pytest.param(
            lambda: username_token("wrong"), "wrong user name or password", id="wrong-text"
        ),
        pytest.param(
            lambda: username_token("wrong", digest=True),
            "wrong user name or password",
            id="wrong-digest",
        ),
        pytest.param(
            lambda: username_token(PASSWORD, user="mallory", digest=True),
            "wrong user name or password",
            id="unknown-user",
        ),
        pytest.param(
            lambda: username_token(PASSWORD, digest=True, created=created_now(-600)),
            "the message is stale",
            id="stale-created",
        ),
        pytest.param(
            lambda: username_token(PASSWORD, digest=True, created=created_now(+900)),
            "in the future",
            id="future-created",
        ),
        pytest.param(
            lambda: username_token(PASSWORD, timestamp=(created_now(-200), created_now(-100))),
            "the message expired",
            id="expired-timestamp",
        ),
        pytest.param(
            lambda: username_token(PASSWORD, digest=True, created="yesterday"),
            "not an xsd:dateTime",
            id="bad-created",
        ),
        pytest.param(
            lambda: username_token(PASSWORD).replace(PASSWORD_TEXT, "urn:x#PasswordHash"),
            "unsupported password Type",
            id="unknown-password-type",
        ),
    ],
)
async def test_ws_security_refusals(soap: Soap, make_header: Callable[[], str], said: str) -> None:
    answer = await soap.nothing_stored_by(
        soap.call11("/soap/crm-wsse", notification(), action=NOTIFY, header=make_header())
    )
    code, reason, detail = answer.fault()
    assert code == "soap:Client"
    assert reason.startswith("authentication failed: ")
    assert said in reason, reason
    assert detail is None  # a header fault has no detail in SOAP 1.1
    assert PASSWORD.encode() not in answer.body


async def test_a_replayed_digest_is_refused(soap: Soap) -> None:
    raw = envelope(notification("c-replay"), header=username_token(PASSWORD, digest=True))
    first = await soap.post("/soap/crm-wsse", raw, soap11_headers(NOTIFY))
    assert response_values(first)["CustomerId"] == "c-replay"
    again = await soap.nothing_stored_by(soap.post("/soap/crm-wsse", raw, soap11_headers(NOTIFY)))
    code, reason, _ = again.fault()
    assert code == "soap:Client"
    assert "the Nonce was used before" in reason


async def test_a_digest_replayed_on_another_path_is_refused_too(soap: Soap) -> None:
    raw = envelope(notification("c-replay-2"), header=username_token(PASSWORD, digest=True))
    first = await soap.post("/soap/crm-wsse", raw, soap11_headers(NOTIFY))
    assert response_values(first)["CustomerId"] == "c-replay-2"
    elsewhere = await soap.nothing_stored_by(
        soap.post("/soap/crm-wsse-too", raw, soap11_headers(NOTIFY))
    )
    assert "the Nonce was used before" in elsewhere.fault()[1]


def test_usernametoken_digest_is_the_profiles_formula() -> None:
    """The Username Token Profile 1.0's worked example (section 3.1 spirit): a fixed nonce,
    time and password give one digest; our verifier accepts it and nothing else."""
    nonce = b"0123456789abcdef"
    created = "2026-11-24T12:00:00Z"
    digest = base64.b64encode(hashlib.sha1(nonce + created.encode() + b"secret").digest())  # noqa: S324
    header = etree.fromstring(username_token("secret", digest=True, nonce=nonce, created=created))
    verifier = UsernameTokenAuth({"crm": "secret"})
    assert header.findtext(f".//{{{WSSE_NS}}}Password").encode() == digest
    now = datetime(2026, 11, 24, 12, 1, tzinfo=UTC).timestamp()
    assert verifier.verify(header, now=now) == "crm"
    with pytest.raises(AuthenticationError, match="used before"):
        verifier.verify(header, now=now + 1)
    # Remembered as long as it could pass, then forgotten.
    assert len(verifier.nonces) == 1
    assert verifier.nonces.remember("crm", b"other", now=now + 601)
    assert len(verifier.nonces) == 1
    assert "secret" not in repr(verifier)


def test_the_nonce_cache_is_bounded_and_fails_closed() -> None:
    cache = NonceCache(ttl=10, capacity=2)
    assert cache.remember("a", b"1", now=0)
    assert cache.remember("a", b"2", now=1)
    assert not cache.remember("a", b"1", now=2)
    with pytest.raises(AuthenticationError, match="too many"):
        cache.remember("a", b"3", now=3)
    assert cache.remember("a", b"3", now=10.5)  # the first has expired
    assert cache.remember("b", b"2", now=11.5)  # per user, once "2" of "a" expired


# -- Kafka unavailable ----------------------------------------------------------------------------


async def test_kafka_unavailable_is_a_server_fault_and_nothing_is_acknowledged() -> None:
    dead_kafka = f"127.0.0.1:{free_port()}"
    ingest = Ingest(dead_kafka, EventCodec(CATALOG), deadline=1.0)
    items = [
        (inbound, SoapInbound.model_validate(inbound.config))
        for inbound in crm_items("nowhere")[:3]
    ]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CALL_S)) as session:
        server = InboundServer(
            "127.0.0.1", 0, soap_routes(items, ingest=ingest, catalog=CATALOG, session=session)
        )
        await ingest.start()
        await server.start()
        try:
            soap = Soap(server.url, "nowhere", session, dead_kafka)
            for version, expected in (("1.1", "soap:Server"), ("1.2", "soap:Receiver")):
                call = soap.call11 if version == "1.1" else soap.call12
                answer = await call("/soap/crm", notification(), action=NOTIFY)
                code, reason, _ = answer.fault(version)
                assert code == expected
                assert reason.startswith("the event was not stored; retry")
                assert int(answer.headers["Retry-After"]) > 0
            answer = await soap.call11("/soap/crm", deletion(), action="")
            assert answer.status == 500  # a one-way call is not acknowledged either
        finally:
            await server.stop()
            await ingest.stop()


# -- configuration --------------------------------------------------------------------------------


def routes_for(*items: Inbound) -> None:
    async def build() -> None:
        async with aiohttp.ClientSession() as session:
            ingest = Ingest("127.0.0.1:1", EventCodec(CATALOG))
            pairs = [(inbound, SoapInbound.model_validate(inbound.config)) for inbound in items]
            soap_routes(pairs, ingest=ingest, catalog=CATALOG, session=session)

    asyncio.run(build())


CUSTOMER_EVENT = {"type": "com.acme.crm.CustomerChanged", "map": CUSTOMER_MAP}


@pytest.mark.parametrize(
    ("soap_settings", "said"),
    [
        pytest.param({"operation": "Nope"}, "no operation 'Nope'", id="unknown-operation"),
        pytest.param(
            {"operation": "AuditCustomer", "response": {"Ack": "true"}},
            "is one-way",
            id="response-on-one-way",
        ),
        pytest.param(
            {"operation": "NotifyCustomer"},
            "requires Ack, CustomerId",
            id="response-missing",
        ),
        pytest.param(
            {
                "operation": "NotifyCustomer",
                "response": {"Ack": "true", "CustomerId": "1", "X": "1"},
            },
            "has no 'X'",
            id="response-unknown-element",
        ),
        pytest.param(
            {"operation": "NotifyCustomer", "response": {"Ack": "true", "CustomerId": "body.x"}},
            "unknown name 'body'",
            id="response-expression",
        ),
        pytest.param(
            {"operation": "NotifyCustomer", "port": "Nope"}, "no such SOAP port", id="port"
        ),
        pytest.param(
            {"operation": "NotifyCustomer", "wsdl": "nowhere.wsdl"}, "does not exist", id="wsdl"
        ),
    ],
)
def test_configuration_mistakes_name_the_key(soap_settings: dict[str, Any], said: str) -> None:
    settings = {"path": "/soap/x", "wsdl": CRM_WSDL, **soap_settings}
    inbound = item("bad", "t", settings, CUSTOMER_EVENT)
    with pytest.raises(ConfigError, match="soap") as raised:
        routes_for(inbound)
    assert said in str(raised.value)
    problems = check_soap_inbound(inbound, CATALOG)
    assert len(problems) == 1
    assert problems[0][0][0] == "soap"
    assert said in problems[0][1]


def test_items_sharing_a_path_must_agree() -> None:
    base = {"path": "/soap/x", "wsdl": CRM_WSDL}
    one = item("one", "t", {**base, "operation": "AuditCustomer"}, CUSTOMER_EVENT)
    other = item(
        "two",
        "t",
        {**base, "operation": "CustomerDeleted", "auth": {"basic": {"users": {"a": "b"}}}},
        CUSTOMER_EVENT,
    )
    with pytest.raises(ConfigError, match="another auth"):
        routes_for(one, other)
    twice = item("three", "t", {**base, "operation": "AuditCustomer"}, CUSTOMER_EVENT)
    with pytest.raises(ConfigError, match="already served by inbound 'one'"):
        routes_for(one, twice)


def test_settings_hide_secrets_and_check_their_shape() -> None:
    settings = SoapInbound.model_validate(
        {
            "path": "/soap/x",
            "wsdl": CRM_WSDL,
            "operation": "NotifyCustomer",
            "auth": {"wsse": {"users": {"crm": PASSWORD}}},
        }
    )
    assert PASSWORD not in repr(settings)
    assert settings.auth is not None
    assert settings.auth.wsse is not None
    assert settings.auth.wsse.tolerance == timedelta(minutes=5)
    bad = item(
        "bad", "t", {"path": "/soap/x", "operation": "X", "auth": {"wsse": {}}}, CUSTOMER_EVENT
    )
    problems = check_soap_inbound(bad, CATALOG)
    assert {path for path, _ in problems} >= {("soap", "wsdl"), ("soap", "auth", "wsse", "users")}
    assert all(PASSWORD not in message for _, message in problems)
