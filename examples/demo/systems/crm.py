"""The demo CRM: customers and orders behind a REST API, and webhooks to the bus.

Called by people (in the demo, the load driver):
- `POST /api/customers`: a user created, updated or deleted a customer
  (`{"id", "action": "created|updated|deleted", "email", "first_name", "last_name", "phone"?,
  "address"?: {"line1", "city", "postal_code", "country"}, "tags"?: [...]}`);
- `POST /api/orders`: the shop placed an order (`{"id", "customer_id", "channel", "currency",
  "lines": [{"sku", "description"?, "quantity", "unit_price": "12.50"}], "shipping_address"}`);
  the CRM works out the total.

Each is stored, then sent to the bus as a signed webhook (`webhooks.py`) before the caller gets
its answer: `200 {"status": <the bus's status>, "event_id": ..., "problem": ...}`.

Called by the bus (bearer token `CRM_API_TOKEN`, each call recorded with its `Idempotency-Key`):
- `PATCH /api/customers/{id}` `{"erp_account_id", "synced_at"}`: the customer's ERP account;
- `POST /api/orders/{id}/payment-failures` `{"payment_id", "reason"}`: a payment was declined.
"""

import hmac
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import aiohttp
from aiohttp import web

from demo.systems.config import IDEMPOTENCY_KEY
from demo.systems.ledger import demo_routes
from demo.systems.webhooks import Outcome, WebhookSender

ACTIONS = ("created", "updated", "deleted")
CHANNELS = ("web", "store", "phone", "partner")
ADDRESS_FIELDS = ("line1", "city", "postal_code", "country")
CENTS = Decimal("0.01")


class Invalid(Exception):  # noqa: N818 -- an answer to the caller, not a bug of ours
    """A request the CRM refuses (400), and why."""


class Crm:
    """The CRM's state and its aiohttp application (`app()`)."""

    def __init__(
        self, *, bus_url: str, webhook_secret: str, api_token: str, give_up_after: float = 30.0
    ) -> None:
        self.bus_url = bus_url.rstrip("/")
        self._webhook_secret = webhook_secret
        self._api_token = api_token
        self._give_up_after = give_up_after
        self._webhooks: WebhookSender | None = None
        self.customers: dict[str, dict[str, Any]] = {}
        self.orders: dict[str, dict[str, Any]] = {}
        self.changes: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
        self.order_outcomes: dict[str, dict[str, Any]] = {}
        self.account_links: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
        self.payment_failures: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
        self.webhook_attempts = 0
        self.webhook_retries = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.cleanup_ctx.append(self._webhook_session)
        app.add_routes(
            [
                web.post("/api/customers", self.change_customer),
                web.get("/api/customers/{id}", self.show_customer),
                web.patch("/api/customers/{id}", self.link_account),
                web.post("/api/orders", self.place_order),
                web.post("/api/orders/{id}/payment-failures", self.payment_failed),
                *demo_routes(self.ledger),
            ]
        )
        return app

    async def _webhook_session(self, app: web.Application) -> AsyncIterator[None]:
        # One session, so every webhook reuses the pool's connections to the bus.
        async with aiohttp.ClientSession() as session:
            self._webhooks = WebhookSender(
                session, self._webhook_secret, give_up_after=self._give_up_after
            )
            yield
            self._webhooks = None

    def ledger(self) -> dict[str, Any]:
        return {
            "customers": {
                customer: {"changes": list(changes), "erp_account_id": self._account_of(customer)}
                for customer, changes in self.changes.items()
            },
            "orders": {order: dict(outcome) for order, outcome in self.order_outcomes.items()},
            "account_links": {key: list(links) for key, links in self.account_links.items()},
            "payment_failures": {
                key: list(failures) for key, failures in self.payment_failures.items()
            },
            "webhook_attempts": self.webhook_attempts,
            "webhook_retries": self.webhook_retries,
        }

    # -- called by people -------------------------------------------------------------------

    async def change_customer(self, request: web.Request) -> web.Response:
        try:
            action, customer = read_customer(await _json_object(request))
        except Invalid as invalid:
            return _refused(invalid)
        self.customers[customer["id"]] = customer
        outcome = await self._send(
            "/hooks/crm/customers",
            {"event": f"customer.{action}", "occurred_at": _now(), "customer": customer},
        )
        country = customer["address"]["country"] if customer["address"] else None
        self.changes[customer["id"]].append(
            {
                "action": action,
                "status": outcome.status,
                "event_id": outcome.event_id,
                "email": customer["email"],
                "country": country,
            }
        )
        return _answer(outcome)

    async def place_order(self, request: web.Request) -> web.Response:
        try:
            order = read_order(await _json_object(request))
        except Invalid as invalid:
            return _refused(invalid)
        self.orders[order["id"]] = order
        outcome = await self._send(
            "/hooks/crm/orders", {"event": "order.placed", "occurred_at": _now(), "order": order}
        )
        self.order_outcomes[order["id"]] = {
            "status": outcome.status,
            "event_id": outcome.event_id,
            "currency": order["currency"],
            "total": order["total"],
        }
        return _answer(outcome)

    async def show_customer(self, request: web.Request) -> web.Response:
        customer = self.customers.get(request.match_info["id"])
        if customer is None:
            return _not_found("customer")
        return web.json_response({**customer, "erp_account_id": self._account_of(customer["id"])})

    def _account_of(self, customer: str) -> str | None:
        """The ERP account the bus last linked the customer to."""
        links = self.account_links.get(customer)
        return links[-1]["erp_account_id"] if links else None

    async def _send(self, path: str, payload: dict[str, Any]) -> Outcome:
        if self._webhooks is None:
            raise web.HTTPServiceUnavailable(text="the CRM is shutting down")
        outcome = await self._webhooks.send(self.bus_url + path, payload)
        self.webhook_attempts += outcome.attempts
        self.webhook_retries += outcome.attempts - 1
        return outcome

    # -- called by the bus ------------------------------------------------------------------

    async def link_account(self, request: web.Request) -> web.Response:
        self._authorize(request)
        customer = request.match_info["id"]
        if customer not in self.customers:
            return _not_found("customer")
        try:
            body = await _json_object(request)
            account = _text(body, "erp_account_id")
        except Invalid as invalid:
            return _refused(invalid)
        # Setting a field to the same value twice changes nothing: PATCH is idempotent by nature,
        # and every call is still recorded, so duplicates can be counted.
        self.account_links[customer].append(
            {"idempotency_key": request.headers.get(IDEMPOTENCY_KEY), "erp_account_id": account}
        )
        return web.json_response({"id": customer, "erp_account_id": account})

    async def payment_failed(self, request: web.Request) -> web.Response:
        self._authorize(request)
        order = request.match_info["id"]
        if order not in self.orders:
            return _not_found("order")
        try:
            body = await _json_object(request)
            _text(body, "payment_id")
            reason = _text(body, "reason")
        except Invalid as invalid:
            return _refused(invalid)
        self.payment_failures[order].append(
            {"idempotency_key": request.headers.get(IDEMPOTENCY_KEY), "reason": reason}
        )
        return web.json_response({"order_id": order, "recorded": True})

    def _authorize(self, request: web.Request) -> None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.encode(), self._api_token.encode()
        ):
            raise web.HTTPUnauthorized(
                text='{"error": "invalid_token"}',
                content_type="application/json",
                headers={"WWW-Authenticate": "Bearer"},
            )


# -- reading requests -----------------------------------------------------------------------


def read_customer(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(action, the customer as the CRM stores it) from a customer change."""
    action = _text(body, "action")
    if action not in ACTIONS:
        raise Invalid(f"action must be one of {', '.join(ACTIONS)}, not {action!r}")
    phone = body.get("phone")
    if phone is not None and not isinstance(phone, str):
        raise Invalid("phone must be text")
    tags = body.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        raise Invalid("tags must be a list of text")
    address = body.get("address")
    return action, {
        "id": _text(body, "id"),
        "email": _text(body, "email"),
        "first_name": _text(body, "first_name"),
        "last_name": _text(body, "last_name"),
        "phone": phone,
        "address": None if address is None else _address(address, "address"),
        "tags": tags,
    }


def read_order(body: dict[str, Any]) -> dict[str, Any]:
    """The order as the CRM stores it, its total worked out, from a placed order."""
    channel = _text(body, "channel")
    if channel not in CHANNELS:
        raise Invalid(f"channel must be one of {', '.join(CHANNELS)}, not {channel!r}")
    currency = _text(body, "currency")
    # Any three capitals: the CRM does not know which currencies the payment gateway settles.
    if len(currency) != 3 or not currency.isascii() or not currency.isupper():
        raise Invalid("currency must be an ISO 4217 code such as EUR")
    lines = body.get("lines")
    if not isinstance(lines, list) or not lines:
        raise Invalid("lines must be a list of at least one line")
    read = [_line(line, f"lines[{n}]") for n, line in enumerate(lines)]
    total = sum((line["quantity"] * Decimal(line["unit_price"]) for line in read), Decimal(0))
    return {
        "id": _text(body, "id"),
        "customer_id": _text(body, "customer_id"),
        "channel": channel,
        "currency": currency,
        "lines": read,
        "shipping_address": _address(body.get("shipping_address"), "shipping_address"),
        "total": str(total.quantize(CENTS)),
    }


def _line(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Invalid(f"{where} must be an object")
    quantity = value.get("quantity")
    if not isinstance(quantity, int) or isinstance(quantity, bool) or quantity < 1:
        raise Invalid(f"{where}.quantity must be a whole number of at least 1")
    price = _text(value, "unit_price", where)
    try:
        amount = Decimal(price)
    except InvalidOperation:
        raise Invalid(f"{where}.unit_price must be a decimal such as 12.50") from None
    if not amount.is_finite() or amount < 0 or amount != amount.quantize(CENTS):
        raise Invalid(f"{where}.unit_price must be at least 0, with at most 2 decimals")
    description = value.get("description")
    if description is not None and not isinstance(description, str):
        raise Invalid(f"{where}.description must be text")
    return {
        "sku": _text(value, "sku", where),
        "description": description,
        "quantity": quantity,
        "unit_price": str(amount.quantize(CENTS)),
    }


def _address(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise Invalid(f"{where} must be an object with {', '.join(ADDRESS_FIELDS)}")
    return {name: _text(value, name, where) for name in ADDRESS_FIELDS}


def _text(body: dict[str, Any], name: str, where: str = "") -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise Invalid(f"{where + '.' if where else ''}{name} is required (non-empty text)")
    return value


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise Invalid("the body is not JSON") from None
    if not isinstance(body, dict):
        raise Invalid("the body must be a JSON object")
    return body


def _not_found(what: str) -> web.Response:
    return web.json_response({"error": f"no such {what}"}, status=404)


def _refused(invalid: Invalid) -> web.Response:
    return web.json_response({"error": "invalid_request", "message": str(invalid)}, status=400)


def _answer(outcome: Outcome) -> web.Response:
    return web.json_response(
        {"status": outcome.status, "event_id": outcome.event_id, "problem": outcome.problem}
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
