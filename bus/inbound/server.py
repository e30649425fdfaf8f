"""The one HTTP server of a `bus run` process: every adapter's routes, problem+json errors."""

import logging
from collections.abc import Sequence

from aiohttp import web

from bus.http.problem import problem_middleware

log = logging.getLogger(__name__)
# Requests under way may finish this long (their events are being stored): more than the
# ingest deadline plus a schema registry round trip, so that none is cut off mid-store.
SHUTDOWN_S = 25.0


class InboundServer:
    def __init__(self, host: str, port: int, routes: Sequence[web.RouteDef]) -> None:
        self.host = host
        self.port = port
        # Handlers read bodies themselves, each against its endpoint's own limit.
        app = web.Application(middlewares=[problem_middleware], client_max_size=0)
        app.add_routes(routes)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_S)

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            self.port = self._runner.addresses[0][1]
        log.info("inbound HTTP server listening on http://%s:%d", self.host, self.port)

    async def stop(self) -> None:
        """Stop accepting; let requests under way finish; then close."""
        await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"
