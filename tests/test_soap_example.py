"""The documented REST-to-SOAP example, run with `bus run` in its own process.

`examples/soap/rest-to-soap.yaml` (shown verbatim by docs/adapters/soap.md): a REST webhook comes
in, a mediation flow turns it into an ERP upsert request, the SOAP adapter calls a real SOAP
service on localhost (playing the ERP of examples/soap/erp.wsdl, checking the WS-Security digest),
and the answer becomes a reply event. A declared Client fault goes to the dead-letter topic with
its faultcode and detail; a Server fault is retried.
"""

import asyncio
import base64
import hashlib
import re
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from lxml import etree

from bus.flows.dead_letters import DeadLetter
from tests.conftest import free_port
from tests.flow_harness import bus_run_process, decode, read_all

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "soap" / "rest-to-soap.yaml"
SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
ERP = "urn:acme:erp:customers"
API_KEY = "crm-api-key-5d0c"
PASSWORD = "erp-password-77ab"


class Erp:
    """The ERP's SOAP service: ids starting `reject-` get the declared Client fault, `down-`
    a Server fault on the first call; every call's WS-Security digest is checked."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.upserted: dict[str, dict[str, str]] = {}
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
        envelope = etree.fromstring(await request.read(), parser)
        if not self._authentic(envelope):
            return self._fault("soap:Client", "authentication failed", "")
        (upsert,) = envelope.iter(f"{{{ERP}}}UpsertCustomer")
        fields = {etree.QName(child).localname: child for child in upsert}
        customer = fields["CustomerId"].text or ""
        self.calls[customer] += 1
        if customer.startswith("reject-"):
            detail = (
                f'<CustomerRejected xmlns="{ERP}"><CustomerId>{customer}</CustomerId>'
                "<Reason>blocked account</Reason></CustomerRejected>"
            )
            return self._fault("soap:Client", "customer rejected", detail)
        if customer.startswith("down-") and self.calls[customer] == 1:
            return self._fault("soap:Server", "database unavailable", "")
        created = customer not in self.upserted
        address = {etree.QName(c).localname: c.text or "" for c in fields["BillingAddress"]}
        self.upserted[customer] = {"email": fields["Email"].text or "", **address}
        body = (
            f'<UpsertCustomerResponse xmlns="{ERP}"><AccountId>A-{customer}</AccountId>'
            f"<Outcome>{'CREATED' if created else 'UPDATED'}</Outcome>"
            "<ProcessedAt>2026-11-24T12:00:00Z</ProcessedAt></UpsertCustomerResponse>"
        )
        return self._envelope(body)

    @staticmethod
    def _authentic(envelope: Any) -> bool:
        token = envelope.find(f".//{{{WSSE}}}UsernameToken")
        if token is None or envelope.find(f".//{{{WSU}}}Timestamp") is None:
            return False
        password = token.find(f"{{{WSSE}}}Password")
        nonce = base64.b64decode(token.findtext(f"{{{WSSE}}}Nonce") or "")
        created = token.findtext(f"{{{WSU}}}Created") or ""
        expected = base64.b64encode(
            hashlib.sha1(nonce + created.encode() + PASSWORD.encode()).digest()  # noqa: S324 -- the WS-Security digest is SHA-1 by definition
        ).decode()
        return (
            token.findtext(f"{{{WSSE}}}Username") == "bus"
            and password is not None
            and password.get("Type", "").endswith("#PasswordDigest")
            and password.text == expected
        )

    @staticmethod
    def _envelope(body: str, status: int = 200) -> web.Response:
        text = f'<soap:Envelope xmlns:soap="{SOAP11}"><soap:Body>{body}</soap:Body></soap:Envelope>'
        return web.Response(status=status, text=text, content_type="text/xml")

    def _fault(self, code: str, message: str, detail: str) -> web.Response:
        detail_xml = f"<detail>{detail}</detail>" if detail else ""
        fault = (
            f"<soap:Fault><faultcode>{code}</faultcode><faultstring>{message}</faultstring>"
            f"{detail_xml}</soap:Fault>"
        )
        return self._envelope(fault, status=500)


@pytest.fixture(scope="module")
async def erp() -> AsyncIterator[Erp]:
    erp = Erp()
    app = web.Application()
    app.router.add_post("/erp/customers", erp.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    erp.url = f"http://127.0.0.1:{runner.addresses[0][1]}/erp/customers"
    yield erp
    await runner.cleanup()


@pytest.fixture(scope="module")
async def webhook(
    erp: Erp, bootstrap_servers: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    port = free_port()
    async with bus_run_process(
        EXAMPLE,
        tmp_path_factory.mktemp("bus-run") / "bus.log",
        secrets=(PASSWORD, API_KEY),
        KAFKA_BOOTSTRAP_SERVERS=bootstrap_servers,
        BUS_HTTP_PORT=str(port),
        CRM_API_KEY=API_KEY,
        ERP_URL=erp.url,
        ERP_PASSWORD=PASSWORD,
    ):
        yield f"http://127.0.0.1:{port}/hooks/crm/customers"


async def send(url: str, customer: str) -> str:
    body = {
        "id": customer,
        "email": f"{customer}@example.com",
        "name": "Ada Lovelace",
        "address": {"line1": "1 Main St", "city": "Berlin", "postalCode": "10115", "country": "DE"},
        "changed_at": "2026-11-24T11:59:00Z",
    }
    async with aiohttp.ClientSession() as session, asyncio.timeout(90):
        while True:  # the server may still be starting
            try:
                async with session.post(url, json=body, headers={"X-Api-Key": API_KEY}) as answer:
                    assert answer.status == 202, await answer.text()
                    return str((await answer.json())["id"])
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.2)


async def reply_for(bootstrap_servers: str, customer: str) -> Any:
    async with asyncio.timeout(60):
        while True:
            events = await decode(
                await read_all(bootstrap_servers, "erp.customer-upserted.v1", 1.0)
            )
            found = [e for e in events if e.data["customerId"] == customer]
            if found:
                return found[0]
            await asyncio.sleep(0.2)


async def test_a_webhook_becomes_a_soap_call_and_a_reply(
    webhook: str, erp: Erp, bootstrap_servers: str
) -> None:
    await send(webhook, "c-200")
    reply = await reply_for(bootstrap_servers, "c-200")
    assert reply.type == "com.acme.erp.CustomerUpsertResult"
    assert reply.data["erpAccountId"] == "A-c-200"
    assert reply.data["outcome"] == "CREATED"
    assert erp.upserted["c-200"] == {
        "email": "c-200@example.com",
        "Line1": "1 Main St",
        "City": "Berlin",
        "PostalCode": "10115",
        "Country": "DE",
    }
    assert reply.extensions.get("parentid")


async def test_a_server_fault_is_retried(webhook: str, erp: Erp, bootstrap_servers: str) -> None:
    await send(webhook, "down-1")
    reply = await reply_for(bootstrap_servers, "down-1")
    assert reply.data["erpAccountId"] == "A-down-1"
    assert erp.calls["down-1"] == 2


async def test_a_client_fault_goes_to_the_dlq_with_its_code_and_detail(
    webhook: str, erp: Erp, bootstrap_servers: str
) -> None:
    await send(webhook, "reject-1")
    async with asyncio.timeout(60):
        while True:
            records = await read_all(bootstrap_servers, "erp-upsert.dlq", 1.0)
            found = [
                DeadLetter.from_headers(record.headers)
                for record in records
                if record.key == b"reject-1"
            ]
            if found:
                break
            await asyncio.sleep(0.2)
    (letter,) = found
    assert letter is not None
    assert erp.calls["reject-1"] == 1  # a Client fault is not retried
    assert letter.step == "call"
    assert "Client" in letter.error
    assert "customer rejected" in letter.error
    assert "blocked account" in letter.error


def test_the_docs_show_the_example_as_it_is() -> None:
    docs = (ROOT / "docs" / "adapters" / "soap.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", docs, re.DOTALL)
    assert EXAMPLE.read_text() in blocks
