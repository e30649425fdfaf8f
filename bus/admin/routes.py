"""The admin API's views of the process: health, readiness, metrics, items and journeys."""

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

from aiohttp import web

from bus.admin.problems import unavailable, unknown
from bus.admin.readiness import Readiness
from bus.admin.reads import OneReadAtATime
from bus.errors import JourneyTopicMissingError, KafkaUnavailableError
from bus.http.problem import Problem
from bus.telemetry.journey_reader import parse_since
from bus.telemetry.status import StatusBoard

JourneyReader = Callable[[str, datetime | None], Awaitable[dict[str, Any] | None]]
"""An event id, and the time to read from (None: the topic's start) -> the journey it belongs
to, as JSON, or None when no record names it."""
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
        reads: OneReadAtATime,
    ) -> None:
        self.board = board
        self.readiness = readiness
        self.metrics = metrics
        self.journeys = journeys
        self.reads = reads

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
        since = _since(request)
        async with self.reads:
            try:
                async with asyncio.timeout(JOURNEY_WITHIN):
                    journey = await self.journeys(event_id, since)
            except TimeoutError:
                raise unavailable(
                    f"the journey topic was not read within {JOURNEY_WITHIN:.0f} s; "
                    "?since=<ISO time> reads only what was written from then on"
                ) from None
            except KafkaUnavailableError as error:
                raise unavailable(f"the journey topic cannot be read: {error}") from None
            except JourneyTopicMissingError as missing:
                raise unknown("journey-topic", str(missing)) from None
        if journey is None:
            after = "" if since is None else f" since {since.isoformat()}"
            raise unknown(
                "event",
                f"no journey record{after} names event {event_id!r}: it did not pass through a "
                "bus with journeys enabled, its journey was not sampled, or its records are "
                "older than the journey topic's retention",
            )
        return web.json_response(journey)


def _since(request: web.Request) -> datetime | None:
    given = request.query.get("since")
    if given is None:
        return None
    try:
        return parse_since(given)
    except ValueError as error:
        raise Problem(
            400,
            "bad-since",
            "Invalid since",
            f"since: {error} (in a URL, write an offset's + as %2B)",
        ) from None
