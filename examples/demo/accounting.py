"""One run's accounts, from the demo systems' own records (their ledgers), the dead letters the
run added, and what the load driver sent: for each kind of delivery, how many were expected,
how many arrived (once per idempotency key), how many are in a DLQ, how many were still in Kafka
when the bus stopped, and so how many were lost. Pure functions: nothing here does I/O.

The expectations follow the flows in examples/flows:
- a customer change the bus accepted (202), not a deletion, with an email and an address, is
  one UpsertCustomer at the ERP (distinct idempotency key); each call the ERP refused (the
  email's domain on its deny list) is a letter in erp-upsert-*.dlq, and such a change counts as
  delivered once its replayed letter gets through (after the domain left the deny list);
- each successful upsert is one account link at the CRM;
- an accepted order in a known currency is one payment at the gateway; in XXX, a letter in
  payment-gateway.dlq;
- a captured payment is one invoice at the ERP, a declined one a payment failure at the CRM;
- a raw record written to orders.placed.v1 is one letter in payment-requests.dlq and one in
  order-lines.dlq (they cannot decode it).
"""

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from decimal import Decimal, InvalidOperation
from typing import Any

from demo.load import Input
from demo.observe import Ledgers
from demo.shop import BLOCKED_DOMAIN

KNOWN_CURRENCIES = frozenset({"EUR", "USD", "GBP", "JPY", "AUD", "SGD", "INR", "CAD", "MXN"})
# customers.yaml routes these countries' customers to erp.world.customer-upsert.v1.
WORLD_COUNTRIES = frozenset({"US", "CA", "MX", "JP", "AU", "SG", "IN"})
UPSERT_ITEMS = ("customer-upserts", "erp-upsert-eu", "erp-upsert-world")
PAYMENT_ITEMS = ("payment-requests", "payment-gateway")
# A delivery waits on every item before it too: a link on its upsert's reply, an invoice on
# the payment's outcome.
LINK_ITEMS = (*UPSERT_ITEMS, "crm-account-link")
INVOICE_ITEMS = (*PAYMENT_ITEMS, "payment-outcomes", "erp-invoice")
FAILURE_ITEMS = (*PAYMENT_ITEMS, "payment-outcomes", "crm-payment-failed")
RAW_ITEMS = ("payment-requests", "order-lines")


@dataclass(frozen=True, slots=True)
class Stream:
    """One kind of delivery to one system."""

    name: str
    system: str
    path: tuple[str, ...]  # the bus items on its way, where what is missing may still wait
    expected: int  # deliveries that should reach the system
    delivered: int  # of those, how many did (one per idempotency key)
    expected_dead: int = 0  # poison inputs that should end in a DLQ instead
    dead_lettered: int = 0  # letters this run added to the stream's dead-letter topics
    pending: int = 0  # still in Kafka when the bus stopped: delivered on its next start
    duplicates: int = 0  # calls repeated and acted on again (harmless where idempotent)
    deduplicated: int = 0  # calls repeated and recognised by the system's idempotency
    unexpected: int = 0  # distinct deliveries beyond what was expected: should be 0
    replayed: int = 0  # dead-lettered, then delivered after all (their letters replayed)

    @property
    def outstanding(self) -> int:
        """Neither delivered nor dead-lettered (yet)."""
        accounted = self.delivered + self.dead_lettered - self.replayed  # counted as both
        return max(0, self.expected + self.expected_dead - accounted)

    @property
    def lost(self) -> int:
        return max(0, self.outstanding - self.pending)

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "outstanding": self.outstanding, "lost": self.lost}


@dataclass(frozen=True, slots=True)
class DeadLetters:
    """What this run added to one item's dead-letter topic, against what it should have."""

    flow: str
    topic: str
    added: int
    expected: int
    why: str  # what the expected letters are
    reasons: dict[str, int] = field(default_factory=dict)  # "step: error" → letters
    matching: int | None = None  # letters whose reason is the expected one; None: not read

    @property
    def as_expected(self) -> bool:
        reasons_ok = self.matching is None or self.matching == self.expected
        return self.added == self.expected and reasons_ok


@dataclass(frozen=True, slots=True)
class Summary:
    run_id: str
    events_in: dict[str, int]  # accepted by the bus (202), by kind, from the CRM's records
    refused: dict[str, int]  # refused at the door: "<kind> <status>" → inputs
    unanswered: int  # inputs that got no answer from the bus at all
    raw_written: int  # records the "legacy producer" wrote to Kafka directly
    streams: list[Stream]
    dead_letters: list[DeadLetters]
    drained: bool

    @property
    def lost(self) -> int:
        return sum(stream.lost for stream in self.streams)

    @property
    def pending(self) -> int:
        return sum(stream.pending for stream in self.streams)

    def delivered_by_system(self) -> dict[str, int]:
        totals: Counter[str] = Counter()
        for stream in self.streams:
            totals[stream.system] += stream.delivered
        return dict(totals)

    def as_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "events_in": self.events_in,
            "refused": self.refused,
            "unanswered": self.unanswered,
            "raw_written": self.raw_written,
            "delivered": self.delivered_by_system(),
            "streams": [stream.as_json() for stream in self.streams],
            "dead_letters": [
                {**asdict(letters), "as_expected": letters.as_expected}
                for letters in self.dead_letters
            ],
            "pending": self.pending,
            "drained": self.drained,
            "lost": self.lost,
        }


def account(
    run_id: str,
    ledgers: Ledgers,
    inputs: Sequence[Input],
    dlq_added: Mapping[str, int],
    *,
    drained: bool = True,
    backlog: Mapping[str, int] | None = None,
    letters: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    topics: Mapping[str, str] | None = None,
) -> Summary:
    """The run's accounts.

    `dlq_added`: letters added to each item's DLQ during the run. `drained`: whether the bus
    was idle when it stopped; if not, `backlog` says per item how many records its consumer
    group left uncommitted (pending, not lost). `letters`: the reasons of the letters this run
    added, per item (None: not read)."""
    ours = _Ours(run_id)
    raw = sum(
        1 for item in inputs if item.kind == "raw-record" and item.answered and _written(item)
    )
    streams = _streams(ours, ledgers, dlq_added, raw)
    if backlog:
        streams = [_with_pending(stream, backlog) for stream in streams]
    return Summary(
        run_id=run_id,
        events_in=_events_in(ours, ledgers),
        refused=_refused(inputs),
        unanswered=sum(1 for item in inputs if item.kind != "raw-record" and item.status is None),
        raw_written=raw,
        streams=streams,
        dead_letters=_dead_letters(
            ours,
            ledgers,
            dlq_added=dlq_added,
            raw=raw,
            letters=letters or {},
            topics=topics or {},
        ),
        drained=drained,
    )


def outstanding(summary: Summary) -> int:
    """Deliveries neither made nor dead-lettered yet: what a drain waits for."""
    return sum(stream.outstanding for stream in summary.streams)


class _Ours:
    """This run's ids: c-<run>-0001, o-<run>-0001."""

    def __init__(self, run_id: str) -> None:
        self.marker = f"-{run_id}-"

    def __call__(self, ident: str) -> bool:
        return self.marker in ident

    def of(self, records: Mapping[str, Any]) -> Iterable[tuple[str, Any]]:
        return ((ident, record) for ident, record in sorted(records.items()) if self(ident))


def _streams(ours: _Ours, ledgers: Ledgers, dlq_added: Mapping[str, int], raw: int) -> list[Stream]:
    crm, erp, gateway = ledgers.crm, ledgers.erp, ledgers.gateway
    upserts, upserted_keys = _upserts(ours, crm, erp, dlq_added)
    payments = _payments(ours, crm, gateway, dlq_added, raw)
    return [
        upserts,
        _links(ours, crm, upserted_keys, dlq_added),
        payments,
        _invoices(ours, erp, gateway, dlq_added),
        _payment_failures(ours, crm, gateway, dlq_added),
        Stream(
            name="raw records",
            system="kafka",
            path=RAW_ITEMS,
            expected=0,
            delivered=0,
            expected_dead=2 * raw,
            dead_lettered=min(dlq_added.get("order-lines", 0), raw)
            + min(dlq_added.get("payment-requests", 0), raw),
        ),
    ]


def _upserts(
    ours: _Ours, crm: Mapping[str, Any], erp: Mapping[str, Any], dlq_added: Mapping[str, int]
) -> tuple[Stream, dict[str, set[str]]]:
    expected = expected_dead = delivered = unexpected = duplicates = replayed = 0
    upserted_keys: dict[str, set[str]] = {}
    for customer_id, customer in ours.of(crm["customers"]):
        sent = sum(1 for change in customer["changes"] if _reaches_erp(change))
        calls = erp["upserts"].get(customer_id, [])
        done = {call["idempotency_key"] for call in calls if call["outcome"] != "REJECTED"}
        refused = {call["idempotency_key"] for call in calls if call["outcome"] == "REJECTED"}
        # A change the ERP refused belongs in a DLQ, unless it was delivered after all: its
        # letter replayed once the ERP took the domain off its deny list (the README's tour).
        dead = len(refused - done)
        expected += sent - dead
        expected_dead += dead
        delivered += min(len(done), sent - dead)
        unexpected += max(0, len(done) - (sent - dead))
        replayed += len(refused & done)
        # Repeated calls the ERP acted on (a refused call is not acted on, so its replay that
        # got through is no duplicate).
        taken = [call for call in calls if call["outcome"] != "REJECTED"]
        duplicates += len(taken) - len(done)
        upserted_keys[customer_id] = done
    return (
        Stream(
            name="customer upserts",
            system="erp",
            path=UPSERT_ITEMS,
            expected=expected,
            delivered=delivered,
            expected_dead=expected_dead,
            dead_lettered=_added(dlq_added, UPSERT_ITEMS),
            duplicates=duplicates,
            unexpected=unexpected,
            replayed=replayed,
        ),
        upserted_keys,
    )


def _links(
    ours: _Ours,
    crm: Mapping[str, Any],
    upserted_keys: Mapping[str, set[str]],
    dlq_added: Mapping[str, int],
) -> Stream:
    expected = delivered = unexpected = duplicates = 0
    links = dict(ours.of(crm["account_links"]))
    for customer_id in sorted(set(upserted_keys) | set(links)):
        wanted = len(upserted_keys.get(customer_id, ()))
        calls = links.get(customer_id, [])
        keys = {call["idempotency_key"] for call in calls}
        expected += wanted
        delivered += min(len(keys), wanted)
        unexpected += max(0, len(keys) - wanted)
        duplicates += len(calls) - len(keys)
    return Stream(
        name="account links",
        system="crm",
        path=LINK_ITEMS,
        expected=expected,
        delivered=delivered,
        dead_lettered=dlq_added.get("crm-account-link", 0),
        duplicates=duplicates,
        unexpected=unexpected,
    )


def _payments(
    ours: _Ours,
    crm: Mapping[str, Any],
    gateway: Mapping[str, Any],
    dlq_added: Mapping[str, int],
    raw: int,
) -> Stream:
    expected = expected_dead = delivered = deduplicated = 0
    orders = dict(ours.of(crm["orders"]))
    for order_id, order in orders.items():
        if order["status"] != 202:
            continue
        if order["currency"] in KNOWN_CURRENCIES and _amount(order["total"]) > 0:
            expected += 1
            payment = gateway["payments"].get(order_id)
            delivered += payment is not None
            deduplicated += payment["replays"] if payment else 0
        else:
            expected_dead += 1
    unexpected = sum(1 for order_id, _ in ours.of(gateway["payments"]) if order_id not in orders)
    # The raw records' letters in payment-requests.dlq belong to their own stream.
    dead = dlq_added.get("payment-gateway", 0) + max(0, dlq_added.get("payment-requests", 0) - raw)
    return Stream(
        name="payments",
        system="gateway",
        path=PAYMENT_ITEMS,
        expected=expected,
        delivered=delivered,
        expected_dead=expected_dead,
        dead_lettered=dead,
        deduplicated=deduplicated,
        unexpected=unexpected,
    )


def _invoices(
    ours: _Ours, erp: Mapping[str, Any], gateway: Mapping[str, Any], dlq_added: Mapping[str, int]
) -> Stream:
    expected = delivered = deduplicated = duplicates = 0
    for order_id, payment in ours.of(gateway["payments"]):
        if payment["status"] != "captured":
            continue
        expected += 1
        invoice = erp["invoices"].get(order_id)
        if invoice is None:
            continue
        delivered += 1
        keys = len(set(invoice["idempotency_keys"]))
        deduplicated += invoice["calls"] - keys
        duplicates += keys - 1  # another key for the same order: a second invoice
    return Stream(
        name="invoices",
        system="erp",
        path=INVOICE_ITEMS,
        expected=expected,
        delivered=delivered,
        dead_lettered=_added(dlq_added, ("payment-outcomes", "erp-invoice")),
        duplicates=duplicates,
        deduplicated=deduplicated,
    )


def _payment_failures(
    ours: _Ours, crm: Mapping[str, Any], gateway: Mapping[str, Any], dlq_added: Mapping[str, int]
) -> Stream:
    expected = delivered = duplicates = 0
    failures = crm["payment_failures"]
    for order_id, payment in ours.of(gateway["payments"]):
        if payment["status"] != "declined":
            continue
        expected += 1
        calls = failures.get(order_id, [])
        delivered += bool(calls)
        duplicates += len(calls) - len({call["idempotency_key"] for call in calls})
    return Stream(
        name="payment failures",
        system="crm",
        path=FAILURE_ITEMS,
        expected=expected,
        delivered=delivered,
        dead_lettered=dlq_added.get("crm-payment-failed", 0),
        duplicates=duplicates,
    )


def _events_in(ours: _Ours, ledgers: Ledgers) -> dict[str, int]:
    changes = Counter(
        change["action"]
        for _, customer in ours.of(ledgers.crm["customers"])
        for change in customer["changes"]
        if change["status"] == 202
    )
    orders = sum(1 for _, order in ours.of(ledgers.crm["orders"]) if order["status"] == 202)
    return {**{f"customers {action}": n for action, n in sorted(changes.items())}, "orders": orders}


def _refused(inputs: Sequence[Input]) -> dict[str, int]:
    refused = Counter(
        f"{item.kind} {item.status}"
        for item in inputs
        if item.status is not None and not item.accepted
    )
    return dict(sorted(refused.items()))


def _dead_letters(
    ours: _Ours,
    ledgers: Ledgers,
    *,
    dlq_added: Mapping[str, int],
    raw: int,
    letters: Mapping[str, Sequence[Mapping[str, Any]]],
    topics: Mapping[str, str],
) -> list[DeadLetters]:
    # Each call the ERP refused is one letter, in the DLQ of the customer's region.
    blocked: Counter[str] = Counter()
    for customer_id, customer in ours.of(ledgers.crm["customers"]):
        countries = [change["country"] for change in customer["changes"] if change["country"]]
        world = bool(countries) and countries[-1] in WORLD_COUNTRIES
        item = "erp-upsert-world" if world else "erp-upsert-eu"
        calls = ledgers.erp["upserts"].get(customer_id, [])
        blocked[item] += sum(1 for call in calls if call["outcome"] == "REJECTED")
    bad_currency = sum(
        1
        for _, order in ours.of(ledgers.crm["orders"])
        if order["status"] == 202 and order["currency"] not in KNOWN_CURRENCIES
    )
    rejected = "the ERP's CustomerRejected fault (email domain " + BLOCKED_DOMAIN + ")"
    expected = {
        "erp-upsert-eu": (blocked["erp-upsert-eu"], rejected),
        "erp-upsert-world": (blocked["erp-upsert-world"], rejected),
        "payment-gateway": (bad_currency, "the gateway's 422 invalid_currency (XXX)"),
        "payment-requests": (raw, "undecodable raw record (step decode)"),
        "order-lines": (raw, "undecodable raw record (step decode)"),
    }
    found = []
    for flow in sorted(set(dlq_added) | set(expected)):
        count, why = expected.get(flow, (0, "none expected"))
        reasons = letters.get(flow)
        found.append(
            DeadLetters(
                flow=flow,
                topic=topics.get(flow, f"{flow}.dlq"),
                added=dlq_added.get(flow, 0),
                expected=count,
                why=why,
                reasons=_reason_counts(reasons or ()),
                matching=None if reasons is None else sum(map(_matcher(flow), reasons)),
            )
        )
    return found


def _matcher(flow: str) -> Callable[[Mapping[str, Any]], bool]:
    """Whether a letter's reason is the one this flow's expected letters give."""

    def rejected(reason: Mapping[str, Any]) -> bool:
        return reason["step"] == "call" and (
            "CustomerRejected" in reason["error"] or BLOCKED_DOMAIN in reason["error"]
        )

    def invalid_currency(reason: Mapping[str, Any]) -> bool:
        return reason["step"] == "call" and "422" in reason["error"]

    def undecodable(reason: Mapping[str, Any]) -> bool:
        return bool(reason["step"] == "decode")

    def unexpected(reason: Mapping[str, Any]) -> bool:
        return False

    return {
        "erp-upsert-eu": rejected,
        "erp-upsert-world": rejected,
        "payment-gateway": invalid_currency,
        "payment-requests": undecodable,
        "order-lines": undecodable,
    }.get(flow, unexpected)


def _reason_counts(reasons: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    counted = Counter(
        f"{reason['step']}: {reason['error_type']}: {reason['error'][:160]}" for reason in reasons
    )
    return dict(counted.most_common())


def _with_pending(stream: Stream, backlog: Mapping[str, int]) -> Stream:
    """What is missing of a stream and may still wait in Kafka, on the items on its way."""
    waiting = sum(backlog.get(item, 0) for item in stream.path)
    return replace(stream, pending=min(stream.outstanding, waiting))


def _reaches_erp(change: Mapping[str, Any]) -> bool:
    """customers.yaml sends a change on when accepted, not a deletion, with email and address."""
    return (
        change["status"] == 202
        and change["action"] != "deleted"
        and bool(change.get("email"))
        and bool(change.get("country"))
    )


def _added(dlq_added: Mapping[str, int], items: Iterable[str]) -> int:
    return sum(dlq_added.get(item, 0) for item in items)


def _amount(text: str) -> Decimal:
    try:
        return Decimal(text)
    except (InvalidOperation, TypeError):
        return Decimal(0)


def _written(item: Input) -> bool:
    return item.detail is not None and not item.detail.startswith("not written")
