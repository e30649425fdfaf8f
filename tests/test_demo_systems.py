"""The demo's CRM, ERP and payment gateway (examples/demo/systems), without Kafka.

Each system runs as a real aiohttp server on a free loopback port and is called as the bus calls
it: over HTTP with aiohttp, and over SOAP with zeep (blocking, so in a thread). The CRM's webhooks
go to a small aiohttp receiver playing the bus. Fault injection is off (as with DEMO_FAULTS=off)
except where a test is about it, so every count is exact.
"""

import asyncio
import hashlib
import hmac
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import zeep
import zeep.exceptions
from aiohttp import web
from demo.systems.crm import Crm
from demo.systems.erp import WSDL, Erp
from demo.systems.faults import FaultInjector, process_seed
from demo.systems.gateway import Gateway
from demo.systems.serving import serve
from lxml import etree  # type: ignore[import-untyped]
from zeep.wsse.username import UsernameToken

ROOT = Path(__file__).resolve().parents[1]

ERP_PASSWORD = "erp-test-password"
WEBHOOK_SECRET = "crm-test-webhook-secret"
API_TOKEN = "crm-test-api-token"
CLIENT = ("bus", "gateway-test-secret")
ERP = "urn:acme:erp"
ADDRESS = {"Line1": "1 Main St", "City": "Berlin", "PostalCode": "10115", "Country": "DE"}


# -- the ERP, over SOAP with zeep ---------------------------------------------------------------


@pytest.fixture
async def erp() -> AsyncIterator[tuple[Erp, str]]:
    system = Erp(password=ERP_PASSWORD, faults=FaultInjector.off())
    served = await serve(system.app(), 0)
    yield system, served.url
    await served.stop()


# zeep is untyped: these names are the boundary.
_Client: Any = zeep.Client
_UsernameToken: Any = UsernameToken


def soap_client(password: str = ERP_PASSWORD) -> Any:
    """zeep as the bus uses it: a WS-Security digest (a fresh nonce) on each call."""
    return _Client(str(WSDL), wsse=_UsernameToken("bus", password, use_digest=True))


def erp_service(client: Any, url: str) -> Any:
    return client.create_service(f"{{{ERP}}}ErpSoapBinding", f"{url}/erp")


def upsert(service: Any, customer: str, email: str, region: str = "EU") -> Any:
    return service.UpsertCustomer(
        CustomerId=customer,
        LegalName="Ada Lovelace",
        Email=email,
        BillingAddress=ADDRESS,
        SalesRegion=region,
    )


async def test_erp_upserts_a_customer_into_one_stable_account(erp: tuple[Erp, str]) -> None:
    system, url = erp

    def calls() -> tuple[Any, Any]:
        client = soap_client()
        service = erp_service(client, url)
        with client.settings(extra_http_headers={"Idempotency-Key": "k-1"}):
            first = upsert(service, "c-1", "ada@example.com")
        with client.settings(extra_http_headers={"Idempotency-Key": "k-2"}):
            second = upsert(service, "c-1", "ada@example.com", region="US")
        return first, second

    first, second = await asyncio.to_thread(calls)
    assert re.fullmatch(r"ACC-\d{6}", first.AccountId)
    assert (first.Outcome, second.Outcome) == ("CREATED", "UPDATED")
    assert second.AccountId == first.AccountId
    assert isinstance(first.ProcessedAt, datetime)
    assert first.ProcessedAt.tzinfo is not None
    assert system.ledger()["upserts"] == {
        "c-1": [
            {"idempotency_key": "k-1", "outcome": "CREATED"},
            {"idempotency_key": "k-2", "outcome": "UPDATED"},
        ]
    }


async def test_erp_rejects_a_blocked_domain_with_the_declared_fault(erp: tuple[Erp, str]) -> None:
    system, url = erp

    def call() -> zeep.exceptions.Fault:
        with pytest.raises(zeep.exceptions.Fault) as raised:
            upsert(erp_service(soap_client(), url), "c-9", "mallory@blocked.example")
        return raised.value

    fault = await asyncio.to_thread(call)
    assert fault.code == "soap:Client"
    assert fault.message == (
        "customer rejected: email domain blocked.example is on the ERP's deny list"
    )
    detail = fault.detail.find(f"{{{ERP}}}CustomerRejected")
    assert detail.findtext(f"{{{ERP}}}CustomerId") == "c-9"
    assert "blocked.example" in detail.findtext(f"{{{ERP}}}Reason")
    assert system.ledger()["upserts"] == {"c-9": [{"idempotency_key": None, "outcome": "REJECTED"}]}


async def test_erp_accepts_a_domain_taken_off_its_deny_list(erp: tuple[Erp, str]) -> None:
    system, url = erp
    async with (
        aiohttp.ClientSession() as session,
        session.delete(f"{url.rsplit('/erp', 1)[0]}/_demo/deny-list/blocked.example") as answer,
    ):
        assert answer.status == 200
        assert await answer.json() == {"deny_list": []}

    def call() -> str:
        return str(
            upsert(erp_service(soap_client(), url), "c-9", "mallory@blocked.example").Outcome
        )

    assert await asyncio.to_thread(call) == "CREATED"
    assert system.ledger()["deny_list"] == []


async def test_erp_refuses_a_wrong_password_and_a_replayed_token(erp: tuple[Erp, str]) -> None:
    system, url = erp

    def wrong_password() -> zeep.exceptions.Fault:
        with pytest.raises(zeep.exceptions.Fault) as raised:
            erp_service(soap_client("not-the-password"), url).GetCustomer(CustomerId="c-1")
        return raised.value

    fault = await asyncio.to_thread(wrong_password)
    assert (fault.code, fault.message) == ("soap:Client", "authentication failed")

    # The same signed envelope twice: the digest is right, but its nonce is spent.
    client = soap_client()
    envelope = client.create_message(erp_service(client, url), "GetCustomer", CustomerId="c-1")
    body = etree.tostring(envelope)
    async with aiohttp.ClientSession() as session:
        answers = []
        for _ in range(2):
            async with session.post(
                f"{url}/erp", data=body, headers={"Content-Type": "text/xml; charset=utf-8"}
            ) as response:
                answers.append((response.status, await response.text()))
    assert answers[0][0] == 200
    assert "<ns0:Known>false</ns0:Known>" in answers[0][1]
    assert answers[1][0] == 500
    assert "<faultstring>authentication failed</faultstring>" in answers[1][1]
    assert system.ledger()["lookups"] == 1


async def test_erp_creates_each_invoice_once_per_idempotency_key(erp: tuple[Erp, str]) -> None:
    system, url = erp

    def invoice(service: Any, order: str) -> Any:
        return service.CreateInvoice(
            OrderId=order,
            CustomerId="c-1",
            PaymentId=f"pay-{order}",
            Amount=Decimal("47.30"),
            Currency="EUR",
            GatewayReference="gw_1",
        )

    def calls() -> list[Any]:
        client = soap_client()
        service = erp_service(client, url)
        answers = []
        for order, key in (("o-1", "k-1"), ("o-1", "k-1"), ("o-2", "k-2")):
            with client.settings(extra_http_headers={"Idempotency-Key": key}):
                answers.append(invoice(service, order))
        return answers

    first, again, other = await asyncio.to_thread(calls)
    assert re.fullmatch(r"INV-\d{4}-\d{6}", first.InvoiceNumber)
    assert (again.InvoiceNumber, again.CreatedAt) == (first.InvoiceNumber, first.CreatedAt)
    assert other.InvoiceNumber != first.InvoiceNumber
    assert system.ledger()["invoices"]["o-1"] == {
        "invoice_number": first.InvoiceNumber,
        "idempotency_keys": ["k-1"],
        "calls": 2,
        "deduplicated": 1,
    }


async def test_erp_get_customer_knows_upserted_customers_only(erp: tuple[Erp, str]) -> None:
    system, url = erp

    def calls() -> tuple[Any, Any, Any]:
        service = erp_service(soap_client(), url)
        unknown = service.GetCustomer(CustomerId="c-7")
        account = upsert(service, "c-7", "kim@example.com", region="APAC")
        return unknown, account, service.GetCustomer(CustomerId="c-7")

    unknown, account, known = await asyncio.to_thread(calls)
    assert (unknown.Known, unknown.AccountId, unknown.PaymentTerms) == (False, None, "CARD")
    assert (known.Known, known.AccountId, known.PaymentTerms) == (
        True,
        account.AccountId,
        "INVOICE",
    )
    assert system.ledger()["lookups"] == 2


async def test_erp_serves_its_wsdl_and_refuses_invalid_requests(erp: tuple[Erp, str]) -> None:
    _, url = erp
    incomplete = (
        '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>'
        f'<e:GetCustomer xmlns:e="{ERP}"/></soap:Body></soap:Envelope>'
    )
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/erp?wsdl") as response:
            assert response.status == 200
            assert await response.read() == WSDL.read_bytes()
        async with session.post(
            f"{url}/erp", data=incomplete, headers={"Content-Type": "text/xml"}
        ) as response:
            assert response.status == 500
            text = await response.text()
    assert "<faultcode>soap:Client</faultcode>" in text
    assert "invalid GetCustomer request" in text  # checked against the WSDL before any password


async def test_erp_faults_on_purpose_as_its_seed_says() -> None:
    # One roll of the ERP's dice per upsert: the same seed fails the same calls, run after run.
    dice = FaultInjector.seeded(3, "erp")
    expected = ["busy" if dice.pick({"busy": 0.03}) else "CREATED" for _ in range(60)]
    assert expected.count("busy") == 4
    system = Erp(password=ERP_PASSWORD, faults=FaultInjector.seeded(3, "erp"))
    served = await serve(system.app(), 0)

    def calls() -> tuple[list[str], set[tuple[str, str]]]:
        service = erp_service(soap_client(), served.url)
        seen, faults = [], set()
        for n in range(60):
            try:
                seen.append(upsert(service, f"c-{n}", "ada@example.com").Outcome)
            except zeep.exceptions.Fault as fault:
                faults.add((fault.code, fault.message))
                seen.append("busy")
        return seen, faults

    try:
        seen, faults = await asyncio.to_thread(calls)
    finally:
        await served.stop()
    assert seen == expected
    assert faults == {("soap:Server", "ERP busy, try again")}
    ledger = system.ledger()
    assert ledger["injected_faults"] == 4
    assert len(ledger["upserts"]) == 56  # a busy ERP did nothing


def test_fault_injection_follows_its_chances_and_the_switch() -> None:
    injector = FaultInjector.seeded(1, "gateway")
    picks = [injector.pick({"503": 0.04, "429": 0.03, "slow": 0.03}) for _ in range(20000)]
    assert abs(picks.count("503") / 20000 - 0.04) < 0.01
    assert abs(picks.count(None) / 20000 - 0.90) < 0.01
    assert FaultInjector.off().pick({"always": 1.0}) is None
    assert process_seed({"DEMO_FAULTS": "off", "DEMO_SEED": "3"}) is None
    assert process_seed({"DEMO_SEED": "3"}) == 3
    with pytest.raises(ValueError, match="DEMO_FAULTS must be on or off"):
        process_seed({"DEMO_FAULTS": "maybe"})


# -- the payment gateway, over REST with aiohttp -------------------------------------------------


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[Gateway, str, Clock]]:
    clock = Clock()
    system = Gateway(
        client_id=CLIENT[0], client_secret=CLIENT[1], faults=FaultInjector.off(), clock=clock
    )
    served = await serve(system.app(), 0)
    yield system, served.url, clock
    await served.stop()


async def token(session: aiohttp.ClientSession, url: str, secret: str = CLIENT[1]) -> Any:
    async with session.post(
        f"{url}/oauth/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": aiohttp.encode_basic_auth(CLIENT[0], secret)},
    ) as response:
        return response.status, await response.json()


async def pay(
    session: aiohttp.ClientSession,
    url: str,
    access: str,
    key: str | None,
    *,
    amount: str = "47.30",
    currency: str = "EUR",
    order: str = "o-1",
) -> tuple[int, Any, Any]:
    headers = {"Authorization": f"Bearer {access}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    body = {
        "order_id": order,
        "customer_id": "c-1",
        "amount": amount,
        "currency": currency,
        "method": "CARD",
    }
    async with session.post(f"{url}/v1/payments", json=body, headers=headers) as response:
        return response.status, response.headers, await response.json()


async def test_gateway_issues_tokens_to_its_client_only(
    gateway: tuple[Gateway, str, Clock],
) -> None:
    system, url, clock = gateway
    async with aiohttp.ClientSession() as session:
        assert await token(session, url, "wrong") == (401, {"error": "invalid_client"})
        status, issued = await token(session, url)
        assert status == 200
        assert (issued["token_type"], issued["expires_in"]) == ("Bearer", 300)
        assert (await pay(session, url, "forged", "k-1"))[0] == 401
        assert (await pay(session, url, issued["access_token"], "k-1"))[0] == 201
        clock.now += 301  # expired
        assert (await pay(session, url, issued["access_token"], "k-2"))[0] == 401
    assert system.ledger()["tokens_issued"] == 1


async def test_gateway_replays_a_known_idempotency_key(gateway: tuple[Gateway, str, Clock]) -> None:
    system, url, _ = gateway
    async with aiohttp.ClientSession() as session:
        access = (await token(session, url))[1]["access_token"]
        assert (await pay(session, url, access, None))[0] == 400  # no key, no payment
        status, headers, first = await pay(session, url, access, "k-1")
        assert (status, first["status"], first["amount"]) == (201, "captured", "47.30")
        assert re.fullmatch(r"pay_[0-9a-f]{16}", first["id"])
        assert re.fullmatch(r"gw_[0-9a-f]{16}", first["reference"])
        assert "Idempotent-Replayed" not in headers
        status, headers, again = await pay(session, url, access, "k-1")
        assert (status, headers["Idempotent-Replayed"], again) == (201, "true", first)
        reused = await pay(session, url, access, "k-1", amount="1.00")
        assert (reused[0], reused[2]["error"]) == (409, "idempotency_key_reused")
    assert system.ledger()["payments"] == {
        "o-1": {
            "id": first["id"],
            "status": "captured",
            "idempotency_key": "k-1",
            "calls": 2,
            "replays": 1,
            "charges": 1,
        }
    }


async def test_gateway_declines_above_900_and_refuses_unknown_currencies(
    gateway: tuple[Gateway, str, Clock],
) -> None:
    system, url, _ = gateway
    async with aiohttp.ClientSession() as session:
        access = (await token(session, url))[1]["access_token"]
        _, _, limit = await pay(session, url, access, "k-1", amount="900.00", order="o-1")
        _, _, above = await pay(session, url, access, "k-2", amount="900.01", order="o-2")
        status, _, refused = await pay(session, url, access, "k-3", currency="XXX", order="o-3")
    assert limit["status"] == "captured"
    assert (above["status"], above["decline_reason"], above["reference"]) == (
        "declined",
        "insufficient_funds",
        None,
    )
    assert (status, refused["error"]) == (422, "invalid_currency")
    ledger = system.ledger()
    assert set(ledger["payments"]) == {"o-1", "o-2"}
    assert ledger["rejected"] == {"o-3": {"error": "invalid_currency", "calls": 1}}


async def test_gateway_outage_answers_503_until_it_is_over(
    gateway: tuple[Gateway, str, Clock],
) -> None:
    system, url, clock = gateway
    async with aiohttp.ClientSession() as session:
        access = (await token(session, url))[1]["access_token"]
        async with session.post(f"{url}/_demo/outage?seconds=30") as response:
            assert response.status == 200
        assert (await pay(session, url, access, "k-1"))[0] == 503
        clock.now += 31
        assert (await pay(session, url, access, "k-1"))[0] == 201
    assert system.ledger()["injected"] == {"503": 0, "429": 0, "slow": 0, "outage": 1}


# -- the CRM, with a receiver playing the bus -----------------------------------------------------


@dataclass
class Receiver:
    """Plays the bus's webhook endpoints: answers `statuses` in turn, then 202."""

    statuses: list[int] = field(default_factory=list)
    calls: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)

    async def hook(self, request: web.Request) -> web.Response:
        self.calls.append((request.path, dict(request.headers), await request.read()))
        status = self.statuses.pop(0) if self.statuses else 202
        if status == 202:
            return web.json_response({"id": f"event-{len(self.calls)}"}, status=202)
        return web.json_response({"title": "no", "status": status}, status=status)


@pytest.fixture
async def crm() -> AsyncIterator[tuple[Crm, str, Receiver]]:
    receiver = Receiver()
    bus = web.Application()
    bus.router.add_post("/hooks/crm/{kind}", receiver.hook)
    bus_served = await serve(bus, 0)
    system = Crm(
        bus_url=bus_served.url,
        webhook_secret=WEBHOOK_SECRET,
        api_token=API_TOKEN,
        give_up_after=1.0,
    )
    served = await serve(system.app(), 0)
    yield system, served.url, receiver
    await served.stop()
    await bus_served.stop()


CUSTOMER = {
    "id": "c-1",
    "action": "created",
    "email": "ada@example.com",
    "first_name": "Ada",
    "last_name": "Lovelace",
    "address": {"line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"},
}


async def post_json(url: str, body: Any, **headers: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=body, headers=headers) as response,
    ):
        return response.status, await response.json()


async def test_crm_signs_its_webhooks_and_retries_a_busy_bus(
    crm: tuple[Crm, str, Receiver],
) -> None:
    system, url, receiver = crm
    receiver.statuses = [503, 503]
    status, answer = await post_json(f"{url}/api/customers", CUSTOMER)
    assert (status, answer) == (200, {"status": 202, "event_id": "event-3", "problem": None})
    assert len(receiver.calls) == 3
    deliveries = {headers["X-GitHub-Delivery"] for _, headers, _ in receiver.calls}
    assert len(deliveries) == 1  # one delivery id for all the attempts: one event
    path, headers, body = receiver.calls[-1]
    expected = hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers["X-Hub-Signature-256"] == f"sha256={expected}"
    assert path == "/hooks/crm/customers"
    sent = json.loads(body)
    assert sent["event"] == "customer.created"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", sent["occurred_at"])
    stored = {key: value for key, value in CUSTOMER.items() if key != "action"}
    assert sent["customer"] == {**stored, "phone": None, "tags": []}
    ledger = system.ledger()
    assert (ledger["webhook_attempts"], ledger["webhook_retries"]) == (3, 2)
    assert ledger["customers"]["c-1"]["changes"] == [
        {
            "action": "created",
            "status": 202,
            "event_id": "event-3",
            "email": "ada@example.com",
            "country": "DE",
        }
    ]


async def test_crm_gives_up_on_refusals_at_once_and_on_a_busy_bus_in_time(
    crm: tuple[Crm, str, Receiver],
) -> None:
    system, url, receiver = crm
    receiver.statuses = [401]
    status, answer = await post_json(f"{url}/api/customers", CUSTOMER)
    assert (status, answer["status"], answer["event_id"]) == (200, 401, None)
    assert answer["problem"]["title"] == "no"
    assert len(receiver.calls) == 1  # a refusal is not retried
    receiver.statuses = [503] * 100
    status, answer = await post_json(f"{url}/api/customers", {**CUSTOMER, "action": "updated"})
    assert answer["status"] == 503  # given up within give_up_after (1 s here, 30 s by default)
    assert 2 <= len(receiver.calls) - 1 <= 5
    status, answer = await post_json(f"{url}/api/customers", {**CUSTOMER, "action": "merged"})
    assert status == 400
    assert "action must be one of created, updated, deleted" in answer["message"]
    assert [change["status"] for change in system.ledger()["customers"]["c-1"]["changes"]] == [
        401,
        503,
    ]


ORDER = {
    "id": "o-1",
    "customer_id": "c-1",
    "channel": "web",
    "currency": "EUR",
    "lines": [
        {"sku": "SKU-1", "description": "Coffee", "quantity": 2, "unit_price": "18.90"},
        {"sku": "SKU-2", "quantity": 1, "unit_price": "9.5"},
    ],
    "shipping_address": CUSTOMER["address"],
}


async def test_crm_places_orders_with_their_total(crm: tuple[Crm, str, Receiver]) -> None:
    system, url, receiver = crm
    status, answer = await post_json(f"{url}/api/orders", ORDER)
    assert (status, answer["status"]) == (200, 202)
    path, _, body = receiver.calls[0]
    sent = json.loads(body)
    assert (path, sent["event"], sent["order"]["total"]) == (
        "/hooks/crm/orders",
        "order.placed",
        "47.30",
    )
    assert sent["order"]["lines"][1] == {
        "sku": "SKU-2",
        "description": None,
        "quantity": 1,
        "unit_price": "9.50",
    }
    assert system.ledger()["orders"] == {
        "o-1": {"status": 202, "event_id": "event-1", "currency": "EUR", "total": "47.30"}
    }


async def test_crm_takes_account_links_and_payment_failures_from_the_bus(
    crm: tuple[Crm, str, Receiver],
) -> None:
    system, url, _ = crm
    await post_json(f"{url}/api/customers", CUSTOMER)
    bearer = f"Bearer {API_TOKEN}"
    link = {"erp_account_id": "ACC-100001", "synced_at": "2026-11-24T12:00:00Z"}

    async def patch(customer: str, authorization: str, key: str) -> int:
        async with (
            aiohttp.ClientSession() as session,
            session.patch(
                f"{url}/api/customers/{customer}",
                json=link,
                headers={"Authorization": authorization, "Idempotency-Key": key},
            ) as response,
        ):
            return response.status

    assert await patch("c-1", "Bearer wrong", "k-0") == 401
    assert await patch("c-404", bearer, "k-0") == 404
    assert [await patch("c-1", bearer, "k-1") for _ in range(2)] == [200, 200]
    status, _ = await post_json(
        f"{url}/api/orders/o-404/payment-failures",
        {"payment_id": "pay-o-404", "reason": "insufficient_funds"},
        Authorization=bearer,
    )
    assert status == 404
    await post_json(f"{url}/api/orders", ORDER)
    status, _ = await post_json(
        f"{url}/api/orders/o-1/payment-failures",
        {"payment_id": "pay-o-1", "reason": "insufficient_funds"},
        **{"Authorization": bearer, "Idempotency-Key": "k-9"},
    )
    assert status == 200
    ledger = system.ledger()
    assert ledger["payment_failures"] == {
        "o-1": [{"idempotency_key": "k-9", "reason": "insufficient_funds"}]
    }
    assert ledger["account_links"] == {
        "c-1": [{"idempotency_key": "k-1", "erp_account_id": "ACC-100001"}] * 2
    }
    assert ledger["customers"]["c-1"]["erp_account_id"] == "ACC-100001"


# -- the process, as the launcher runs it -------------------------------------------------------


async def test_the_systems_process_says_ready_and_stops_on_sigterm() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "examples"), "DEMO_FAULTS": "off"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "demo.systems",
        *("--crm-port", "0", "--erp-port", "0", "--gateway-port", "0"),
        *("--bus-url", "http://127.0.0.1:9"),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
        ready = re.fullmatch(r"demo systems ready: crm=(\S+) erp=(\S+)/erp gateway=(\S+)\n", line)
        assert ready is not None, line
        async with aiohttp.ClientSession() as session:
            for base in ready.groups():
                async with session.get(f"{base}/_demo/health") as response:
                    assert response.status == 200
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
