"""One run's accounts, from the demo systems' own records (their ledgers), the dead letters the
run added, and what the load driver sent. Pure functions: nothing here does I/O.

Everything is accounted for by identity, never by counts that could cancel out: each expected
delivery is a key the system records (the idempotency key the bus sent, or the order id), and
each dead letter is known by the id of the event in it (its ce_id; a raw record, never an
event, by its record key). The ids are bus's deterministic ones, derived here as bus derives
them: a flow's output from the flow, its input's id and its place among the outputs
(output_event_id), a reply from the delivery and its request's id (reply_event_id).

The expectations follow the flows in examples/flows:
- a customer change the bus accepted (202), not a deletion, with an email and an address, is
  one UpsertCustomer at the ERP, under the id of the CustomerUpsertRequest customer-upserts
  made of the CRM's event; one the ERP refused (the email's domain on its deny list) is a
  letter in erp-upsert-*.dlq instead, and counts as delivered once its replayed letter gets
  through (after the domain left the deny list);
- each successful upsert is one account link at the CRM, under the reply's id;
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

from bus.delivery.replies import reply_event_id
from bus.flows.processor import output_event_id
from demo.load import Input
from demo.observe import Ledgers
from demo.systems.erp import BLOCKED_DOMAIN
from demo.systems.gateway import CURRENCIES

# customers.yaml routes these countries' customers to erp.world.customer-upsert.v1.
WORLD_COUNTRIES = frozenset({"US", "CA", "MX", "JP", "AU", "SG", "IN"})
UPSERT_DELIVERIES = ("erp-upsert-eu", "erp-upsert-world")
UPSERT_ITEMS = ("customer-upserts", *UPSERT_DELIVERIES)
PAYMENT_ITEMS = ("payment-requests", "payment-gateway")
# A delivery waits on every item before it too: a link on its upsert's reply, an invoice on
# the payment's outcome.
LINK_ITEMS = (*UPSERT_ITEMS, "crm-account-link")
INVOICE_ITEMS = (*PAYMENT_ITEMS, "payment-outcomes", "erp-invoice")
FAILURE_ITEMS = (*PAYMENT_ITEMS, "payment-outcomes", "crm-payment-failed")
RAW_ITEMS = ("payment-requests", "order-lines")
REJECTED = "REJECTED"  # the ERP ledger's outcome of an upsert it refused


@dataclass(frozen=True, slots=True)
class Letter:
    """One dead letter this run added: whose it is, and the reason bus recorded."""

    event_id: str | None  # the ce_id of the event in it; None: a record that never was one
    key: str | None  # its record key
    step: str = ""  # where it failed (decode, call, ...); "": not a letter bus wrote
    error_type: str = ""
    error: str = ""

    @property
    def ident(self) -> str:
        """What the accounts know it by: its event's id, else (a raw record) its key."""
        return self.event_id or self.key or ""


@dataclass(frozen=True, slots=True)
class DeadLettersAdded:
    """The letters this run added to each item's dead-letter topic: read one by one (`letters`),
    or only counted (from the items' counters, while the bus runs or when Kafka could not be
    read)."""

    counts: dict[str, int]
    letters: dict[str, list[Letter]] | None = None

    @classmethod
    def read(cls, letters: Mapping[str, Sequence[Letter]]) -> "DeadLettersAdded":
        return cls(
            counts={item: len(found) for item, found in letters.items()},
            letters={item: list(found) for item, found in letters.items()},
        )


@dataclass(frozen=True, slots=True)
class Stream:
    """One kind of delivery to one system."""

    name: str
    system: str
    path: tuple[str, ...]  # the bus items on its way, where what is missing may still wait
    expected: int  # deliveries that should reach the system
    delivered: int  # of those, how many did (by key)
    expected_dead: int = 0  # poison inputs that should end in a DLQ instead
    dead_lettered: int = 0  # expected ones whose letter is in a DLQ (and not delivered since)
    outstanding: int = 0  # expected ones neither delivered nor dead-lettered (yet)
    pending: int = 0  # of those, still in Kafka when the bus stopped: its next start has them
    duplicates: int = 0  # calls repeated and acted on again (harmless where idempotent)
    deduplicated: int = 0  # calls repeated and recognised by the system as repeats
    unexpected: int = 0  # keys the system recorded that no input of this run explains
    replayed: int = 0  # dead-lettered, then delivered after all (their letters replayed)

    @property
    def lost(self) -> int:
        return max(0, self.outstanding - self.pending)

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "lost": self.lost}


@dataclass(frozen=True, slots=True)
class DeadLetters:
    """What this run added to one item's dead-letter topic, against what it should have."""

    flow: str
    topic: str
    added: int
    expected: int
    why: str  # what the expected letters are
    reasons: dict[str, int] = field(default_factory=dict)  # "step: error" → letters
    # Known only when the letters were read (else None):
    matching: int | None = None  # letters whose reason is the expected one
    unexpected: int | None = None  # letters beyond the expected ones (another event, or again)
    missing: int | None = None  # expected letters that are not there

    @property
    def as_expected(self) -> bool:
        if self.matching is None:
            return self.added == self.expected
        return (self.matching, self.unexpected, self.missing) == (self.expected, 0, 0)


@dataclass(frozen=True, slots=True)
class Summary:
    run_id: str
    events_in: dict[str, int]  # accepted by the bus (202), by kind, from the CRM's records
    refused: dict[str, int]  # refused at the door: "<kind> <status>" → inputs
    unanswered: int  # inputs that got no answer from the bus at all
    raw_written: int  # records the "legacy producer" wrote to Kafka directly
    streams: list[Stream]
    dead_letters: list[DeadLetters]
    drained: bool  # if not, what is missing may still be on its way: lost is not verified

    @property
    def lost(self) -> int:
        return sum(stream.lost for stream in self.streams)

    @property
    def pending(self) -> int:
        return sum(stream.pending for stream in self.streams)

    @property
    def letters_as_expected(self) -> bool:
        return all(letters.as_expected for letters in self.dead_letters)

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
    dead: DeadLettersAdded,
    *,
    drained: bool = True,
    backlog: Mapping[str, int] | None = None,
    topics: Mapping[str, str] | None = None,
) -> Summary:
    """The run's accounts.

    `dead`: the letters this run added. `drained`: whether the bus was idle when it stopped;
    if not, `backlog` says per item how many records its consumer group left uncommitted
    (pending, not lost). `topics`: each item's dead-letter topic, for the report."""
    run = _Run(run_id, ledgers, inputs)
    unclaimed = dict(dead.counts)
    # The raw records first: when the letters are only counted, those of payment-requests.dlq
    # are theirs before they are an order's.
    raw = run.raw_records().tally(dead.letters, unclaimed)
    streams = [
        expectation.tally(dead.letters, unclaimed)
        for expectation in (
            run.upserts(),
            run.account_links(),
            run.payments(),
            run.invoices(),
            run.payment_failures(),
        )
    ]
    streams.append(raw)
    if backlog:
        streams = [_with_pending(stream, backlog) for stream in streams]
    return Summary(
        run_id=run_id,
        events_in=_events_in(run),
        refused=_refused(inputs),
        unanswered=sum(1 for item in inputs if item.kind != "raw-record" and item.status is None),
        raw_written=len(run.raw),
        streams=streams,
        dead_letters=run.dead_letters(dead, topics or {}),
        drained=drained,
    )


def outstanding(summary: Summary) -> int:
    """Deliveries neither made nor dead-lettered yet: what a drain waits for."""
    return sum(stream.outstanding for stream in summary.streams)


def upsert_key(change_event_id: str) -> str:
    """The ERP upsert's Idempotency-Key: the id of the CustomerUpsertRequest customer-upserts
    made of the CRM's CustomerChanged event (its only output)."""
    return output_event_id("customer-upserts", change_event_id, 0)


@dataclass(frozen=True, slots=True)
class OrderIds:
    """The ids of an order's events, each flow's output or reply made from the one before."""

    placed: str  # OrderPlaced, from the CRM's webhook
    requested: str  # PaymentRequested: payment-requests' output, the gateway call's event
    outcome: str  # PaymentOutcome: payment-gateway's reply
    routed: str  # payment-outcomes' output: the invoice request or the payment failure

    @classmethod
    def of(cls, placed: str) -> "OrderIds":
        requested = output_event_id("payment-requests", placed, 0)
        outcome = reply_event_id("payment-gateway", requested)
        return cls(placed, requested, outcome, output_event_id("payment-outcomes", outcome, 0))


@dataclass(frozen=True, slots=True)
class _Expectation:
    """One stream's expectations and what the system recorded, by key."""

    name: str
    system: str
    path: tuple[str, ...]
    deliveries: frozenset[str]  # keys that should reach the system
    dead: frozenset[str]  # keys that should end in a dead-letter topic instead
    received: frozenset[str]  # the keys of this run the system recorded
    letters: Mapping[str, Mapping[str, str]]  # per item on the way: a letter's id → its key
    duplicates: int = 0
    deduplicated: int = 0
    # Keys the system refused, then took (its own record): replayed, when the letters are
    # only counted.
    taken_after_refusal: frozenset[str] = frozenset()

    def tally(
        self, letters: Mapping[str, Sequence[Letter]] | None, unclaimed: dict[str, int]
    ) -> Stream:
        wanted = self.deliveries | self.dead
        delivered = self.deliveries & self.received
        if letters is not None:
            in_dlq = wanted & {
                ids[letter.ident]
                for item, ids in self.letters.items()
                for letter in letters.get(item, ())
                if letter.ident in ids
            }
            replayed = in_dlq & delivered
            dead_lettered = len(in_dlq - delivered)
            left = len(wanted - delivered - in_dlq)
        else:
            replayed = self.taken_after_refusal & delivered
            open_keys = (wanted - delivered) | replayed
            claimed = _claim(unclaimed, self.letters, open_keys)
            dead_lettered = min(max(0, claimed - len(replayed)), len(wanted - delivered))
            left = len(wanted - delivered) - dead_lettered
        return Stream(
            name=self.name,
            system=self.system,
            path=self.path,
            expected=len(self.deliveries),
            delivered=len(delivered),
            expected_dead=len(self.dead),
            dead_lettered=dead_lettered,
            outstanding=left,
            duplicates=self.duplicates,
            deduplicated=self.deduplicated,
            unexpected=len(self.received - self.deliveries),
            replayed=len(replayed),
        )


def _claim(
    unclaimed: dict[str, int], letters: Mapping[str, Mapping[str, str]], open_keys: frozenset[str]
) -> int:
    """Letters only counted: as many of each item's as it may hold for `open_keys`, taken
    from `unclaimed` (an item's letters can be for another stream: payment-requests.dlq holds
    the raw records' too)."""
    claimed = 0
    for item, ids in letters.items():
        room = min(len(open_keys & set(ids.values())), len(open_keys) - claimed)
        taken = min(unclaimed.get(item, 0), room)
        unclaimed[item] = unclaimed.get(item, 0) - taken
        claimed += taken
    return claimed


@dataclass(frozen=True, slots=True)
class _Change:
    """A customer change that should reach the ERP."""

    event_id: str  # the CRM's CustomerChanged event
    key: str  # its upsert's Idempotency-Key
    delivery: str  # erp-upsert-eu or erp-upsert-world, by the address's country


class _Run:
    """This run's records in the ledgers (an id carries the run's: c-<run>-0001), by key."""

    def __init__(self, run_id: str, ledgers: Ledgers, inputs: Sequence[Input]) -> None:
        self.marker = f"-{run_id}-"
        self.ledgers = ledgers
        self.changes = {  # by upsert key
            change.key: change
            for record in self.mine(ledgers.crm["customers"]).values()
            for change in map(_change, record["changes"])
            if change is not None
        }
        self.orders = {  # accepted, by order id
            order_id: order
            for order_id, order in self.mine(ledgers.crm["orders"]).items()
            if order["status"] == 202 and order["event_id"]
        }
        self.order_ids = {o: OrderIds.of(order["event_id"]) for o, order in self.orders.items()}
        self.payable = frozenset(o for o, order in self.orders.items() if _amount(order) > 0)
        self.bad_currency = frozenset(
            o for o in self.payable if self.orders[o]["currency"] not in CURRENCIES
        )
        self.gateway_payments = self.mine(ledgers.gateway["payments"])  # by order id
        self.raw = [item.id for item in inputs if item.kind == "raw-record" and _written(item)]
        self.upsert_calls = [
            call for calls in self.mine(ledgers.erp["upserts"]).values() for call in calls
        ]
        # The keys of the upsert calls the ERP took (once per call) and of those it refused.
        self.taken = [c["idempotency_key"] for c in self.upsert_calls if c["outcome"] != REJECTED]
        self.refused = {c["idempotency_key"] for c in self.upsert_calls if c["outcome"] == REJECTED}

    def mine(self, records: Mapping[str, Any]) -> dict[str, Any]:
        return {ident: record for ident, record in sorted(records.items()) if self.marker in ident}

    def upserts(self) -> _Expectation:
        taken = self.taken
        wanted = frozenset(self.changes)
        # A change the ERP refused belongs in a DLQ, unless it was delivered after all: its
        # letter replayed once the ERP took the domain off its deny list (the README's tour).
        dead = (wanted & self.refused) - set(taken)
        by_request = {key: key for key in wanted}
        return _Expectation(
            name="customer upserts",
            system="erp",
            path=UPSERT_ITEMS,
            deliveries=wanted - dead,
            dead=dead,
            received=frozenset(taken),
            letters={
                "customer-upserts": {change.event_id: key for key, change in self.changes.items()},
                **dict.fromkeys(UPSERT_DELIVERIES, by_request),
            },
            # The ERP does not dedupe upserts: each repeated key was acted on again (a refused
            # call was not acted on, so its replay that got through is no duplicate).
            duplicates=len(taken) - len(set(taken)),
            taken_after_refusal=frozenset(self.refused & set(taken)),
        )

    def account_links(self) -> _Expectation:
        taken = set(self.taken)
        # Each upsert the ERP took is answered by a reply of the delivery that made it.
        wanted = frozenset(
            reply_event_id(change.delivery, key)
            for key, change in self.changes.items()
            if key in taken
        )
        links = self.mine(self.ledgers.crm["account_links"]).values()
        keys = [link["idempotency_key"] for calls in links for link in calls]
        return _Expectation(
            name="account links",
            system="crm",
            path=LINK_ITEMS,
            deliveries=wanted,
            dead=frozenset(),
            received=frozenset(keys),
            letters={"crm-account-link": {key: key for key in wanted}},
            duplicates=len(keys) - len(set(keys)),
        )

    def payments(self) -> _Expectation:
        return _Expectation(
            name="payments",
            system="gateway",
            path=PAYMENT_ITEMS,
            deliveries=self.payable - self.bad_currency,
            dead=self.bad_currency,
            received=frozenset(self.gateway_payments),
            letters=self._order_letters(
                self.payable, placed="payment-requests", requested="payment-gateway"
            ),
            # A charge under another key for the same order: charged again.
            duplicates=sum(payment["charges"] - 1 for payment in self.gateway_payments.values()),
            deduplicated=sum(payment["replays"] for payment in self.gateway_payments.values()),
        )

    def invoices(self) -> _Expectation:
        captured = self._payments_with("captured")
        invoices = self.mine(self.ledgers.erp["invoices"])
        return _Expectation(
            name="invoices",
            system="erp",
            path=INVOICE_ITEMS,
            deliveries=captured,
            dead=frozenset(),
            received=frozenset(invoices),
            letters=self._order_letters(captured, outcome="payment-outcomes", routed="erp-invoice"),
            # The ERP makes one invoice per order: every repeated call, under the same key or
            # not, was recognised as a repeat and made no second invoice.
            deduplicated=sum(invoice["calls"] - 1 for invoice in invoices.values()),
        )

    def payment_failures(self) -> _Expectation:
        declined = self._payments_with("declined")
        failures = self.mine(self.ledgers.crm["payment_failures"])
        keys = [call["idempotency_key"] for calls in failures.values() for call in calls]
        return _Expectation(
            name="payment failures",
            system="crm",
            path=FAILURE_ITEMS,
            deliveries=declined,
            dead=frozenset(),
            received=frozenset(failures),
            letters=self._order_letters(
                declined, outcome="payment-outcomes", routed="crm-payment-failed"
            ),
            # The CRM records every call: a repeated key was acted on again.
            duplicates=len(keys) - len(set(keys)),
        )

    def raw_records(self) -> _Expectation:
        # Each raw record is two letters, one per flow that cannot decode it.
        return _Expectation(
            name="raw records",
            system="kafka",
            path=RAW_ITEMS,
            deliveries=frozenset(),
            dead=frozenset(f"{item}/{key}" for item in RAW_ITEMS for key in self.raw),
            received=frozenset(),
            letters={item: {key: f"{item}/{key}" for key in self.raw} for item in RAW_ITEMS},
        )

    def dead_letters(self, dead: DeadLettersAdded, topics: Mapping[str, str]) -> list[DeadLetters]:
        """Per item's dead-letter topic: the letters this run added against those expected."""
        rejected = "the ERP's CustomerRejected fault (email domain " + BLOCKED_DOMAIN + ")"
        undecodable = "undecodable raw record (step decode)"
        refused: dict[str, list[str]] = {item: [] for item in UPSERT_DELIVERIES}
        for call in self.upsert_calls:  # each call the ERP refused is one letter
            change = self.changes.get(call["idempotency_key"])
            if call["outcome"] == REJECTED and change is not None:
                refused[change.delivery].append(change.key)
        bad_currency = [self.order_ids[order_id].requested for order_id in self.bad_currency]
        expected: dict[str, tuple[list[str], str]] = {
            **{item: (keys, rejected) for item, keys in refused.items()},
            "payment-gateway": (bad_currency, "the gateway's 422 invalid_currency (XXX)"),
            **{item: (self.raw, undecodable) for item in RAW_ITEMS},
        }
        found = []
        for flow in sorted(set(dead.counts) | set(expected)):
            idents, why = expected.get(flow, ([], "none expected"))
            read = None if dead.letters is None else dead.letters.get(flow, [])
            found.append(
                DeadLetters(
                    flow=flow,
                    topic=topics.get(flow, f"{flow}.dlq"),
                    added=dead.counts.get(flow, 0),
                    expected=len(idents),
                    why=why,
                    reasons=_reason_counts(read or ()),
                    **({} if read is None else _compare(flow, read, idents)),
                )
            )
        return found

    def _payments_with(self, status: str) -> frozenset[str]:
        return frozenset(
            o for o, payment in self.gateway_payments.items() if payment["status"] == status
        )

    def _order_letters(self, order_ids: Iterable[str], **items: str) -> dict[str, dict[str, str]]:
        """Per item (named by the event of OrderIds it dead-letters): that event's id → order."""
        known = [o for o in order_ids if o in self.order_ids]
        return {
            item: {getattr(self.order_ids[o], event): o for o in known}
            for event, item in items.items()
        }


def _compare(flow: str, letters: Sequence[Letter], idents: Sequence[str]) -> dict[str, int]:
    """The letters against the expected ones (each an event's id, or a raw record's key)."""
    found = Counter(letter.ident for letter in letters)
    wanted = Counter(idents)
    right = _matcher(flow)
    return {
        "matching": sum(1 for letter in letters if letter.ident in wanted and right(letter)),
        "unexpected": sum((found - wanted).values()),
        "missing": sum((wanted - found).values()),
    }


def _matcher(flow: str) -> Callable[[Letter], bool]:
    """Whether a letter's reason is the one this flow's expected letters give."""

    def rejected(letter: Letter) -> bool:
        return letter.step == "call" and (
            "CustomerRejected" in letter.error or BLOCKED_DOMAIN in letter.error
        )

    def invalid_currency(letter: Letter) -> bool:
        return letter.step == "call" and "422" in letter.error

    def undecodable(letter: Letter) -> bool:
        return letter.step == "decode"

    def unexpected(letter: Letter) -> bool:
        return False

    return {
        **dict.fromkeys(UPSERT_DELIVERIES, rejected),
        "payment-gateway": invalid_currency,
        **dict.fromkeys(RAW_ITEMS, undecodable),
    }.get(flow, unexpected)


def _events_in(run: _Run) -> dict[str, int]:
    changes = Counter(
        change["action"]
        for record in run.mine(run.ledgers.crm["customers"]).values()
        for change in record["changes"]
        if change["status"] == 202
    )
    return {
        **{f"customers {action}": n for action, n in sorted(changes.items())},
        "orders": len(run.orders),
    }


def _refused(inputs: Sequence[Input]) -> dict[str, int]:
    refused = Counter(
        f"{item.kind} {item.status}"
        for item in inputs
        if item.status is not None and not item.accepted
    )
    return dict(sorted(refused.items()))


def _reason_counts(letters: Iterable[Letter]) -> dict[str, int]:
    counted = Counter(
        f"{letter.step}: {letter.error_type}: {letter.error[:160]}" for letter in letters
    )
    return dict(counted.most_common())


def _with_pending(stream: Stream, backlog: Mapping[str, int]) -> Stream:
    """What is missing of a stream and may still wait in Kafka, on the items on its way."""
    waiting = sum(backlog.get(item, 0) for item in stream.path)
    return replace(stream, pending=min(stream.outstanding, waiting))


def _change(change: Mapping[str, Any]) -> _Change | None:
    """The change as it reaches the ERP; None when it does not: customers.yaml sends a change
    on when accepted, not a deletion, with an email and an address."""
    if not (
        change["status"] == 202
        and change["action"] != "deleted"
        and change.get("event_id")
        and change.get("email")
        and change.get("country")
    ):
        return None
    key = upsert_key(change["event_id"])
    return _Change(change["event_id"], key, UPSERT_DELIVERIES[change["country"] in WORLD_COUNTRIES])


def _amount(order: Mapping[str, Any]) -> Decimal:
    try:
        return Decimal(order["total"])
    except (InvalidOperation, TypeError):
        return Decimal(0)


def _written(item: Input) -> bool:
    return item.answered and item.detail is not None and not item.detail.startswith("not written")
