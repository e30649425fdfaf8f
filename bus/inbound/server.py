"""The one HTTP server of a `bus run` process: every adapter's routes, problem+json errors.

Every request is measured (`Telemetry.inbound_request`, by the route it matched, never by its
raw path, and by its method, any outside HTTP's standard ones as `_OTHER`, as the OTel HTTP
semantic conventions say: a caller must not be able to make a label value per request) and,
when tracing is on, is a SERVER span continuing the caller's `traceparent`, current while the
handler runs, so that the event it stores is a child of it. A failing metric never changes the
answer: the sample is guarded.
"""

import logging
import time
from collections.abc import Sequence

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler, Middleware
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from bus.errors import ConfigError
from bus.http.problem import problem_middleware
from bus.processes import why_not_listening
from bus.telemetry.hub import Telemetry
from bus.telemetry.tracing import TRACE_HEADERS, extract

log = logging.getLogger(__name__)
# Requests under way may finish this long (their events are being stored): more than the
# ingest deadline plus a schema registry round trip, so that none is cut off mid-store.
SHUTDOWN_S = 25.0
UNMATCHED = "unmatched"  # the route of a request that matched none (a 404), as metrics say it
SERVER_ERROR = 500
KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)
OTHER_METHOD = "_OTHER"


class InboundServer:
    def __init__(
        self,
        host: str,
        port: int,
        routes: Sequence[web.RouteDef],
        *,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.host = host
        self.port = port
        observed = _observed(telemetry or Telemetry.disabled())
        # Handlers read bodies themselves, each against its endpoint's own limit. The telemetry
        # middleware is outermost: it sees the status problem_middleware answered with.
        app = web.Application(middlewares=[observed, problem_middleware], client_max_size=0)
        app.add_routes(routes)
        self._runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=SHUTDOWN_S, logger=_server_log
        )

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError as error:
            await self._runner.cleanup()
            why = why_not_listening(error)
            raise ConfigError(
                f"http: cannot listen on {self.host}:{self.port} ({why}); stop what uses the "
                "port, or set http.port in the flow files (0 for any free one)"
            ) from error
        if self.port == 0:
            self.port = self._runner.addresses[0][1]
        log.info("inbound HTTP server listening on http://%s:%d", self.host, self.port)

    async def stop(self) -> None:
        """Stop accepting; let requests under way finish; then close."""
        await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class _RefusedRequests(logging.Filter):
    """aiohttp logs each request its HTTP parser refuses (a CR or NUL in a header, a duplicate
    Content-Length, a header over 8190 bytes) at ERROR with a traceback, and answers it with a
    plain 400 itself: any caller could fill the log with tracebacks. It is the caller's
    mistake, so it becomes one line at INFO."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError) and 400 <= error.code < 500:
            why = (error.message or type(error).__name__).strip().splitlines()[0]
            record.msg = "refused a malformed HTTP request from %s (%d): %s"
            record.args = (
                *(record.args if isinstance(record.args, tuple) else ()),
                error.code,
                why,
            )
            record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
            record.exc_info, record.exc_text = None, None
        return True


_server_log = logging.getLogger(f"{__name__}.http")
_server_log.addFilter(_RefusedRequests())


def _known_method(method: str) -> str:
    """`method` if it is one of HTTP's standard methods, else `_OTHER`."""
    return method if method in KNOWN_METHODS else OTHER_METHOD


def _observed(telemetry: Telemetry) -> Middleware:
    tracing = telemetry.tracing

    @web.middleware
    async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else UNMATCHED
        method = _known_method(request.method)
        span = _server_span(telemetry, request, method, route) if tracing.enabled else None
        token = None if span is None else otel_context.attach(trace.set_span_in_context(span))
        status = SERVER_ERROR  # unless an answer says otherwise
        try:
            response: web.StreamResponse = await handler(request)
            status = response.status
            return response
        except web.HTTPException as answer:  # aiohttp's own answers, raised
            status = answer.status
            raise
        finally:
            telemetry.inbound_request(route, method, status, time.perf_counter() - started)
            if span is not None and token is not None:
                otel_context.detach(token)
                _end_server_span(span, status)

    return observe


def _server_span(telemetry: Telemetry, request: web.Request, method: str, route: str) -> Span:
    carrier = {name: request.headers[name] for name in TRACE_HEADERS if name in request.headers}
    host, _, port = request.host.partition(":")
    attributes = {
        "http.request.method": method,
        "http.route": route,
        "url.path": request.path,
        "url.scheme": request.scheme,
        "server.address": host,
        "network.protocol.version": f"{request.version.major}.{request.version.minor}",
    }
    if method == OTHER_METHOD:
        attributes["http.request.method_original"] = request.method
    span = telemetry.tracing.start_span(
        # The conventions name a span of an unknown method "HTTP <route>".
        f"{'HTTP' if method == OTHER_METHOD else method} {route}",
        SpanKind.SERVER,
        parent=extract(carrier),
        attributes=attributes,
    )
    if port.isdigit():
        span.set_attribute("server.port", int(port))
    return span


def _end_server_span(span: Span, status: int) -> None:
    span.set_attribute("http.response.status_code", status)
    if status >= SERVER_ERROR:  # a 4xx is the caller's error, not the server's (semconv)
        span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))
        span.set_attribute("error.type", str(status))
    span.end()
