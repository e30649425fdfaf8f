"""The demo's accounts (examples/demo/accounting.py) on small synthetic ledgers, without Kafka
or any system running: every delivery and every dead letter is known by its identity, so a
missing one is never made up for by another one, and `lost` says so.

The ledgers are built the way the systems write them, with the ids bus derives: the ERP's
upsert key is the id of the CustomerUpsertRequest that customer-upserts made of the CRM's
event, the CRM's account link key the id of the ERP delivery's reply.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from demo.accounting import (
    DeadLettersAdded,
    Letter,
    OrderIds,
    Stream,
    Summary,
    account,
    upsert_key,
)
from demo.launcher import EXIT_FAILED, EXIT_NOT_VERIFIED, EXIT_OK, exit_status
from demo.load import Input
from demo.observe import Ledgers

from bus.delivery.replies import reply_event_id

RUN = "a1b2c3"
REJECTED_ERROR = (
    "SOAP fault soap:Client: customer rejected: email domain blocked.example is on the ERP's "
    "deny list; detail: <CustomerRejected/>"
)


@dataclass
class Shop:
    """What one run sent and what the systems recorded of it, built change by change."""

    customers: dict[str, Any] = field(default_factory=dict)
    orders: dict[str, Any] = field(default_factory=dict)
    account_links: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    payment_failures: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    upserts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    invoices: dict[str, Any] = field(default_factory=dict)
    payments: dict[str, Any] = field(default_factory=dict)
    inputs: list[Input] = field(default_factory=list)
    letters: dict[str, list[Letter]] = field(default_factory=dict)

    def change(self, customer: int, change: int, *, email: str = "ada@example.com") -> str:
        """A change the CRM sent and the bus accepted; its upsert key."""
        customer_id = f"c-{RUN}-{customer:04d}"
        event_id = f"change-{customer}-{change}"
        self.customers.setdefault(customer_id, {"changes": [], "erp_account_id": None})
        self.customers[customer_id]["changes"].append(
            {
                "action": "created" if change == 1 else "updated",
                "status": 202,
                "event_id": event_id,
                "email": email,
                "country": "DE",  # an EU customer: erp-upsert-eu
            }
        )
        return upsert_key(event_id)

    def upserted(self, customer: int, key: str, *, outcome: str = "CREATED") -> None:
        """The ERP recorded a call; one it took is answered, and the CRM links the account."""
        customer_id = f"c-{RUN}-{customer:04d}"
        self.upserts.setdefault(customer_id, []).append(
            {"idempotency_key": key, "outcome": outcome}
        )
        if outcome != "REJECTED":
            self.account_links.setdefault(customer_id, []).append(
                {
                    "idempotency_key": reply_event_id("erp-upsert-eu", key),
                    "erp_account_id": "ACC-1",
                }
            )

    def order(self, number: int, *, currency: str = "EUR", total: str = "10.00") -> OrderIds:
        order_id = f"o-{RUN}-{number:04d}"
        placed = f"order-{number}"
        self.orders[order_id] = {
            "status": 202,
            "event_id": placed,
            "currency": currency,
            "total": total,
        }
        return OrderIds.of(placed)

    def paid(self, number: int, *, status: str = "captured") -> None:
        """The gateway's payment, and what followed it: an invoice or a payment failure."""
        order_id = f"o-{RUN}-{number:04d}"
        self.payments[order_id] = {
            "id": f"pay-{number}",
            "status": status,
            "idempotency_key": f"pay-{order_id}",
            "calls": 1,
            "replays": 0,
            "charges": 1,
        }
        ids = OrderIds.of(self.orders[order_id]["event_id"])
        if status == "captured":
            self.invoices[order_id] = {
                "invoice_number": f"INV-{number}",
                "idempotency_keys": [ids.routed],
                "calls": 1,
                "deduplicated": 0,
            }
        else:
            self.payment_failures[order_id] = [{"idempotency_key": ids.routed, "reason": "no"}]

    def letter(self, item: str, event_id: str, *, step: str = "call", error: str = "") -> None:
        self.letters.setdefault(item, []).append(
            Letter(event_id, None, step, "PermanentSoapFaultError", error or REJECTED_ERROR)
        )

    def ledgers(self) -> Ledgers:
        return Ledgers(
            crm={
                "customers": self.customers,
                "orders": self.orders,
                "account_links": self.account_links,
                "payment_failures": self.payment_failures,
            },
            erp={"upserts": self.upserts, "invoices": self.invoices},
            gateway={"payments": self.payments},
        )

    def account(self, **options: Any) -> Summary:
        return account(
            RUN, self.ledgers(), self.inputs, DeadLettersAdded.read(self.letters), **options
        )


def stream(summary: Summary, name: str) -> Stream:
    [found] = [s for s in summary.streams if s.name == name]
    return found


# -- the scenarios: each builds a shop and says what its accounts must be ---------------------


def a_missing_upsert(shop: Shop) -> None:
    """The customer's second change never reached the ERP; the first did (and was called for
    twice), and the ERP took a key no change of this run explains: none of that makes up for
    the missing one."""
    first = shop.change(1, 1)
    shop.change(1, 2)
    shop.upserted(1, first)
    shop.upserted(1, "a-key-of-no-change-of-this-run")


def a_duplicate_key(shop: Shop) -> None:
    """The ERP got one change twice under its key (a redelivery it does not dedupe)."""
    key = shop.change(1, 1)
    shop.upserted(1, key)
    shop.upserted(1, key)


def a_replayed_letter(shop: Shop) -> None:
    """The README's tour: refused (a letter), the cause fixed, the letter replayed, taken."""
    key = shop.change(1, 1, email="eve@blocked.example")
    shop.upserted(1, key, outcome="REJECTED")
    shop.letter("erp-upsert-eu", key)
    shop.upserted(1, key, outcome="UPDATED")


def a_dead_letter_as_expected(shop: Shop) -> None:
    """Refused and dead-lettered: in the DLQ, not lost."""
    key = shop.change(1, 1, email="eve@blocked.example")
    shop.upserted(1, key, outcome="REJECTED")
    shop.letter("erp-upsert-eu", key)


def an_extra_letter_and_a_real_loss(shop: Shop) -> None:
    """A letter for no change of this run in the upserts' DLQ, and a change that reached
    neither the ERP nor a DLQ: the letter does not stand in for the lost change."""
    shop.change(1, 1)
    shop.letter("erp-upsert-eu", "the-id-of-someone-else's-event")


def orders_every_way(shop: Shop) -> None:
    """A captured order (invoiced), a declined one (a payment failure), and one in XXX (its
    PaymentRequested dead-lettered by the gateway delivery)."""
    shop.order(1)
    shop.paid(1)
    shop.order(2, total="1499.00")
    shop.paid(2, status="declined")
    bad = shop.order(3, currency="XXX")
    shop.letter("payment-gateway", bad.requested, error="HTTP 422 invalid_currency")


def an_invoice_lost(shop: Shop) -> None:
    """Captured, but the ERP has no invoice, and the letter in erp-invoice.dlq is another
    order's: the invoice is lost."""
    shop.order(1)
    shop.paid(1)
    del shop.invoices[f"o-{RUN}-0001"]
    shop.letter("erp-invoice", OrderIds.of("order-99").routed, error="HTTP 500")


SCENARIOS: list[tuple[Callable[[Shop], None], str, dict[str, int]]] = [
    (a_missing_upsert, "customer upserts", {"expected": 2, "delivered": 1, "unexpected": 1}),
    (a_duplicate_key, "customer upserts", {"expected": 1, "delivered": 1, "duplicates": 1}),
    (a_replayed_letter, "customer upserts", {"expected": 1, "delivered": 1, "replayed": 1}),
    (a_dead_letter_as_expected, "customer upserts", {"expected_dead": 1, "dead_lettered": 1}),
    (an_extra_letter_and_a_real_loss, "customer upserts", {"expected": 1, "delivered": 0}),
    (orders_every_way, "payments", {"expected": 2, "delivered": 2, "dead_lettered": 1}),
    (orders_every_way, "invoices", {"expected": 1, "delivered": 1}),
    (orders_every_way, "payment failures", {"expected": 1, "delivered": 1}),
    (an_invoice_lost, "invoices", {"expected": 1, "delivered": 0}),
]
LOST = {
    a_missing_upsert: 1,
    a_duplicate_key: 0,
    a_replayed_letter: 0,
    a_dead_letter_as_expected: 0,
    an_extra_letter_and_a_real_loss: 1,
    orders_every_way: 0,
    an_invoice_lost: 1,
}
# Per scenario, whether each dead-letter topic got exactly the letters it should have.
LETTERS_AS_EXPECTED = {
    a_missing_upsert: True,
    a_duplicate_key: True,
    a_replayed_letter: True,
    a_dead_letter_as_expected: True,
    an_extra_letter_and_a_real_loss: False,
    orders_every_way: True,
    an_invoice_lost: False,
}


@pytest.mark.parametrize(
    ("scenario", "name", "expected"),
    SCENARIOS,
    ids=[f"{scenario.__name__}-{name}" for scenario, name, _ in SCENARIOS],
)
def test_each_stream_is_accounted_for_by_identity(
    scenario: Callable[[Shop], None], name: str, expected: dict[str, int]
) -> None:
    shop = Shop()
    scenario(shop)
    found = stream(shop.account(), name)
    assert {field: getattr(found, field) for field in expected} == expected
    assert found.lost == found.outstanding  # drained: nothing is pending


@pytest.mark.parametrize("scenario", list(LOST), ids=[s.__name__ for s in LOST])
def test_lost_and_the_dead_letters_verdict(scenario: Callable[[Shop], None]) -> None:
    shop = Shop()
    scenario(shop)
    summary = shop.account()
    assert summary.lost == LOST[scenario]
    assert summary.letters_as_expected is LETTERS_AS_EXPECTED[scenario]
    expected_status = EXIT_FAILED if LOST[scenario] or not LETTERS_AS_EXPECTED[scenario] else 0
    assert exit_status(summary, 0, hurried=False) == expected_status


def test_an_extra_letter_is_named_and_the_lost_change_is_in_no_stream_count() -> None:
    shop = Shop()
    an_extra_letter_and_a_real_loss(shop)
    summary = shop.account()
    [eu] = [letters for letters in summary.dead_letters if letters.flow == "erp-upsert-eu"]
    assert (eu.added, eu.expected, eu.unexpected, eu.missing) == (1, 0, 1, 0)
    upserts = stream(summary, "customer upserts")
    assert (upserts.dead_lettered, upserts.outstanding, upserts.lost) == (0, 1, 1)


def test_a_letter_for_the_wrong_reason_is_not_as_expected() -> None:
    shop = Shop()
    key = shop.change(1, 1, email="eve@blocked.example")
    shop.upserted(1, key, outcome="REJECTED")
    shop.letter("erp-upsert-eu", key, step="call", error="timed out after 5 s")
    summary = shop.account()
    assert summary.lost == 0
    assert not summary.letters_as_expected


def test_what_did_not_drain_is_pending_not_lost_and_not_verified() -> None:
    shop = Shop()
    shop.order(1)  # the gateway never got it: its record is still in payments.requested.v1
    shop.change(1, 1)  # nor the ERP this one, and nothing of it is left in Kafka
    summary = shop.account(drained=False, backlog={"payment-gateway": 1})
    payments, upserts = stream(summary, "payments"), stream(summary, "customer upserts")
    assert (payments.outstanding, payments.pending, payments.lost) == (1, 1, 0)
    assert (upserts.outstanding, upserts.pending, upserts.lost) == (1, 0, 1)
    assert summary.pending == 1
    assert exit_status(summary, 0, hurried=False) == EXIT_FAILED  # something is missing


def test_a_run_that_did_not_drain_never_exits_0() -> None:
    shop = Shop()
    shop.order(1)
    summary = shop.account(drained=False, backlog={"payment-gateway": 1})
    assert summary.lost == 0
    assert exit_status(summary, 0, hurried=False) == EXIT_NOT_VERIFIED
    # A second Ctrl-C stops bus run at once: its status 130 is no failure then.
    assert exit_status(summary, 130, hurried=True) == EXIT_NOT_VERIFIED


def test_bus_run_stopping_badly_fails_an_otherwise_clean_run() -> None:
    shop = Shop()
    a_duplicate_key(shop)
    summary = shop.account()
    assert exit_status(summary, 0, hurried=False) == EXIT_OK
    assert exit_status(summary, 1, hurried=False) == EXIT_FAILED
    assert exit_status(summary, -9, hurried=False) == EXIT_FAILED


def test_raw_records_are_known_by_their_key_in_both_dead_letter_topics() -> None:
    shop = Shop()
    raw = f"raw-{RUN}-0001"
    shop.inputs.append(
        Input(1, "raw-record", raw, None, 0.0, answered=True, detail="orders.placed.v1[0]@7")
    )
    for item in ("payment-requests", "order-lines"):
        shop.letters[item] = [Letter(None, raw, "decode", "EventDecodeError", "not Avro")]
    summary = shop.account()
    raw_stream = stream(summary, "raw records")
    assert (raw_stream.expected_dead, raw_stream.dead_lettered, raw_stream.lost) == (2, 2, 0)
    assert summary.letters_as_expected
    # One of them missing: lost, and its topic says so.
    shop.letters["order-lines"] = []
    summary = shop.account()
    assert stream(summary, "raw records").lost == 1
    [lines] = [letters for letters in summary.dead_letters if letters.flow == "order-lines"]
    assert (lines.missing, lines.as_expected) == (1, False)


def test_letters_only_counted_still_add_up_while_the_bus_runs() -> None:
    """The live view counts the items' letters (it does not read them): the raw records' share
    of payment-requests.dlq is theirs first, the rest the orders'."""
    shop = Shop()
    raw = f"raw-{RUN}-0001"
    shop.inputs.append(
        Input(1, "raw-record", raw, None, 0.0, answered=True, detail="orders.placed.v1[0]@7")
    )
    shop.order(1, currency="XXX")
    counted = DeadLettersAdded({"payment-requests": 1, "order-lines": 1, "payment-gateway": 1})
    summary = account(RUN, shop.ledgers(), shop.inputs, counted)
    assert stream(summary, "raw records").outstanding == 0
    assert stream(summary, "payments").dead_lettered == 1
    assert summary.lost == 0
    assert summary.letters_as_expected
