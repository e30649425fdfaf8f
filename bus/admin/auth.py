"""Who may call the admin API: the same authentication settings and checks as a REST inbound
endpoint (bus.auth.settings), applied to every route, /healthz and /metrics included; without
them, only callers on this machine (bus.admin.auth_settings).
"""

import logging
import math
import time

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from bus.admin.auth_settings import auth_problems
from bus.admin.problems import RETRY_AFTER_S
from bus.auth.jwt_bearer import KeySetUnavailableError
from bus.auth.settings import InboundAuth, RequestAuthenticator, inbound_authenticator
from bus.errors import AuthenticationError, AuthorizationError, ConfigError
from bus.flows.model import AdminSettings, format_path
from bus.http.problem import Problem
from bus.inbound.body import read_body

log = logging.getLogger(__name__)
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
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        raw = await read_body(request, MAX_BODY)
        try:
            await authenticator.authenticate(
                request.headers, body=raw, query=dict(request.query), now=time.time()
            )
        except AuthenticationError as refused:
            challenge = {"WWW-Authenticate": refused.challenge} if refused.challenge else {}
            raise Problem(
                401, "unauthenticated", "Authentication failed", refused.reason, headers=challenge
            ) from None
        except AuthorizationError as refused:
            raise Problem(403, "forbidden", "Not allowed", refused.reason) from None
        except KeySetUnavailableError as unavailable:
            log.warning("admin API: cannot verify tokens: %s", unavailable)
            after = unavailable.retry_after
            wait = RETRY_AFTER_S if after is None else max(1, math.ceil(after))
            raise Problem(
                503,
                "unavailable",
                "Service unavailable",
                f"{unavailable.reason}; the admin API checks every call",
                headers={"Retry-After": str(wait)},
            ) from None
        return await handler(request)

    return authenticate
