"""Who may call the admin API: the same authentication settings and checks as a REST inbound
endpoint (bus.auth.settings), applied to every route, /healthz and /metrics included; without
them, only callers on this machine (bus.admin.auth_settings).
"""

import math

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from bus.admin.auth_settings import auth_problems
from bus.admin.problems import RETRY_AFTER_S
from bus.auth.settings import InboundAuth, RequestAuthenticator, inbound_authenticator
from bus.errors import ConfigError
from bus.flows.model import AdminSettings, format_path
from bus.http.authentication import authenticate
from bus.http.problem import Problem
from bus.inbound.body import read_body

MAX_BODY = 64 * 1024  # no admin route takes a body; an HMAC scheme still signs what comes


def admin_authenticator(
    settings: AdminSettings, session: aiohttp.ClientSession
) -> RequestAuthenticator | None:
    """The authenticator `settings.auth` describes; None (anyone may call) only on loopback.
    ConfigError, naming each key and the fix, for settings that auth_problems finds wrong."""
    problems = auth_problems(settings)
    if problems:
        listed = "; ".join(
            f"{format_path(('observability', 'admin', *path))}: {message}"
            for path, message in problems
        )
        raise ConfigError(f"{listed} (the same settings as a rest inbound item's auth)")
    if settings.auth is None:
        return None
    return inbound_authenticator(InboundAuth.model_validate(settings.auth), session)


def require_authentication(authenticator: RequestAuthenticator) -> Middleware:
    """A middleware refusing every request that `authenticator` does not accept."""

    @web.middleware
    async def authenticated(request: web.Request, handler: Handler) -> web.StreamResponse:
        raw = await read_body(request, MAX_BODY)
        await authenticate(authenticator, request, raw, who="admin API", unavailable=_unavailable)
        return await handler(request)

    return authenticated


def _unavailable(detail: str, retry_after: float | None) -> Problem:
    wait = RETRY_AFTER_S if retry_after is None else max(1, math.ceil(retry_after))
    return Problem(
        503,
        "unavailable",
        "Service unavailable",
        f"{detail}; the admin API checks every call",
        headers={"Retry-After": str(wait)},
    )
