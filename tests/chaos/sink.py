"""`ChaosSink`: a real aiohttp server playing the outbound REST system of the chaos runs.

It serves `PUT /customers/{id}` and honours the `Idempotency-Key` header the bus sends (the
delivered event's id): the first call with a key is applied, a repeat is answered 200 as the
first was but not applied again. So `unique` is what a receiver that honours the key holds,
and `duplicates` is how often the bus called again for something already applied.

Faults are switched at run time: `unavailable(True)` answers 503; `go_down()` stops listening
(connections are refused, calls under way are cut) until `come_back()` listens again on the same
port; `delay` holds every answer that long. `in_flight` / `max_in_flight` count the requests
being handled at once, so a test can check the bus's concurrency bound.
"""

import asyncio
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from aiohttp import web

IDEMPOTENCY_HEADER = "Idempotency-Key"


@dataclass(frozen=True, slots=True)
class Call:
    """One call the sink answered 2xx: applied, or a repeat of an applied key."""

    customer: str  # the {id} of the path: the event's partition key
    idempotency_key: str  # the delivered event's id
    body: Any
    at: float  # time.monotonic() when it was answered
    applied: bool  # the first call with its idempotency key
    started: float = 0.0  # time.monotonic() when the request came in


@dataclass
class ChaosSink:
    """Usage::

    async with ChaosSink() as sink:
        ...  # sink.url is the base URL: PUT {sink.url}/customers/{id}
    """

    delay: float = 0.0  # seconds every answer waits (a slow system)
    calls: list[Call] = field(default_factory=list)
    unique: dict[str, Call] = field(default_factory=dict)  # idempotency key -> applied call
    refused: int = 0  # calls answered 503 while unavailable
    in_flight: int = 0
    max_in_flight: int = 0
    url: str = ""
    _port: int = 0
    _unavailable: bool = False
    _runner: web.AppRunner | None = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Listen on a free port (the first time) or on the port it had (after `go_down`)."""
        app = web.Application()
        app.router.add_put("/customers/{id}", self._customer)
        # A short shutdown timeout: going down cuts the calls under way, as a crash would.
        runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self._port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{self._port}"

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    # -- faults ----------------------------------------------------------------------------

    def unavailable(self, on: bool) -> None:
        """While on, every call is answered 503 (with Retry-After: 1) and nothing is applied."""
        self._unavailable = on

    async def go_down(self) -> None:
        """Stop listening: new connections are refused, open ones and calls under way cut."""
        await self.stop()

    async def come_back(self) -> None:
        """Listen again on the same port (retried briefly: the port may linger a moment)."""
        for attempt in range(50):
            try:
                await self.start()
                return
            except OSError:
                if attempt == 49:
                    raise
                await asyncio.sleep(0.1)

    @property
    def is_up(self) -> bool:
        return self._runner is not None

    # -- what it saw -----------------------------------------------------------------------

    @property
    def duplicates(self) -> int:
        """Calls beyond the first per idempotency key (answered, not applied again)."""
        return len(self.calls) - len(self.unique)

    def order_per_key(self) -> dict[str, list[Call]]:
        """Per customer (partition key), the applied calls in the order they were applied."""
        order: dict[str, list[Call]] = {}
        for call in self.calls:
            if call.applied:
                order.setdefault(call.customer, []).append(call)
        return order

    # -- serving ---------------------------------------------------------------------------

    async def _customer(self, request: web.Request) -> web.Response:
        started = time.monotonic()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            if self._unavailable:
                self.refused += 1
                return web.json_response(
                    {"error": "maintenance"}, status=503, headers={"Retry-After": "1"}
                )
            key = request.headers.get(IDEMPOTENCY_HEADER)
            if not key:
                # The bus always sends one: without it the sink could not tell a repeat.
                return web.json_response({"error": "Idempotency-Key missing"}, status=400)
            body = await request.json()
            customer = request.match_info["id"]
            applied = key not in self.unique
            call = Call(customer, key, body, time.monotonic(), applied, started)
            self.calls.append(call)
            if applied:
                self.unique[key] = call
            return web.json_response({"customer": customer}, status=201 if applied else 200)
        finally:
            self.in_flight -= 1
