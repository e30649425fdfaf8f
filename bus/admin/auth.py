"""Who may call the admin API: the same authentication settings and checks as a REST inbound
endpoint (bus.auth.settings), applied to every route, /healthz and /metrics included.

An admin API without auth is only allowed on a loopback address: it lists the flows, shows dead
letters (event data) and replays them, so anyone who can reach it must be someone we trust.
"""

import ipaddress
import logging
import math
import time

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from pydantic import ValidationError

from bus.admin.problems import RETRY_AFTER_S
from bus.auth.jwt_bearer import KeySetUnavailableError
from bus.auth.settings import InboundAuth, RequestAuthenticator, inbound_authenticator
from bus.errors import AuthenticationError, AuthorizationError, ConfigError
from bus.flows.loading import settings_problems
from bus.flows.model import AdminSettings
from bus.http.problem import Problem
from bus.inbound.body import read_body

log = logging.getLogger(__name__)
SETTING = "observability.admin.auth"
MAX_BODY = 64 * 1024  # no admin route takes a body; an HMAC scheme still signs what comes
_EXAMPLE = "auth: {api_key: {header: X-Admin-Key, keys: [${BUS_ADMIN_KEY}]}}"


def admin_authenticator(
    settings: AdminSettings, session: aiohttp.ClientSession
) -> RequestAuthenticator | None:
    """The authenticator `settings.auth` describes; None (anyone may call) only on loopback."""
    if settings.auth is None:
        if not is_loopback(settings.host):
            raise ConfigError(
                f"{SETTING}: the admin API would listen on {settings.host}, which is not a "
                "loopback address, without authentication, so anyone on the network could "
                f"read dead letters and replay them; set {SETTING} (e.g. {_EXAMPLE}), or "
                "host: 127.0.0.1"
            )
        return None
    try:
        config = InboundAuth.model_validate(settings.auth)
    except ValidationError as invalid:
        problems = "; ".join(
            f"{'.'.join(map(str, (SETTING, *path)))}: {message}"
            for path, message in settings_problems(invalid, settings.auth)
        )
        raise ConfigError(f"{problems} (the same settings as a rest inbound item's auth)") from None
    return inbound_authenticator(config, session)


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # another name: it may resolve to anything
        return False


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
