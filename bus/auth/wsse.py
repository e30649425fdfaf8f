"""WS-Security UsernameToken (OASIS Web Services Security Username Token Profile 1.0/1.1).

A SOAP caller proves who it is with a `wsse:Security` header in the envelope::

    <wsse:Security soap:mustUnderstand="1">
      <wsu:Timestamp><wsu:Created>2026-11-24T12:00:00Z</wsu:Created>
                     <wsu:Expires>2026-11-24T12:05:00Z</wsu:Expires></wsu:Timestamp>
      <wsse:UsernameToken>
        <wsse:Username>crm</wsse:Username>
        <wsse:Password Type="...#PasswordDigest">B64(SHA-1(nonce+created+password))</wsse:Password>
        <wsse:Nonce EncodingType="...#Base64Binary">Base64(random bytes)</wsse:Nonce>
        <wsu:Created>2026-11-24T12:00:00Z</wsu:Created>
      </wsse:UsernameToken>
    </wsse:Security>

`UsernameTokenAuth.verify` checks it: the password as text (`#PasswordText`, also when `Type` is
absent) or as a digest (`#PasswordDigest`, which then requires a Nonce and a Created time);
the user name and the password are compared in constant time, against every configured user,
so that the time taken tells neither whether the user exists nor which one matched.

Freshness: every `Created` (of the token, and of a `wsu:Timestamp`) must be within `tolerance`
(default 5 minutes) of our clock, either way; an `Expires` must not have passed (give or take a
minute of clock difference). Replay: a nonce is remembered, per user, for as long as its
message could pass the freshness check (twice the tolerance), so a captured digest sent again is
refused; the memory holds at most `max_nonces` of them and refuses new ones (never forgets
early) when full of unexpired nonces. A nonce is only remembered once the rest has verified,
so callers without the password cannot fill it or block others' nonces.

Pure: it reads the parsed `wsse:Security` element (lxml, or anything with `findall`, `get` and
`text` alike) and the time it is given. Every refusal is an `AuthenticationError` whose reason
is safe to send back: it never holds a password, a digest or a nonce.
"""

import base64
import binascii
import hashlib
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, NoReturn, Protocol

from bus.auth.credentials import SecretLike, same_secret, secrets_from
from bus.errors import AuthenticationError, ConfigError

WSSE_NS = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU_NS = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
_PROFILE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0"
PASSWORD_TEXT = _PROFILE + "#PasswordText"
PASSWORD_DIGEST = _PROFILE + "#PasswordDigest"
BASE64_BINARY = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-soap-message-security-1.0#Base64Binary"
)
SECURITY = f"{{{WSSE_NS}}}Security"

DEFAULT_TOLERANCE_S = 300.0
DEFAULT_MAX_NONCES = 100_000
MAX_NONCE_BYTES = 128
_MAX_SKEW_S = 60.0  # how long after Expires a message is still taken (clocks differ)
_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:\d{2})")


class XmlElement(Protocol):
    """The part of lxml's element interface that the verifier reads."""

    text: str | None

    def get(self, key: str) -> str | None: ...

    def findall(self, path: str) -> list[Any]: ...


class NonceCache:
    """Nonces seen recently: `remember` says False for one already there (a replay).

    Each nonce is kept `ttl` seconds from when it was remembered; with a clock that does not go
    back, insertion order is expiry order, so expired ones are dropped from the front. Keys are
    digests of (user, nonce), so memory per entry is fixed whatever the caller sent.
    """

    def __init__(self, ttl: float, capacity: int = DEFAULT_MAX_NONCES) -> None:
        if capacity < 1:
            raise ConfigError("NonceCache: capacity must be at least 1")
        self.ttl = ttl
        self.capacity = capacity
        self._expiry: OrderedDict[bytes, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._expiry)

    def seen(self, user: str, nonce: bytes, *, now: float) -> bool:
        self._purge(now)
        return self._key(user, nonce) in self._expiry

    def remember(self, user: str, nonce: bytes, *, now: float) -> bool:
        """Record the nonce; False if it was already recorded. Raises AuthenticationError when
        the cache is full of nonces that have not expired (never forget one early)."""
        self._purge(now)
        key = self._key(user, nonce)
        if key in self._expiry:
            return False
        if len(self._expiry) >= self.capacity:
            raise AuthenticationError(
                "too many recent requests to remember their nonces; try again in a minute"
            )
        self._expiry[key] = now + self.ttl
        return True

    def forget(self, user: str, nonce: bytes) -> None:
        """Let the nonce be used again: its message was refused after all (nothing stored)."""
        self._expiry.pop(self._key(user, nonce), None)

    def _purge(self, now: float) -> None:
        while self._expiry:
            key, expires = next(iter(self._expiry.items()))
            if expires > now:
                return
            del self._expiry[key]

    @staticmethod
    def _key(user: str, nonce: bytes) -> bytes:
        return hashlib.sha256(user.encode() + b"\x00" + nonce).digest()


class UsernameTokenAuth:
    """Accepts a `wsse:Security` header whose UsernameToken names a configured user with the
    right password, as text or as a digest, fresh and not replayed.

    Usage::

        verifier = UsernameTokenAuth({"crm": crm_password}, tolerance=300)
        user = verifier.verify(security_element, now=time.time())  # raises AuthenticationError
    """

    def __init__(
        self,
        users: Mapping[str, SecretLike],
        *,
        tolerance: float = DEFAULT_TOLERANCE_S,
        max_nonces: int = DEFAULT_MAX_NONCES,
    ) -> None:
        if not users:
            raise ConfigError("UsernameTokenAuth: at least one user is required")
        if any(not user.strip() for user in users):
            raise ConfigError("UsernameTokenAuth: a user name must not be empty")
        if tolerance <= 0:
            raise ConfigError("UsernameTokenAuth: tolerance must be more than 0 seconds")
        passwords = secrets_from(list(users.values()), "UsernameTokenAuth passwords")
        self._users = [
            (user.encode(), password) for user, password in zip(users, passwords, strict=True)
        ]
        self.tolerance = tolerance
        # A nonce must be remembered while its Created time can still pass: up to `tolerance`
        # ahead of our clock when it arrives, so up to twice the tolerance from now.
        self.nonces = NonceCache(2 * tolerance, max_nonces)

    def __repr__(self) -> str:
        return f"UsernameTokenAuth(users=<{len(self._users)}>, tolerance={self.tolerance:g})"

    def verify(self, security: XmlElement | None, *, now: float) -> str:
        """The user the header proves; AuthenticationError otherwise."""
        return self.verify_token(security, now=now)[0]

    def verify_token(self, security: XmlElement | None, *, now: float) -> tuple[str, bytes | None]:
        """The user the header proves and its nonce (remembered from now on: `nonces.forget`
        it if the message is refused after all); AuthenticationError otherwise."""
        if security is None:
            _refuse("no wsse:Security header: a WS-Security UsernameToken is required")
        for timestamp in _children(security, WSU_NS, "Timestamp", at_most=1, where="wsse:Security"):
            self._check_timestamp(timestamp, now)
        tokens = _children(security, WSSE_NS, "UsernameToken", at_most=1, where="wsse:Security")
        if not tokens:
            _refuse("the wsse:Security header has no UsernameToken")
        token = tokens[0]
        user = _single_text(token, WSSE_NS, "Username", required=True) or ""
        password_element = _single(token, WSSE_NS, "Password", required=True)
        password = (password_element.text or "").strip()
        kind = (password_element.get("Type") or PASSWORD_TEXT).strip()
        nonce = self._nonce(token)
        created_text = _single_text(token, WSU_NS, "Created", required=False)
        if created_text is not None:
            self._check_fresh(_instant(created_text, "the UsernameToken's Created"), now)
        if kind == PASSWORD_DIGEST:
            if nonce is None or created_text is None:
                _refuse("a PasswordDigest requires a Nonce and a Created time in the UsernameToken")
            try:
                digest = base64.b64decode(password, validate=True)
            except (binascii.Error, ValueError):
                _refuse("the PasswordDigest is not valid base64")
            salt = nonce + created_text.encode()
            matched = self._match(user, lambda secret: _digest(salt, secret), digest)
        elif kind == PASSWORD_TEXT:
            matched = self._match(user, lambda secret: secret, password.encode())
        else:
            shown = kind if len(kind) <= 120 else kind[:117] + "..."
            _refuse(
                f"unsupported password Type {shown!r}: use PasswordText or PasswordDigest of the "
                "Username Token Profile 1.0"
            )
        if matched is None:
            _refuse("wrong user name or password")
        if nonce is not None and not self.nonces.remember(matched, nonce, now=now):
            _refuse("the Nonce was used before: a message is accepted once (replayed?)")
        return matched, nonce

    def _match(self, user: str, expected: Callable[[bytes], bytes], given: bytes) -> str | None:
        """The configured user matching `user` whose expected credential is `given`."""
        matched = None
        name = user.encode()
        # Every pair is compared, and both halves of each, so the time taken tells neither
        # whether the user name exists nor which pair matched.
        for candidate, secret in self._users:
            name_ok = same_secret(name, candidate)
            password_ok = same_secret(given, expected(secret.get_secret_value()))
            if name_ok and password_ok and matched is None:
                matched = candidate.decode()
        return matched

    def _nonce(self, token: XmlElement) -> bytes | None:
        element = _single(token, WSSE_NS, "Nonce", required=False)
        if element is None:
            return None
        encoding = (element.get("EncodingType") or BASE64_BINARY).strip()
        if encoding != BASE64_BINARY:
            _refuse("the Nonce's EncodingType is not supported; send it as Base64Binary")
        try:
            nonce = base64.b64decode((element.text or "").strip(), validate=True)
        except (binascii.Error, ValueError):
            _refuse("the Nonce is not valid base64")
        if not 0 < len(nonce) <= MAX_NONCE_BYTES:
            _refuse(f"the Nonce must be 1 to {MAX_NONCE_BYTES} bytes long")
        return nonce

    def _check_timestamp(self, timestamp: XmlElement, now: float) -> None:
        where = "the Timestamp"
        created = _single_text(timestamp, WSU_NS, "Created", required=False, where=where)
        if created is not None:
            self._check_fresh(_instant(created, "the Timestamp's Created"), now)
        expires = _single_text(timestamp, WSU_NS, "Expires", required=False, where=where)
        if expires is not None:
            late = now - _instant(expires, "the Timestamp's Expires")
            if late > min(_MAX_SKEW_S, self.tolerance):
                _refuse(f"the message expired: its Timestamp's Expires passed {late:.0f} s ago")

    def _check_fresh(self, created: float, now: float) -> None:
        age = now - created
        if age > self.tolerance:
            _refuse(
                f"the message is stale: its Created time is {age:.0f} s old, more than the "
                f"{self.tolerance:g} s accepted; send a new one with the current time"
            )
        if -age > self.tolerance:
            _refuse(
                f"the Created time is {-age:.0f} s in the future, more than the "
                f"{self.tolerance:g} s of clock difference accepted; check the sender's clock"
            )


def _digest(salt: bytes, password: bytes) -> bytes:
    """PasswordDigest = Base64(SHA-1(nonce + created + password)); `salt` is nonce + created.
    Compared decoded (the raw 20 bytes), so any valid base64 spelling of it matches."""
    return hashlib.sha1(salt + password).digest()  # noqa: S324 -- prescribed


def _children(
    parent: XmlElement, namespace: str, name: str, *, at_most: int, where: str
) -> list[Any]:
    found = parent.findall(f"{{{namespace}}}{name}")
    if len(found) > at_most:
        _refuse(f"{where} has {len(found)} {name} elements; at most {at_most} is accepted")
    return found


def _single(
    parent: XmlElement,
    namespace: str,
    name: str,
    *,
    required: bool,
    where: str = "the UsernameToken",
) -> Any:
    found = _children(parent, namespace, name, at_most=1, where=where)
    if not found:
        if required:
            _refuse(f"{where} has no {name}")
        return None
    return found[0]


def _single_text(
    parent: XmlElement,
    namespace: str,
    name: str,
    *,
    required: bool,
    where: str = "the UsernameToken",
) -> str | None:
    element = _single(parent, namespace, name, required=required, where=where)
    if element is None:
        return None
    text = (element.text or "").strip()
    if not text:
        _refuse(f"the {name} element of {where} is empty")
    return str(text)


def _instant(text: str, what: str) -> float:
    """Seconds since the epoch of an xsd:dateTime with a time zone (`...Z` or `+01:00`)."""
    if not _DATETIME.fullmatch(text):
        _refuse(f"{what} is not an xsd:dateTime with a time zone, e.g. 2026-11-24T12:00:00Z")
    # Python takes at most 6 fractional digits; .NET writes 7.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        _refuse(f"{what} is not a valid date and time")


def _refuse(reason: str) -> NoReturn:
    raise AuthenticationError(reason)
