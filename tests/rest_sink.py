"""A real aiohttp server playing an external REST system, with faults injected on request.

It records every call, serves OAuth2 client-credentials tokens that expire, and fails calls
for a customer id as its prefix says:
- `fail500-`: the first two calls answer 500, then 200;
- `r429-`: the first call answers 429 with `Retry-After: 1`;
- `bad-`: always 400 with a JSON error body;
- `slow-`: the first call takes 6 s (longer than the delivery's 5 s timeout);
- `reset-`: the first call has its connection dropped without an answer;
- `revoked-`: the first call answers 401 as if the token had been revoked.
A PUT of a new customer answers 201, of a known one 200, with the account id in the body.
"""

import asyncio
import base64
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

CLIENT_ID = "bus"
CLIENT_SECRET = "billing-client-secret-6a1f"


@dataclass
class Call:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    at: float


@dataclass
class RestSink:
    token_lifetime: int = 2
    calls: list[Call] = field(default_factory=list)
    token_requests: int = 0
    tokens: dict[str, float] = field(default_factory=dict)  # token -> expiry
    attempts: Counter[str] = field(default_factory=Counter)
    first_attempt: dict[str, float] = field(default_factory=dict)  # customer -> when
    accounts: dict[str, str] = field(default_factory=dict)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/oauth/token", self.token)
        app.router.add_route("*", "/customers/{id}", self.customer)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def delivered(self, customer: str) -> list[Call]:
        """The calls for `customer` that succeeded."""
        return [call for call in self.calls if call.path == f"/customers/{customer}"]

    async def token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        expected = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        if request.headers.get("Authorization") != f"Basic {expected}":
            return web.json_response({"error": "invalid_client"}, status=401)
        form = await request.post()
        if form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        token = secrets.token_urlsafe(16)
        self.tokens[token] = time.monotonic() + self.token_lifetime
        return web.json_response(
            {"access_token": token, "token_type": "Bearer", "expires_in": self.token_lifetime}
        )

    async def customer(self, request: web.Request) -> web.StreamResponse:  # noqa: PLR0911 -- one fault per branch
        customer = request.match_info["id"]
        self.attempts[customer] += 1
        self.first_attempt.setdefault(customer, time.monotonic())
        attempt = self.attempts[customer]
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if self.tokens.get(token, 0) < time.monotonic():
            return web.json_response({"error": "invalid_token"}, status=401)
        if customer.startswith("revoked-") and attempt == 1:
            self.tokens.pop(token)
            return web.json_response({"error": "invalid_token"}, status=401)
        if customer.startswith("fail500-") and attempt <= 2:
            return web.Response(status=500, text="database is down")
        if customer.startswith("r429-") and attempt == 1:
            return web.json_response(
                {"error": "slow down"}, status=429, headers={"Retry-After": "1"}
            )
        if customer.startswith("bad-"):
            return web.json_response({"error": "invalid email", "field": "email"}, status=400)
        if customer.startswith("slow-") and attempt == 1:
            await asyncio.sleep(6)
        if customer.startswith("reset-") and attempt == 1:
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=500)
        body = await request.json()
        self.calls.append(
            Call(request.method, request.path, dict(request.headers), body, time.monotonic())
        )
        created = customer not in self.accounts
        account = self.accounts.setdefault(customer, f"acct-{len(self.accounts) + 1}")
        return web.json_response(
            {"account": account, "updated_at": "2026-11-24T12:00:00Z"},
            status=201 if created else 200,
        )
