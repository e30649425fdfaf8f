"""A request's authentication, answered the HTTP way: 401 with the scheme's challenge, 403, or
503 with Retry-After when the keys that verify tokens cannot be fetched. Every server of the bus
that authenticates callers (REST inbound endpoints, the publish API, the admin API) uses it."""

import logging
import time
from collections.abc import Callable

from aiohttp import web

from bus.auth.jwt_bearer import KeySetUnavailableError
from bus.auth.settings import RequestAuthenticator
from bus.errors import AuthenticationError, AuthorizationError
from bus.http.problem import Problem

log = logging.getLogger(__name__)

Unavailable = Callable[[str, float | None], Problem]
"""(why, seconds to wait or None) -> the 503 problem, worded for the server's callers."""


async def authenticate(
    authenticator: RequestAuthenticator,
    request: web.Request,
    raw: bytes,
    *,
    who: str,
    unavailable: Unavailable,
) -> object:
    """What `authenticator` learned of the caller; a Problem when it refuses them. The headers
    are passed as received (case-insensitive, repeated ones kept), so that a header sent twice
    with different values can be refused."""
    try:
        return await authenticator.authenticate(
            request.headers, body=raw, query=dict(request.query), now=time.time()
        )
    except AuthenticationError as refused:
        challenge = {"WWW-Authenticate": refused.challenge} if refused.challenge else {}
        raise Problem(
            401, "unauthenticated", "Authentication failed", refused.reason, headers=challenge
        ) from None
    except AuthorizationError as refused:
        challenge = {"WWW-Authenticate": refused.challenge} if refused.challenge else {}
        raise Problem(403, "forbidden", "Not allowed", refused.reason, headers=challenge) from None
    except KeySetUnavailableError as error:
        log.warning("%s: cannot verify tokens: %s", who, error)
        raise unavailable(
            "the keys that verify tokens cannot be fetched right now", error.retry_after
        ) from None
