"""WS-Security UsernameToken, checked the way an ERP's SOAP stack (WSS4J, WCF) checks it.

The password comes as text or, as the bus sends it, as a digest:
Base64(SHA-1(nonce + created + password)) (Username Token Profile 1.1). A digest proves the
password without sending it, and the nonce and creation time make each token single-use: a
token older than the tolerance, or whose nonce was seen before, is refused, so a captured
request cannot be replayed.

Every refusal answers the same "authentication failed", as it should (a caller learns nothing
about which part was wrong); the log says which.
"""

import base64
import hashlib
import hmac
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from demo.systems.soap import WSSE, SoapFault

WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
_PROFILE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0"
PASSWORD_TEXT = _PROFILE + "#PasswordText"
PASSWORD_DIGEST = _PROFILE + "#PasswordDigest"

log = logging.getLogger(__name__)


class UsernameTokenPolicy:
    """Who may call (user -> password), and the check of each request's wsse:Security."""

    def __init__(
        self,
        users: Mapping[str, str],
        *,
        tolerance: timedelta = timedelta(minutes=5),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._users = dict(users)
        self._tolerance = tolerance
        self._clock = clock
        # Nonces seen within twice the tolerance: older tokens are refused for their age anyway.
        self._seen: set[bytes] = set()
        self._seen_order: deque[tuple[float, bytes]] = deque()

    def verify(self, security: Any) -> str:
        """The authenticated user; a Client SoapFault "authentication failed" otherwise."""
        try:
            return self._verify(security)
        except _Refused as refused:
            log.info("WS-Security refused: %s", refused)
            raise SoapFault("Client", "authentication failed") from None

    def _verify(self, security: Any) -> str:
        if security is None:
            raise _Refused("no wsse:Security header")
        self._check_timestamp(security)
        token = security.find(f"{{{WSSE}}}UsernameToken")
        if token is None:
            raise _Refused("no UsernameToken")
        user = token.findtext(f"{{{WSSE}}}Username") or ""
        password = token.find(f"{{{WSSE}}}Password")
        if password is None or user not in self._users:
            raise _Refused(f"unknown user {user!r} or no password")
        secret = self._users[user].encode()
        given = (password.text or "").strip()
        if password.get("Type", PASSWORD_TEXT) == PASSWORD_DIGEST:
            nonce = _base64(token.findtext(f"{{{WSSE}}}Nonce") or "")
            created = token.findtext(f"{{{WSU}}}Created") or ""
            if not nonce or not created:
                raise _Refused("a password digest needs a Nonce and a Created time")
            self._check_fresh(created)
            digest = hashlib.sha1(nonce + created.encode() + secret).digest()  # noqa: S324 -- the profile's algorithm
            if not hmac.compare_digest(base64.b64encode(digest), given.encode()):
                raise _Refused(f"wrong password digest for {user!r}")
            self._remember(nonce)
        elif not hmac.compare_digest(secret, given.encode()):
            raise _Refused(f"wrong password for {user!r}")
        return user

    def _check_timestamp(self, security: Any) -> None:
        expires = security.findtext(f"{{{WSU}}}Timestamp/{{{WSU}}}Expires")
        if expires and _instant(expires).timestamp() <= self._clock():
            raise _Refused("the message has expired (wsu:Timestamp)")

    def _check_fresh(self, created: str) -> None:
        age = self._clock() - _instant(created).timestamp()
        if abs(age) > self._tolerance.total_seconds():
            raise _Refused(f"the token was created {age:.0f} s ago, beyond the tolerance")

    def _remember(self, nonce: bytes) -> None:
        now = self._clock()
        horizon = now - 2 * self._tolerance.total_seconds()
        while self._seen_order and self._seen_order[0][0] < horizon:
            self._seen.discard(self._seen_order.popleft()[1])
        if nonce in self._seen:
            raise _Refused("the nonce was used before (a replayed token)")
        self._seen.add(nonce)
        self._seen_order.append((now, nonce))


class _Refused(Exception):  # noqa: N818 -- internal: why a token was refused, for the log
    pass


def _base64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise _Refused("the Nonce is not Base64") from None


def _instant(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise _Refused(f"not a time: {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
