"""The demo's load: what a shop's staff and systems do to the CRM, at a steady rate, plus a few
inputs the bus must refuse or dead-letter. Every id carries the run id, so that a run's records
can be told apart from an earlier run's in the systems and in Kafka.

Inputs (one per tick):
- a customer created, edited or deleted by a CRM user (POST /api/customers); the CRM then sends
  its signed webhook to the bus and says what the bus answered;
- an order the shop placed for a customer created earlier (POST /api/orders), same answer;
- poison: a customer whose email domain the ERP refuses, an order in currency XXX, random bytes
  written straight to orders.placed.v1 by a "legacy producer", a webhook with a forged signature
  sent to the bus directly.
"""

import asyncio
import contextlib
import itertools
import json
import os
import random
import time
import uuid
from collections.abc import Coroutine
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp
from aiokafka import AIOKafkaProducer

from bus import kafka_clients
from demo.shop import UNKNOWN_CURRENCY, Shop
from demo.systems.webhooks import signature

ORDERS_TOPIC = "orders.placed.v1"
FORGED_SECRET = "not-the-crm-secret"  # noqa: S105 -- the wrong secret, on purpose
CRM_ANSWER_WITHIN = 45.0  # the CRM itself retries an unavailable bus for up to 30 s
# The first poison inputs come early, so a short run (and the view) shows every kind at once;
# later ones are rarer, one every POISON_EVERY inputs, in the same order.
POISON_KINDS = ("blocked-customer", "bad-currency-order", "raw-record", "forged-webhook")
POISON_FIRST = (8, 16, 24, 32)
POISON_EVERY = 50
MAX_IN_FLIGHT = 32  # inputs waiting for their answer; more means the bus is stuck


@dataclass
class Input:
    """One input of the load, and what came of it."""

    index: int
    # customer | order | blocked-customer | bad-currency-order | raw-record | forged-webhook
    kind: str
    id: str
    action: str | None  # a customer's: created | updated | deleted
    at: float  # epoch seconds, when it was sent
    answered: bool = False
    status: int | None = None  # the bus's HTTP status, through the CRM or to the forged webhook
    event_id: str | None = None  # the id the bus answered with
    detail: str | None = None  # what went wrong, or where a raw record was written

    @property
    def accepted(self) -> bool:
        return self.status == 202

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


class LoadDriver:
    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        run_id: str,
        crm_url: str,
        bus_url: str,
        bootstrap_servers: str,
        rate: float,
        events: int | None,
        rng: random.Random,
    ) -> None:
        self.session = session
        self.run_id = run_id
        self.crm_url = crm_url
        self.bus_url = bus_url
        self.bootstrap_servers = bootstrap_servers
        self.rate = rate
        self.events = events
        self.rng = rng
        self.shop = Shop(rng)
        self.inputs: list[Input] = []
        # Every customer as last sent to the CRM, known from the moment its input is decided,
        # not when the CRM answers: what follows then depends on the seed alone, never on
        # timing (a seed repeats a run's inputs), and an order always finds a customer. The
        # CRM does not check that an order's customer exists, so one it refused is no harm.
        self._customers: dict[str, dict[str, Any]] = {}
        self._busy: set[str] = set()  # customers with an edit under way: not edited again yet
        self._numbers = {prefix: itertools.count(1) for prefix in ("c", "o", "raw", "forged")}
        self._tasks: set[asyncio.Task[None]] = set()
        self._producer: AIOKafkaProducer | None = None
        self._producer_lock = asyncio.Lock()

    @property
    def sent(self) -> int:
        return len(self.inputs)

    async def run(self, stop: asyncio.Event) -> None:
        """Send inputs at the rate until `stop` is set or `events` were sent, then wait for
        every answer."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        try:
            while not stop.is_set() and (self.events is None or self.sent < self.events):
                if len(self._tasks) >= MAX_IN_FLIGHT:  # the bus is slow: wait, do not pile up
                    await asyncio.wait(
                        set(self._tasks), timeout=0.5, return_when=asyncio.FIRST_COMPLETED
                    )
                    continue
                self._spawn(self.sent + 1)
                # Steady: a late tick is not made up for by a burst of more than a second's worth.
                next_at = max(next_at + 1 / self.rate, loop.time() - 1.0)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(0.0, next_at - loop.time()))
            if self._tasks:
                await asyncio.wait(set(self._tasks), timeout=CRM_ANSWER_WITHIN + 5)
        finally:
            for task in self._tasks:
                task.cancel()
            if self._producer is not None:
                await self._producer.stop()

    def sample_event_id(self, older_than: float = 2.0) -> str | None:
        """A recent event the bus accepted, old enough for its journey to be under way:
        preferably an order (its journey is the longest), else a customer change."""
        now = time.time()
        accepted = [i for i in reversed(self.inputs) if i.accepted and i.event_id]
        for wanted in ("order", "customer"):
            for item in accepted:
                if item.kind == wanted and now - item.at >= older_than:
                    return item.event_id
        return None

    def _spawn(self, index: int) -> None:
        """Decide the input now (in order, so a seed gives the same run), send it in a task."""
        send = self._decide(index)
        task = asyncio.create_task(send)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _decide(self, index: int) -> Coroutine[Any, Any, None]:
        """The input number `index`, recorded; what sends it is returned, to run in a task.
        Everything random is drawn here, in input order, never in the tasks."""
        idle = sorted(set(self._customers) - self._busy)
        poison = self._poison(index)
        if poison is not None:
            return poison
        roll = self.rng.random()
        if not idle or roll < 0.30:
            return self._customer(index, "customer", None)
        if roll < 0.45:
            return self._customer(index, "customer", self.rng.choice(idle))
        # The last customer is never deleted: the next order, and the poison one, need one.
        if roll < 0.49 and len(self._customers) > 1:
            return self._delete(index, self.rng.choice(idle))
        # An order may come while its customer is being edited: the shop does not wait.
        customer = self._customers[self.rng.choice(sorted(self._customers))]
        return self._order(index, "order", customer, None)

    def _poison(self, index: int) -> Coroutine[Any, Any, None] | None:
        kind = _poison_at(index)
        if kind == "blocked-customer":
            return self._customer(index, kind, None, blocked=True)
        if kind == "bad-currency-order":  # the first input made a customer, never deleted
            customer = self._customers[self.rng.choice(sorted(self._customers))]
            return self._order(index, kind, customer, UNKNOWN_CURRENCY)
        if kind == "raw-record":
            return self._raw_record(self._record(index, kind, self._next_id("raw"), None))
        if kind == "forged-webhook":
            ident = self._next_id("forged")
            return self._forged_webhook(self._record(index, kind, ident, "updated"))
        return None

    def _next_id(self, prefix: str) -> str:
        return f"{prefix}-{self.run_id}-{next(self._numbers[prefix]):04d}"

    def _record(self, index: int, kind: str, ident: str, action: str | None) -> Input:
        item = Input(index=index, kind=kind, id=ident, action=action, at=time.time())
        self.inputs.append(item)
        return item

    def _customer(
        self, index: int, kind: str, customer_id: str | None, *, blocked: bool = False
    ) -> Coroutine[Any, Any, None]:
        if customer_id is None:
            customer = self.shop.customer(self._next_id("c"), blocked=blocked)
        else:
            customer = self.shop.updated(self._customers[customer_id])
        item = self._record(index, kind, customer["id"], customer["action"])
        # A blocked customer is not edited again: each edit would be one more dead letter.
        if not blocked:
            self._customers[customer["id"]] = customer
        self._busy.add(customer["id"])

        async def send() -> None:
            try:
                await self._post(item, "/api/customers", customer)
            finally:
                self._busy.discard(customer["id"])

        return send()

    def _delete(self, index: int, customer_id: str) -> Coroutine[Any, Any, None]:
        # Forgotten at once: no edit and no order for a customer being deleted.
        customer = self.shop.deleted(self._customers.pop(customer_id))
        item = self._record(index, "customer", customer_id, "deleted")
        return self._post(item, "/api/customers", customer)

    def _order(
        self, index: int, kind: str, customer: dict[str, Any], currency: str | None
    ) -> Coroutine[Any, Any, None]:
        order = self.shop.order(self._next_id("o"), customer, currency=currency)
        item = self._record(index, kind, order["id"], None)
        return self._post(item, "/api/orders", order)

    async def _post(self, item: Input, path: str, body: dict[str, Any]) -> None:
        """Send `body` to the CRM; `item` gets the bus's answer the CRM passes on."""
        try:
            async with self.session.post(
                self.crm_url + path,
                json=body,
                timeout=aiohttp.ClientTimeout(total=CRM_ANSWER_WITHIN),
            ) as response:
                if response.status != 200:
                    item.detail = f"the CRM answered {response.status}: {await _text(response)}"
                    return
                answer = await response.json()
        except (aiohttp.ClientError, TimeoutError) as error:
            item.detail = f"the CRM did not answer: {error!r}"
            return
        finally:
            item.answered = True
        item.status = answer.get("status")
        item.event_id = answer.get("event_id")
        if answer.get("problem"):
            item.detail = json.dumps(answer["problem"])[:300]

    async def _raw_record(self, item: Input) -> None:
        """A legacy producer's record: not Avro, no CloudEvents headers; acks=all, so that it
        is in the topic when this returns."""
        try:
            producer = await self._kafka_producer()
            stored = await producer.send_and_wait(
                ORDERS_TOPIC, value=os.urandom(48), key=item.id.encode()
            )
            item.detail = f"{ORDERS_TOPIC}[{stored.partition}]@{stored.offset}"
        except Exception as error:
            item.detail = f"not written: {error!r}"
        finally:
            item.answered = True

    async def _kafka_producer(self) -> AIOKafkaProducer:
        async with self._producer_lock:
            if self._producer is None:
                producer = kafka_clients.durable_producer(self.bootstrap_servers)
                await producer.start()
                self._producer = producer
            return self._producer

    async def _forged_webhook(self, item: Input) -> None:
        """A customer webhook signed with the wrong secret, as an attacker would send it: the
        bus must answer 401 and store nothing."""
        body = json.dumps(
            {
                "event": "customer.updated",
                "occurred_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "customer": {
                    "id": item.id,
                    "email": "mallory@evil.example",
                    "first_name": "Mallory",
                    "last_name": "Forger",
                },
            }
        ).encode()
        try:
            async with self.session.post(
                f"{self.bus_url}/hooks/crm/customers",
                data=body,
                headers={
                    "Content-Type": "application/json",
                    "X-Hub-Signature-256": signature(FORGED_SECRET, body),
                    "X-GitHub-Delivery": str(uuid.uuid4()),
                },
                timeout=aiohttp.ClientTimeout(total=10),
            ) as response:
                item.status = response.status
                item.detail = await _text(response)
        except (aiohttp.ClientError, TimeoutError) as error:
            item.detail = f"the bus did not answer: {error!r}"
        finally:
            item.answered = True


def _poison_at(index: int) -> str | None:
    if index in POISON_FIRST:
        return POISON_KINDS[POISON_FIRST.index(index)]
    if index > POISON_FIRST[-1] and index % POISON_EVERY == 0:
        return POISON_KINDS[(index // POISON_EVERY - 1) % len(POISON_KINDS)]
    return None


async def _text(response: aiohttp.ClientResponse) -> str:
    return (await response.text(errors="replace"))[:300]
