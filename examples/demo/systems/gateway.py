"""The demo payment gateway: a REST API behind OAuth2, with idempotency keys and bad days.

- `POST /oauth/token`: OAuth2 client credentials (RFC 6749 §4.4; the client authenticates with
  HTTP Basic). Tokens live 5 minutes.
- `POST /v1/payments` (bearer token, `Idempotency-Key` required): charge a customer for an order.
  The decision is deterministic: above 900.00 the card is declined ("insufficient_funds"); an
  unknown currency is refused with 422. The same key again returns the stored answer with
  `Idempotent-Replayed: true` and charges nothing, as Stripe does: that is what makes a client's
  retries safe.
- With fault injection on, before any work: about 4% of payment calls answer 503, 3% answer
  429 with `Retry-After: 1`, and 3% take 1.5 s. `POST /_demo/outage?seconds=N` makes every
  payment call answer 503 for N seconds, to watch the bus's circuit breaker open and its
  delivery pause instead of dead-lettering payments.
"""

import asyncio
import hmac
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import aiohttp
from aiohttp import web

from demo.systems.config import IDEMPOTENCY_KEY
from demo.systems.faults import FaultInjector
from demo.systems.ledger import demo_routes

CURRENCIES = frozenset({"EUR", "USD", "GBP", "JPY", "AUD", "SGD", "INR", "CAD", "MXN"})
METHODS = frozenset({"CARD", "SEPA_DEBIT", "INVOICE"})
DECLINE_ABOVE = Decimal("900.00")
TOKEN_LIFETIME_S = 300
FAULT_CHANCES = {"503": 0.04, "429": 0.03, "slow": 0.03}
SLOW_S = 1.5


class Refusal(Exception):  # noqa: N818 -- an answer to the client, not a bug of ours
    """A payment request the gateway cannot read: its status and JSON error."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.response = web.json_response({"error": error, "message": message}, status=status)


@dataclass
class Payment:
    id: str
    order_id: str
    idempotency_key: str
    request: tuple[str, str, str]
    """(order id, amount, currency): a key may only be used again for the same request."""
    answer: dict[str, Any]
    calls: int = 1
    replays: int = 0


class Gateway:
    """The gateway's state and its aiohttp application (`app()`)."""

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        faults: FaultInjector,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = (client_id, client_secret)
        self.faults = faults
        self._clock = clock
        self._tokens: dict[str, float] = {}  # token -> when it expires
        self._by_key: dict[str, Payment] = {}
        self._by_order: dict[str, list[Payment]] = {}
        self._rejected: dict[str, dict[str, Any]] = {}
        self._outage_until = 0.0
        self.injected: Counter[str] = Counter({"503": 0, "429": 0, "slow": 0, "outage": 0})
        self.tokens_issued = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes(
            [
                web.post("/oauth/token", self.token),
                web.post("/v1/payments", self.create_payment),
                web.post("/_demo/outage", self.outage),
                *demo_routes(self.ledger),
            ]
        )
        return app

    def ledger(self) -> dict[str, Any]:
        payments = {}
        for order, charges in self._by_order.items():
            first = charges[0]
            payments[order] = {
                "id": first.id,
                "status": first.answer["status"],
                "idempotency_key": first.idempotency_key,
                "calls": sum(payment.calls for payment in charges),
                "replays": sum(payment.replays for payment in charges),
                # More than one charge for an order means the client sent it under two keys.
                "charges": len(charges),
            }
        return {
            "payments": payments,
            "rejected": {order: dict(entry) for order, entry in self._rejected.items()},
            "injected": dict(self.injected),
            "tokens_issued": self.tokens_issued,
        }

    # -- OAuth2 ----------------------------------------------------------------------------

    async def token(self, request: web.Request) -> web.Response:
        try:
            client = aiohttp.BasicAuth.decode(request.headers.get("Authorization", ""))
        except ValueError:
            client = None
        if client is None or not (
            hmac.compare_digest(client.login.encode(), self._client[0].encode())
            and hmac.compare_digest(client.password.encode(), self._client[1].encode())
        ):
            return web.json_response(
                {"error": "invalid_client"},
                status=401,
                headers={"WWW-Authenticate": 'Basic realm="gateway"'},
            )
        form = await request.post()
        if form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        token = secrets.token_urlsafe(24)
        self._tokens[token] = self._clock() + TOKEN_LIFETIME_S
        self.tokens_issued += 1
        return web.json_response(
            {"access_token": token, "token_type": "Bearer", "expires_in": TOKEN_LIFETIME_S}
        )

    def _authorize(self, request: web.Request) -> None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        expiry = self._tokens.get(token) if scheme.lower() == "bearer" else None
        if expiry is None or expiry <= self._clock():
            self._tokens.pop(token, None)
            raise web.HTTPUnauthorized(
                text='{"error": "invalid_token"}',
                content_type="application/json",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )

    # -- payments --------------------------------------------------------------------------

    async def create_payment(self, request: web.Request) -> web.Response:
        trouble = await self._bad_day()
        if trouble is not None:
            return trouble
        self._authorize(request)
        key = request.headers.get(IDEMPOTENCY_KEY, "")
        if not key:
            return web.json_response(
                {"error": "missing_idempotency_key", "message": f"send an {IDEMPOTENCY_KEY}"},
                status=400,
            )
        try:
            order, amount, currency, method, customer = await _read_payment(request)
        except Refusal as refusal:
            return refusal.response
        known = self._by_key.get(key)
        if known is not None:
            return self._replay(known, (order, f"{amount:.2f}", currency))
        if currency not in CURRENCIES:
            rejected = self._rejected.setdefault(order, {"error": "invalid_currency", "calls": 0})
            rejected["calls"] += 1
            return web.json_response(
                {
                    "error": "invalid_currency",
                    "message": f"currency {currency} is not one we settle in; we settle in "
                    + ", ".join(sorted(CURRENCIES)),
                },
                status=422,
            )
        declined = amount > DECLINE_ABOVE
        amount_text = f"{amount:.2f}"
        payment_id = f"pay_{secrets.token_hex(8)}"
        answer = {
            "id": payment_id,
            "order_id": order,
            "customer_id": customer,
            "method": method,
            "status": "declined" if declined else "captured",
            "amount": amount_text,
            "currency": currency,
            "reference": None if declined else f"gw_{secrets.token_hex(8)}",
            "decline_reason": "insufficient_funds" if declined else None,
            "created_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        }
        payment = Payment(payment_id, order, key, (order, amount_text, currency), answer)
        self._by_key[key] = payment
        self._by_order.setdefault(order, []).append(payment)
        return web.json_response(answer, status=201)

    def _replay(self, payment: Payment, request: tuple[str, str, str]) -> web.Response:
        if payment.request != request:
            return web.json_response(
                {
                    "error": "idempotency_key_reused",
                    "message": f"this {IDEMPOTENCY_KEY} was used for another payment request",
                },
                status=409,
            )
        payment.calls += 1
        payment.replays += 1
        return web.json_response(
            payment.answer, status=201, headers={"Idempotent-Replayed": "true"}
        )

    async def _bad_day(self) -> web.Response | None:
        """An outage's or an injected fault's answer, before any work; None: a good call."""
        if self._clock() < self._outage_until:
            self.injected["outage"] += 1
            return web.json_response(
                {"error": "unavailable", "message": "the gateway is down for maintenance"},
                status=503,
            )
        kind = self.faults.pick(FAULT_CHANCES)
        if kind is None:
            return None
        self.injected[kind] += 1
        if kind == "503":
            return web.json_response(
                {"error": "unavailable", "message": "try again shortly"}, status=503
            )
        if kind == "429":
            return web.json_response(
                {"error": "rate_limited", "message": "slow down"},
                status=429,
                headers={"Retry-After": "1"},
            )
        await asyncio.sleep(SLOW_S)  # slow, then served as usual
        return None

    async def outage(self, request: web.Request) -> web.Response:
        try:
            seconds = float(request.query.get("seconds", "30"))
        except ValueError:
            return web.json_response({"error": "seconds must be a number"}, status=400)
        self._outage_until = self._clock() + max(seconds, 0.0)
        return web.json_response({"outage_seconds": max(seconds, 0.0)})


async def _read_payment(request: web.Request) -> tuple[str, Decimal, str, str, str]:
    """(order id, amount, currency, method, customer id) of a payment request, or a Refusal."""
    try:
        body = await request.json()
    except ValueError:
        raise Refusal(400, "invalid_request", "the body is not JSON") from None
    if not isinstance(body, dict):
        raise Refusal(400, "invalid_request", "the body must be a JSON object")
    for name in ("order_id", "customer_id", "amount", "currency", "method"):
        if not isinstance(body.get(name), str) or not body[name]:
            raise Refusal(400, "invalid_request", f"{name} is required (text)")
    try:
        amount = Decimal(body["amount"])
    except InvalidOperation:
        raise Refusal(400, "invalid_request", "amount must be a decimal, e.g. 12.50") from None
    if not amount.is_finite() or amount <= 0 or amount != amount.quantize(Decimal("0.01")):
        raise Refusal(422, "invalid_amount", "amount must be above 0, with at most 2 decimals")
    if body["method"] not in METHODS:
        raise Refusal(400, "invalid_request", f"method must be one of {', '.join(sorted(METHODS))}")
    return body["order_id"], amount, body["currency"], body["method"], body["customer_id"]
