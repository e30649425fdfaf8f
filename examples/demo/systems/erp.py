"""The demo ERP: a SOAP service with customer accounts and invoices.

`POST /erp` takes the operations of `examples/flows/wsdl/erp.wsdl` (served at `GET /erp?wsdl`),
each with a WS-Security UsernameToken (user `bus`, password `ERP_PASSWORD`):

- `UpsertCustomer` creates or updates a customer's account (`ACC-` and 6 digits, never changing).
  Customers whose email domain is on the deny list (`blocked.example`) are refused with the
  declared fault `CustomerRejected`, a Client fault: a business decision that no retry will
  change. `DELETE /_demo/deny-list/<domain>` takes a domain off the list (the ERP's team fixed
  it): then replaying the dead letters delivers them (the README's tour does this). Like many
  ERPs it does not deduplicate: each call is recorded with its `Idempotency-Key` header, so the
  ledger shows every duplicate delivery.
- `GetCustomer` says whether the ERP knows a customer, and its payment terms (derived from its
  sales region); an unknown customer is an answer (`Known` false, terms `CARD`), not a fault.
- `CreateInvoice` invoices a captured payment, deduplicated by `Idempotency-Key`: asked again, it
  returns the invoice it made the first time.

With fault injection on, about 3% of upserts and invoices fail first with a Server fault "ERP
busy, try again" (HTTP 500): the transient kind that the bus retries.
"""

import itertools
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from demo.systems.config import ERP_USER, IDEMPOTENCY_KEY
from demo.systems.faults import FaultInjector
from demo.systems.ledger import demo_routes
from demo.systems.soap import SoapFault, SoapRequest, SoapService
from demo.systems.wsse import UsernameTokenPolicy

WSDL = Path(__file__).resolve().parents[2] / "flows" / "wsdl" / "erp.wsdl"
BLOCKED_DOMAIN = "blocked.example"
TERMS_BY_REGION = {"EU": "SEPA_DEBIT", "US": "CARD", "APAC": "INVOICE"}
BUSY_CHANCE = 0.03
"""Share of UpsertCustomer and CreateInvoice calls that fail with "ERP busy" (faults on)."""


@dataclass
class Account:
    account_id: str
    region: str


@dataclass
class Invoice:
    number: str
    created_at: datetime
    idempotency_keys: list[str] = field(default_factory=list)
    calls: int = 0
    deduplicated: int = 0


class Erp:
    """The ERP's state and its aiohttp application (`app()`)."""

    def __init__(self, *, password: str, faults: FaultInjector) -> None:
        self.soap = SoapService(WSDL, service="ErpService", port="ErpSoap")
        self.security = UsernameTokenPolicy({ERP_USER: password})
        self.faults = faults
        self.deny_list = {BLOCKED_DOMAIN}
        self.accounts: dict[str, Account] = {}
        self.invoices: dict[str, Invoice] = {}
        self.upserts: defaultdict[str, list[dict[str, str | None]]] = defaultdict(list)
        self.lookups = 0
        self.injected_faults = 0
        self._account_numbers = itertools.count(100001)
        self._invoice_numbers = itertools.count(1)

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes(
            [
                web.post("/erp", self.call),
                web.get("/erp", self.wsdl),
                web.delete("/_demo/deny-list/{domain}", self.allow_domain),
                *demo_routes(self.ledger),
            ]
        )
        return app

    def ledger(self) -> dict[str, Any]:
        return {
            "upserts": {customer: list(calls) for customer, calls in self.upserts.items()},
            "invoices": {
                order: {
                    "invoice_number": invoice.number,
                    "idempotency_keys": list(invoice.idempotency_keys),
                    "calls": invoice.calls,
                    "deduplicated": invoice.deduplicated,
                }
                for order, invoice in self.invoices.items()
            },
            "lookups": self.lookups,
            "injected_faults": self.injected_faults,
            "deny_list": sorted(self.deny_list),
        }

    async def allow_domain(self, request: web.Request) -> web.Response:
        self.deny_list.discard(request.match_info["domain"].lower())
        return web.json_response({"deny_list": sorted(self.deny_list)})

    async def wsdl(self, request: web.Request) -> web.Response:
        if "wsdl" not in request.query:
            raise web.HTTPNotFound(text="GET /erp?wsdl for the WSDL; POST /erp for calls")
        return web.Response(body=WSDL.read_bytes(), content_type="text/xml", charset="utf-8")

    async def call(self, request: web.Request) -> web.Response:
        try:
            call = self.soap.read(await request.read())
            self.security.verify(call.security)
            key = request.headers.get(IDEMPOTENCY_KEY)
            if call.operation == "GetCustomer":
                return self.soap.respond(call.operation, self.get_customer(call))
            # A busy ERP refuses before it does anything, so a retry is always safe.
            if self.faults.pick({"busy": BUSY_CHANCE}):
                self.injected_faults += 1
                raise SoapFault("Server", "ERP busy, try again")
            if call.operation == "UpsertCustomer":
                return self.soap.respond(call.operation, self.upsert_customer(call, key))
            return self.soap.respond(call.operation, self.create_invoice(call, key))
        except SoapFault as fault:
            return self.soap.fault(fault)

    # -- the operations ----------------------------------------------------------------------

    def upsert_customer(self, call: SoapRequest, key: str | None) -> dict[str, Any]:
        customer: str = call.values["CustomerId"]
        domain = call.values["Email"].rpartition("@")[2].lower()
        if domain in self.deny_list:
            self.upserts[customer].append({"idempotency_key": key, "outcome": "REJECTED"})
            reason = f"email domain {domain} is on the ERP's deny list"
            raise SoapFault(
                "Client",
                f"customer rejected: {reason}",
                detail=("CustomerRejected", {"CustomerId": customer, "Reason": reason}),
            )
        account = self.accounts.get(customer)
        outcome = "UPDATED" if account else "CREATED"
        if account is None:
            account = Account(f"ACC-{next(self._account_numbers):06d}", call.values["SalesRegion"])
            self.accounts[customer] = account
        account.region = call.values["SalesRegion"]
        self.upserts[customer].append({"idempotency_key": key, "outcome": outcome})
        return {
            "AccountId": account.account_id,
            "Outcome": outcome,
            "ProcessedAt": datetime.now(UTC),
        }

    def get_customer(self, call: SoapRequest) -> dict[str, Any]:
        self.lookups += 1
        account = self.accounts.get(call.values["CustomerId"])
        if account is None:
            return {"Known": False, "PaymentTerms": "CARD"}
        return {
            "Known": True,
            "AccountId": account.account_id,
            "PaymentTerms": TERMS_BY_REGION[account.region],
        }

    def create_invoice(self, call: SoapRequest, key: str | None) -> dict[str, Any]:
        order: str = call.values["OrderId"]
        invoice = self.invoices.get(order)
        if invoice is None:
            # An order is invoiced once, whatever key comes: a second key for it is recorded
            # (a duplicate the ledger shows) but makes no second invoice.
            number = f"INV-{datetime.now(UTC).year}-{next(self._invoice_numbers):06d}"
            invoice = Invoice(number, datetime.now(UTC))
            self.invoices[order] = invoice
        invoice.calls += 1
        if key is not None and key in invoice.idempotency_keys:
            invoice.deduplicated += 1
        elif key is not None:
            invoice.idempotency_keys.append(key)
        return {"InvoiceNumber": invoice.number, "CreatedAt": invoice.created_at}
