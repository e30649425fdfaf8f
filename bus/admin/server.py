"""The admin API's server: a port and an authentication of its own, problem+json for every error.

Routes (JSON unless said otherwise):
- GET /healthz: 200 while the process is alive, with its uptime.
- GET /readyz: 200 or 503, with each check and why (see bus.admin.readiness).
- GET /metrics: Prometheus text.
- GET /flows, GET /flows/{name}: each item's state, since when, counters, lag, breaker,
  in-flight records and last error.
- GET /journeys/{event_id}: the journey the event belongs to.
- GET /dlq: each item with a dead-letter topic, with how many letters it holds.
- GET /dlq/{flow}[?limit=N]: its letters and why each is there.
- GET /dlq/{flow}/{partition}/{offset}: one letter: reason, headers as text, key and value in
  base64.
- POST /dlq/{flow}/{partition}/{offset}/replay: send that letter back.
- POST /dlq/{flow}/replay: send back every letter no replay-all sent yet, then mark them.
"""

from collections.abc import Mapping

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from bus.admin.auth import admin_authenticator, require_authentication
from bus.admin.dlq_routes import DlqRoutes, Replay
from bus.admin.readiness import Readiness
from bus.admin.routes import Exposition, JourneyReader, StatusRoutes
from bus.errors import BusError, ConfigError
from bus.flows.model import AdminSettings
from bus.http.problem import Problem, problem_middleware
from bus.telemetry.status import StatusBoard


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
    ) -> None:
        self.settings = settings
        authenticator = admin_authenticator(settings, session)
        self._readiness = Readiness(board, bootstrap_servers)
        middlewares: list[Middleware] = [problem_middleware, _no_such_route]
        if authenticator is not None:
            # Inside problem_middleware (its refusals are problems) and before routing's 404,
            # so that an anonymous caller learns nothing, not even which paths exist.
            middlewares.insert(1, require_authentication(authenticator))
        self._app = web.Application(middlewares=middlewares)
        self._app.add_routes(StatusRoutes(board, self._readiness, metrics, journeys).routes())
        self._app.add_routes(DlqRoutes(bootstrap_servers, dead_letter_topics, replay).routes())
        self._runner: web.AppRunner | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        """Where it listens, e.g. http://127.0.0.1:9180 (the real port when 0 was asked for)."""
        if self._url is None:
            raise BusError("the admin API is not started; call start() first")
        return self._url

    async def start(self) -> None:
        # No access log: probes come every few seconds, and their lines would drown the rest.
        runner = web.AppRunner(self._app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.host, self.settings.port)
        try:
            await site.start()
        except OSError as error:
            await runner.cleanup()
            raise ConfigError(
                f"observability.admin: cannot listen on {self.settings.host}:"
                f"{self.settings.port} ({error.strerror}); choose another port, or 0 for any "
                "free one"
            ) from error
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self._url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

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
