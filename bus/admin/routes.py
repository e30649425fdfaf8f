"""The admin API's views of the process: health, readiness, metrics, items and journeys."""

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from aiohttp import web

from bus.admin.problems import unavailable, unknown
from bus.admin.readiness import Readiness
from bus.errors import BusError
from bus.telemetry.status import StatusBoard

JourneyReader = Callable[[str], Awaitable[dict[str, Any] | None]]
"""An event id -> the journey it belongs to, as JSON, or None when no record names it."""
JOURNEY_WITHIN = 30.0  # seconds to read a journey: the whole journey topic may be scanned


class Exposition(Protocol):
    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text body and its content type."""
        ...


class StatusRoutes:
    def __init__(
        self,
        board: StatusBoard,
        readiness: Readiness,
        metrics: Exposition,
        journeys: JourneyReader,
    ) -> None:
        self.board = board
        self.readiness = readiness
        self.metrics = metrics
        self.journeys = journeys

    def routes(self) -> Sequence[web.RouteDef]:
        return [
            web.get("/healthz", self.healthz),
            web.get("/readyz", self.readyz),
            web.get("/metrics", self.metrics_text),
            web.get("/flows", self.flows),
            web.get("/flows/{name}", self.flow),
            web.get("/journeys/{event_id}", self.journey),
        ]

    async def healthz(self, request: web.Request) -> web.Response:
        now = time.time()
        return web.json_response(
            {"status": "alive", "started": self.board.started, "uptime": now - self.board.started}
        )

    async def readyz(self, request: web.Request) -> web.Response:
        checks = await self.readiness.checks()
        ready = all(check.ok for check in checks.values())
        return web.json_response(
            {"ready": ready, "checks": {name: check.as_dict() for name, check in checks.items()}},
            status=200 if ready else 503,
            headers={"Cache-Control": "no-store"},
        )

    async def metrics_text(self, request: web.Request) -> web.Response:
        body, content_type = self.metrics.exposition()
        # Set as a header: aiohttp's content_type argument refuses one with parameters.
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def flows(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"now": time.time(), "started": self.board.started, "items": self.board.snapshot()}
        )

    async def flow(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        item = self.board.get(name)
        if item is None:
            known = ", ".join(sorted(item.name for item in self.board)) or "none"
            raise unknown("item", f"this process runs no item named {name!r}; its items: {known}")
        return web.json_response(item.snapshot())

    async def journey(self, request: web.Request) -> web.Response:
        event_id = request.match_info["event_id"]
        try:
            async with asyncio.timeout(JOURNEY_WITHIN):
                journey = await self.journeys(event_id)
        except TimeoutError:
            raise unavailable(
                f"the journey topic was not read within {JOURNEY_WITHIN:.0f} s"
            ) from None
        except BusError as error:
            raise unavailable(f"the journey topic cannot be read: {error}") from None
        if journey is None:
            raise unknown(
                "event",
                f"no journey record names event {event_id!r}: it did not pass through a bus "
                "with journeys enabled, its journey was not sampled, or its records are older "
                "than the journey topic's retention",
            )
        return web.json_response(journey)
