"""The admin API's server: a port and an authentication of its own, problem+json for every error.

Routes (JSON unless said otherwise):
- GET /healthz: 200 while the process is alive, with its uptime.
- GET /readyz: 200 or 503, with each check and why (see bus.admin.readiness).
- GET /metrics: Prometheus text.
- GET /flows, GET /flows/{name}: each item's state, since when, counters, lag, breaker,
  in-flight records and last error.
- GET /journeys/{event_id}[?since=ISO-TIME]: the journey the event belongs to (with `since`,
  only its hops recorded from then on).
- GET /dlq: each item with a dead-letter topic, with how many letters it holds and how many no
  replay-all sent back yet; counted from offsets, so `approximate` (see count_letters).
- GET /dlq/{flow}[?limit=N]: its first N letters and why each is there, and their total
  (approximate, as above).
- GET /dlq/{flow}/{partition}/{offset}: one letter: reason, headers as text, key and value in
  base64.
- POST /dlq/{flow}/{partition}/{offset}/replay: send that letter back.
- POST /dlq/{flow}/replay: send back every letter no replay-all sent yet, then mark them.

The /journeys and /dlq routes read Kafka one at a time (bus.admin.reads): a second caller waits
a few seconds for the first, then gets 503 with Retry-After.
"""

import logging
from collections.abc import Mapping

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from bus.admin.auth import admin_authenticator, require_authentication
from bus.admin.dlq_routes import DlqRoutes, Replay
from bus.admin.readiness import Readiness
from bus.admin.reads import READ_WAIT_S, OneReadAtATime
from bus.admin.routes import Exposition, JourneyReader, StatusRoutes
from bus.errors import BusError, ConfigError
from bus.flows.model import AdminSettings
from bus.http.problem import Problem, problem_middleware
from bus.processes import why_not_listening
from bus.telemetry.status import StatusBoard

log = logging.getLogger(__name__)
# An admin call under way at stop (a journey scan, a replay-all) may go on this long, and its
# cancelled handler as long again (aiohttp waits twice): it must not hold up the shutdown of
# the `bus run` process it observes, as aiohttp's default of 60 s would.
SHUTDOWN_S = 2.0


class AdminServer:
    """Usage: `await server.start()`, call `server.url`, `await server.stop()`.

    Refuses (ConfigError) an `auth` that is invalid, and no `auth` on a non-loopback host.
    """

    def __init__(
        self,
        settings: AdminSettings,
        *,
        board: StatusBoard,
        metrics: Exposition,
        bootstrap_servers: str,
        journeys: JourneyReader,
        dead_letter_topics: Mapping[str, str],
        replay: Replay,
        session: aiohttp.ClientSession,
        read_wait: float = READ_WAIT_S,
    ) -> None:
        """`read_wait`: how long a /journeys or /dlq call waits for the one under way."""
        self.settings = settings
        authenticator = admin_authenticator(settings, session)
        self._readiness = Readiness(board, bootstrap_servers)
        middlewares: list[Middleware] = [problem_middleware, _no_such_route]
        if authenticator is not None:
            # Inside problem_middleware (its refusals are problems) and before routing's 404,
            # so that an anonymous caller learns nothing, not even which paths exist.
            middlewares.insert(1, require_authentication(authenticator))
        self._app = web.Application(middlewares=middlewares)
        reads = OneReadAtATime(read_wait)
        self._app.add_routes(
            StatusRoutes(board, self._readiness, metrics, journeys, reads).routes()
        )
        self._app.add_routes(
            DlqRoutes(bootstrap_servers, dead_letter_topics, replay, reads).routes()
        )
        self._runner: web.AppRunner | None = None
        self._url: str | None = None

    def routes(self) -> list[tuple[str, str]]:
        """(method, path template) of every route served, e.g. ("GET", "/dlq/{flow}"): what a
        test must find refusing anonymous callers (aiohttp's implicit HEADs are left out)."""
        return [
            (route.method, route.resource.canonical)
            for route in self._app.router.routes()
            if route.resource is not None and route.method != "HEAD"
        ]

    @property
    def url(self) -> str:
        """Where it listens, e.g. http://127.0.0.1:9180 (the real port when 0 was asked for)."""
        if self._url is None:
            raise BusError("the admin API is not started; call start() first")
        return self._url

    async def start(self) -> None:
        # No access log: probes come every few seconds, and their lines would drown the rest.
        runner = web.AppRunner(self._app, access_log=None, shutdown_timeout=SHUTDOWN_S)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.host, self.settings.port)
        try:
            await site.start()
        except OSError as error:
            await runner.cleanup()
            why = why_not_listening(error)
            raise ConfigError(
                f"observability.admin: cannot listen on {self.settings.host}:"
                f"{self.settings.port} ({why}); choose another port, or 0 for any free one"
            ) from error
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self._url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        log.info("admin API listening on %s", self._url)

    async def stop(self) -> None:
        await self._readiness.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self._url = None


@web.middleware
async def _no_such_route(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's 404 as a problem that points at this API's routes (not the inbound server's)."""
    try:
        return await handler(request)
    except web.HTTPNotFound:
        raise _not_found(request.path) from None


def _not_found(path: str) -> Problem:
    return Problem(
        404,
        "not-found",
        "No such endpoint",
        f"nothing is served at {path}; the admin API serves /healthz, /readyz, /metrics, "
        "/flows, /journeys/{event_id} and /dlq",
    )
