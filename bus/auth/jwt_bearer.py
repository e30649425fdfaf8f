"""JWT bearer tokens (RFC 6750, RFC 7519): `Authorization: Bearer <jwt>`, signed by an issuer.

The signing keys come from the issuer's JWKS URL (RFC 7517), fetched with the process's shared
`aiohttp.ClientSession` and cached, or from one static key: a PEM public key (RS*, PS*, ES*,
EdDSA) or a shared secret (HS*).

What is checked, in this order: the header's shape; the token's `alg` against the explicit
`algorithms` list (`none` is never accepted) and against the kind of its key (an HS token is never
checked with an RSA or EC public key: that is the "algorithm confusion" attack, where the public
key is used as an HMAC secret); the signature; `iss` and `aud`; `exp` (required), `nbf` and `iat`,
each with `leeway` seconds for clocks that differ. Then authorization: the required `scopes` and
`claims`, whose absence is a 403 (`AuthorizationError`), not a 401.

A JWKS outage is not the caller's fault, so it raises `KeySetUnavailableError` (503), not a 401
that would send the caller to fetch a new token for nothing.
"""

import asyncio
import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import aiohttp
import jwt
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from pydantic import SecretBytes

from bus.auth.credentials import SecretLike, read_header, secrets_from
from bus.errors import AuthenticationError, AuthorizationError, BusError, ConfigError
from bus.http.client import read_limited
from bus.resilience.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)

KEY_TYPES: dict[str, str] = {
    **{f"HS{bits}": "oct" for bits in (256, 384, 512)},
    **{f"RS{bits}": "RSA" for bits in (256, 384, 512)},
    **{f"PS{bits}": "RSA" for bits in (256, 384, 512)},
    **{f"ES{bits}": "EC" for bits in (256, 384, 512)},
    "ES256K": "EC",
    "EdDSA": "OKP",
}
"""Every signature algorithm accepted in `algorithms`, with the JWK key type (`kty`) it needs."""

_HMAC_KEY_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
_MAX_TOKEN_CHARS = 16 * 1024
_MAX_JWKS_BYTES = 1024 * 1024
# RFC 6750 §3: error_description holds only these characters (no quote, no backslash).
_DESCRIPTION_UNSAFE = re.compile(r"[^\x20-\x21\x23-\x5b\x5d-\x7e]")


_DECODE_FAILURES: dict[type[jwt.PyJWTError], str] = {
    jwt.InvalidSignatureError: "bad signature: the token's signature does not match its key",
    jwt.InvalidIssuerError: "wrong issuer: the token's iss is not the expected issuer",
    jwt.InvalidAudienceError: "wrong audience: the token's aud does not name this endpoint",
    jwt.InvalidKeyError: "the token's signing key is not acceptable",
}


class KeySetUnavailableError(BusError):
    """The issuer's signing keys (JWKS) could not be fetched, so no token can be checked now.

    The inbound adapters answer 503 Service Unavailable, with `Retry-After: retry_after` when it
    is set: the caller's token may well be valid, and a 401 would only make it fetch another one.
    `reason` is safe to send back; the message (`str()`) adds the cause, for the log.
    """

    def __init__(self, detail: str, *, retry_after: float | None = None) -> None:
        self.reason = "the keys to verify bearer tokens are unavailable; try again later"
        self.detail = detail
        self.retry_after = retry_after
        super().__init__(f"{self.reason}: {detail}")


@dataclass(frozen=True)
class _Key:
    """One verification key: its JWK type, and the one algorithm it is pinned to, if any."""

    kty: str
    key: Any  # a cryptography public key, or SecretBytes for HS*
    kid: str | None = None
    alg: str | None = None

    def fits(self, alg: str) -> bool:
        return KEY_TYPES.get(alg) == self.kty and self.alg in (None, alg)


class JwtBearer:
    """Verifies `Authorization: Bearer <jwt>` and returns the token's claims.

    Usage::

        verifier = JwtBearer(
            jwks_url="https://login.example.com/.well-known/jwks.json",
            session=session,
            issuer="https://login.example.com/",
            audience="https://bus.example.com",
            scopes=["events:write"],
        )
        claims = await verifier.authenticate(request.headers, body=b"", query={}, now=time.time())

    Exactly one of `jwks_url` (with `session`) and `key` is required. Options:
    - `algorithms`: the accepted `alg` values (default RS256 only); each must suit the key;
    - `issuer`, `audience`: the expected `iss`, and the expected `aud` (one or several, any one of
      which the token must name). Without `audience`, a token that names one is refused
      (RFC 7519 §4.1.3); set it whenever the issuer serves more than one API;
    - `leeway`: seconds of clock difference allowed for `exp`, `nbf` and `iat`;
    - `scopes`: each must be in the token's `scope` (space-separated) or `scp` (list) claim;
      `claims`: name -> the exact value the token must have. Missing ones: AuthorizationError;
    - `refetch_interval`: least seconds between two JWKS fetches that tokens cause (a `kid` not
      in the cache, or after a failed fetch), so that a flood of forged `kid`s cannot turn into a
      flood of requests to the issuer; `max_key_age`: seconds after which the cached set is
      fetched again anyway, so that a key the issuer withdrew stops being accepted (if that
      fetch fails, the cached keys stay in use); `fetch_timeout`: seconds for one fetch;
      `clock`: the monotonic time of those three (a `FakeClock` in tests).

    Raises AuthenticationError (401; `challenge` is the WWW-Authenticate value), AuthorizationError
    (403) or KeySetUnavailableError (503). No reason ever holds the token or a part of it.
    """

    def __init__(
        self,
        *,
        jwks_url: str | None = None,
        session: aiohttp.ClientSession | None = None,
        key: SecretLike | None = None,
        issuer: str | None = None,
        audience: str | Sequence[str] | None = None,
        algorithms: Sequence[str] = ("RS256",),
        leeway: float = 0.0,
        scopes: Sequence[str] = (),
        claims: Mapping[str, object] | None = None,
        realm: str = "bus",
        refetch_interval: float = 30.0,
        max_key_age: float = 3600.0,
        fetch_timeout: float = 10.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if (jwks_url is None) == (key is None):
            raise ConfigError("JwtBearer: set either jwks_url (with session) or key, not both")
        if jwks_url is not None and session is None:
            raise ConfigError("JwtBearer: jwks_url needs session, the HTTP client to fetch it")
        self.algorithms = check_algorithms(algorithms)
        self._static = None if key is None else static_key(key, self.algorithms)
        if leeway < 0:
            raise ConfigError("JwtBearer: leeway must be zero or a positive number of seconds")
        for name, value in (
            ("refetch_interval", refetch_interval),
            ("max_key_age", max_key_age),
            ("fetch_timeout", fetch_timeout),
        ):
            if not value > 0:
                raise ConfigError(f"JwtBearer: {name} must be a positive number of seconds")
        self.jwks_url = jwks_url
        self.issuer = issuer
        if isinstance(audience, str):
            audience = [audience]
        self.audience = None if audience is None else tuple(audience)
        if self.audience is not None and not all(self.audience):
            raise ConfigError("JwtBearer: audience must be non-empty text (or a list of them)")
        self.leeway = float(leeway)
        self.scopes = tuple(scopes)
        self.claims = dict(claims or {})
        self.realm = realm
        self._session = session
        self._refetch_interval = float(refetch_interval)
        self._max_key_age = float(max_key_age)
        self._fetch_timeout = aiohttp.ClientTimeout(total=fetch_timeout)
        self._clock = clock
        quoted = realm.replace("\\", "\\\\").replace('"', '\\"')
        self.challenge = f'Bearer realm="{quoted}"'
        self._by_kid: dict[str, _Key] = {}
        self._keys: tuple[_Key, ...] = ()
        self._fetched_at: float | None = None  # when the cached set was fetched
        self._attempted_at: float | None = None  # when a fetch was last tried
        self._fetches = 0  # completed fetch attempts: lets a waiter see that one just happened
        self._last_failure = ""
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        source = f"jwks_url={self.jwks_url!r}" if self.jwks_url else "key=<hidden>"
        return (
            f"JwtBearer({source}, issuer={self.issuer!r}, audience={self.audience!r},"
            f" algorithms={list(self.algorithms)!r}, leeway={self.leeway:g},"
            f" scopes={list(self.scopes)!r}, claims={sorted(self.claims)!r})"
        )

    async def authenticate(
        self,
        headers: Mapping[str, str],
        *,
        body: bytes = b"",
        query: Mapping[str, str] | None = None,
        now: float | None = None,
    ) -> dict[str, Any]:
        """The verified claims of the request's bearer token; see the class for what is raised.

        `now` is Unix time (`time.time()` if None); `body` and `query` are unused, taken so that
        every authenticator is called alike (a token in the query, RFC 6750 §2.3, ends up in
        access logs, so it is not read).
        """
        value = read_header(headers, "Authorization", challenge=self.challenge)
        if value is None:
            # RFC 6750 §3.1: a request without credentials gets the bare challenge, no error code.
            raise AuthenticationError(
                "missing Authorization header: a Bearer token is required",
                challenge=self.challenge,
            )
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() != "bearer":  # scheme names are case-insensitive (RFC 9110)
            raise AuthenticationError(
                "the Authorization header does not use the Bearer scheme",
                challenge=self.challenge,
            )
        return await self.verify_token(token.strip(), now=now)

    async def verify_token(self, token: str, *, now: float | None = None) -> dict[str, Any]:
        """The verified claims of `token` (the JWT alone, without `Bearer `)."""
        if not token:
            self._refuse("malformed token: the Bearer credentials are empty")
        if len(token) > _MAX_TOKEN_CHARS or any(char.isspace() for char in token):
            self._refuse("malformed token: not a JWT")
        header = _unverified_header(token)
        if header is None:
            self._refuse("malformed token: not a JWT (three base64url parts, JSON header)")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            # The name is repeated only when it is a known one: header text is the caller's.
            named = f" ({alg})" if isinstance(alg, str) and alg in (*KEY_TYPES, "none") else ""
            self._refuse(
                f"algorithm not allowed: the token's alg{named} is not one of"
                f" {', '.join(self.algorithms)}"
            )
        key = self._static if self._static is not None else await self._key_from_set(header, alg)
        if not key.fits(alg):
            self._refuse(f"algorithm not allowed: the token's key does not use {alg}")
        claims = self._decode(token, key, alg)
        self._check_times(claims, time.time() if now is None else now)
        self._authorize(claims)
        return claims

    # -- verification ---------------------------------------------------------------------------

    def _decode(self, token: str, key: _Key, alg: str) -> dict[str, Any]:
        secret = key.key.get_secret_value() if isinstance(key.key, SecretBytes) else key.key
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=secret,
                algorithms=[alg],
                issuer=self.issuer,
                audience=self.audience,
                options={
                    # The times are checked by _check_times, against the `now` given.
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_iss": self.issuer is not None,
                    "verify_aud": True,
                    "verify_sub": True,
                    "verify_jti": True,
                    "enforce_minimum_key_length": True,
                },
            )
        except jwt.PyJWTError as error:
            reason = self._decode_failure(error, key)
        else:
            return claims
        # Raised outside the except block, so that no traceback carries PyJWT's text along.
        self._refuse(reason)

    def _decode_failure(self, error: jwt.PyJWTError, key: _Key) -> str:
        if isinstance(error, jwt.MissingRequiredClaimError):
            claim = error.claim if error.claim in ("iss", "aud") else "a required"
            return f"the token has no {claim} claim"
        if isinstance(error, jwt.InvalidAudienceError) and self.audience is None:
            return (
                "wrong audience: the token names an audience (aud), and this endpoint has none"
                " configured to accept"
            )
        if isinstance(error, jwt.InvalidKeyError):
            # The issuer's fault (a weak or unfit key), worth a line in our log.
            log.warning("a bearer token's key was refused (kid %r): %s", key.kid, error)
        for kind, reason in _DECODE_FAILURES.items():
            if isinstance(error, kind):
                return reason
        return "malformed token: the payload is not a valid JWT claims set"

    def _check_times(self, claims: Mapping[str, Any], now: float) -> None:
        exp = self._time_claim(claims, "exp")
        if exp is None:
            self._refuse("the token has no expiry (exp claim), which is required")
        if now >= exp + self.leeway:
            self._refuse(f"the token expired {int(now - exp)} s ago")
        nbf = self._time_claim(claims, "nbf")
        if nbf is not None and now + self.leeway < nbf:
            self._refuse(f"the token is not valid yet (nbf is {int(nbf - now)} s ahead)")
        iat = self._time_claim(claims, "iat")
        if iat is not None and now + self.leeway < iat:
            self._refuse(f"the token was issued in the future (iat is {int(iat - now)} s ahead)")

    def _time_claim(self, claims: Mapping[str, Any], name: str) -> float | None:
        value = claims.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            self._refuse(f"malformed token: the {name} claim is not a number of seconds")
        return float(value)

    def _authorize(self, claims: Mapping[str, Any]) -> None:
        granted = token_scopes(claims)
        missing = [scope for scope in self.scopes if scope not in granted]
        if missing:
            raise AuthorizationError(
                f"the token lacks the required scope(s): {' '.join(missing)}",
                challenge=f'{self.challenge}, error="insufficient_scope", '
                f'scope="{" ".join(self.scopes)}"',
            )
        for name, expected in self.claims.items():
            # bool is an int in Python; `true` must not satisfy a required 1, nor the reverse.
            value = claims.get(name)
            if value != expected or type(value) is not type(expected):
                raise AuthorizationError(
                    f"the token's {name} claim does not have the required value"
                )

    def _refuse(self, reason: str) -> NoReturn:
        description = _DESCRIPTION_UNSAFE.sub("?", reason)
        raise AuthenticationError(
            reason,
            challenge=f'{self.challenge}, error="invalid_token", error_description="{description}"',
        )

    # -- the key set ----------------------------------------------------------------------------

    async def _key_from_set(self, header: Mapping[str, Any], alg: str) -> _Key:
        kid = header.get("kid")  # PyJWT has checked it is text, if present
        if self._fetched_at is None:
            await self._fetch()
        elif self._clock.now() - self._fetched_at >= self._max_key_age:
            try:
                await self._fetch()
            except KeySetUnavailableError as error:
                log.warning("keeping the cached JWKS of %s: %s", self.jwks_url, error.detail)
        key = self._find(kid, alg)
        if key is None and kid is not None and self._may_fetch():
            # A kid we do not know: the issuer may have rotated its keys since the last fetch.
            await self._fetch()
            key = self._find(kid, alg)
        if key is None and kid is None:
            self._refuse("unknown key id: the token has no kid, and several keys could sign it")
        if key is None:
            self._refuse("unknown key id: no signing key has the token's kid")
        return key

    def _find(self, kid: str | None, alg: str) -> _Key | None:
        if kid is not None:
            return self._by_kid.get(kid)
        fitting = [key for key in self._keys if key.fits(alg)]
        return fitting[0] if len(fitting) == 1 else None

    def _may_fetch(self) -> bool:
        return (
            self._attempted_at is None
            or self._clock.now() - self._attempted_at >= self._refetch_interval
        )

    async def _fetch(self) -> None:
        """Fetch the key set once for every caller waiting now, at most once per interval."""
        seen = self._fetches
        async with self._lock:
            # Fetched (or tried) while this caller waited, or too recently: that is the answer.
            if self._fetches != seen or not self._may_fetch():
                if self._fetched_at is None:
                    raise KeySetUnavailableError(
                        f"the last fetch failed: {self._last_failure}", retry_after=self._wait()
                    )
                return
            self._attempted_at = self._clock.now()
            try:
                keys = await self._download()
            except KeySetUnavailableError as error:
                self._fetches += 1
                self._last_failure = error.detail
                raise
            self._fetches += 1
            self._keys = keys
            self._by_kid = {key.kid: key for key in keys if key.kid is not None}
            self._fetched_at = self._attempted_at
            log.info("fetched %d signing key(s) from %s", len(keys), self.jwks_url)

    def _wait(self) -> float:
        if self._attempted_at is None:
            return 0.0
        return max(0.0, self._attempted_at + self._refetch_interval - self._clock.now())

    async def _download(self) -> tuple[_Key, ...]:
        if self._session is None or self.jwks_url is None:  # a static key: never called
            raise ConfigError("JwtBearer: no jwks_url to fetch keys from")
        retry_after = self._refetch_interval
        try:
            async with self._session.get(
                self.jwks_url, headers={"Accept": "application/json"}, timeout=self._fetch_timeout
            ) as response:
                if response.status != 200:
                    raise KeySetUnavailableError(
                        f"{self.jwks_url} answered HTTP {response.status}", retry_after=retry_after
                    )
                raw, too_long = await read_limited(response, _MAX_JWKS_BYTES)
        except (aiohttp.ClientError, TimeoutError) as error:
            cause = f"{type(error).__name__}: {error}".rstrip(": ")
            raise KeySetUnavailableError(
                f"{self.jwks_url} could not be fetched ({cause})", retry_after=retry_after
            ) from error
        if too_long:
            raise KeySetUnavailableError(
                f"{self.jwks_url} sent more than {_MAX_JWKS_BYTES} bytes", retry_after=retry_after
            )
        try:
            document = json.loads(raw)
        except ValueError:
            document = None
        entries = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            raise KeySetUnavailableError(
                f"{self.jwks_url} did not answer a JWKS (a JSON object with a keys list)",
                retry_after=retry_after,
            )
        keys = tuple(key for entry in entries if (key := _jwk_key(entry)) is not None)
        if not keys:
            raise KeySetUnavailableError(
                f"{self.jwks_url} holds no signing key this verifier can use",
                retry_after=retry_after,
            )
        return keys


def _unverified_header(token: str) -> dict[str, Any] | None:
    try:
        return jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        return None


def _jwk_key(entry: object) -> _Key | None:
    """One JWKS entry as a verification key, or None for one to skip (an encryption key, say)."""
    if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
        return None
    kid = entry.get("kid")
    kty = entry.get("kty")
    alg = entry.get("alg")
    if (kid is not None and not isinstance(kid, str)) or not isinstance(kty, str):
        return None
    if kty not in KEY_TYPES.values():
        return None
    if alg is not None and KEY_TYPES.get(alg) != kty:
        return None  # pinned to an algorithm we do not verify, or to one of another key type
    try:
        parsed = jwt.PyJWK(entry)
    except jwt.PyJWTError as error:
        # The exception text may hold the whole JWK, which for an `oct` key is a secret.
        log.warning("skipped JWKS key %r (kty %s): %s", kid, kty, type(error).__name__)
        return None
    key = parsed.key
    if kty == "oct":
        key = SecretBytes(key)
    return _Key(kty=kty, key=key, kid=kid, alg=alg)


def check_algorithms(algorithms: Sequence[str]) -> tuple[str, ...]:
    """The algorithms as a tuple, or ConfigError naming the one that cannot be accepted."""
    if isinstance(algorithms, str):
        algorithms = [algorithms]
    if not algorithms:
        raise ConfigError("JwtBearer: algorithms must list at least one algorithm, e.g. RS256")
    for alg in algorithms:
        if alg.lower() == "none":
            raise ConfigError(
                "JwtBearer: algorithm none (an unsigned token) is never accepted; remove it"
            )
        if alg not in KEY_TYPES:
            raise ConfigError(
                f"JwtBearer: unknown algorithm {alg!r}; use one of {', '.join(KEY_TYPES)}"
            )
    return tuple(dict.fromkeys(algorithms))


def static_key(key: SecretLike, algorithms: Sequence[str]) -> _Key:
    """A PEM public key (or certificate) or an HMAC secret, checked against `algorithms`."""
    raw = secrets_from(key, "JwtBearer key")[0].get_secret_value()
    if raw.lstrip().startswith(b"-----BEGIN"):
        public = _pem_public_key(raw)
        kty = _key_type(public)
        unfit = [alg for alg in algorithms if KEY_TYPES[alg] != kty]
        if any(KEY_TYPES[alg] == "oct" for alg in unfit):
            raise ConfigError(
                "JwtBearer: HS* algorithms cannot be used with a public key (a token signed with"
                " the public key as HMAC secret would pass); remove them from algorithms"
            )
        if unfit:
            raise ConfigError(
                f"JwtBearer: the key is an {kty} key, which cannot verify {', '.join(unfit)};"
                " change algorithms or the key"
            )
        if isinstance(public, ec.EllipticCurvePublicKey):
            _check_curve(public, algorithms)
        return _Key(kty=kty, key=public)
    unfit = [alg for alg in algorithms if KEY_TYPES[alg] != "oct"]
    if unfit:
        raise ConfigError(
            f"JwtBearer: key is a shared secret (not a PEM public key), which verifies only HS*"
            f" algorithms, not {', '.join(unfit)}; change algorithms or give the PEM public key"
        )
    needed = max(_HMAC_KEY_BYTES[alg] for alg in algorithms)
    if len(raw) < needed:
        # RFC 7518 §3.2: a shorter HMAC key is guessable well before the hash is.
        raise ConfigError(
            f"JwtBearer: the shared secret must be at least {needed} bytes for"
            f" {', '.join(algorithms)}; use a longer random secret"
        )
    return _Key(kty="oct", key=SecretBytes(raw))


def _pem_public_key(raw: bytes) -> Any:
    if b"PRIVATE KEY-----" in raw:
        raise ConfigError(
            "JwtBearer: key is a private key; give the issuer's public key (never the private one)"
        )
    try:
        if b"-----BEGIN CERTIFICATE-----" in raw:
            return x509.load_pem_x509_certificate(raw).public_key()
        return load_pem_public_key(raw)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ConfigError(
            "JwtBearer: key is not a readable PEM public key or certificate; give the issuer's"
            " public key as -----BEGIN PUBLIC KEY----- ... -----END PUBLIC KEY-----"
        ) from None


_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "ES256": ec.SECP256R1,
    "ES384": ec.SECP384R1,
    "ES512": ec.SECP521R1,
    "ES256K": ec.SECP256K1,
}


def _check_curve(public: ec.EllipticCurvePublicKey, algorithms: Sequence[str]) -> None:
    unfit = [alg for alg in algorithms if not isinstance(public.curve, _CURVES[alg])]
    if unfit:
        fitting = [alg for alg, curve in _CURVES.items() if isinstance(public.curve, curve)]
        raise ConfigError(
            f"JwtBearer: the EC key is on curve {public.curve.name}, which cannot verify"
            f" {', '.join(unfit)}; set algorithms to {', '.join(fitting) or 'another key'}"
        )


def _key_type(public: object) -> str:
    if isinstance(public, rsa.RSAPublicKey):
        if public.key_size < 2048:
            raise ConfigError("JwtBearer: the RSA key has fewer than 2048 bits; use a longer one")
        return "RSA"
    if isinstance(public, ec.EllipticCurvePublicKey):
        return "EC"
    if isinstance(public, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return "OKP"
    raise ConfigError("JwtBearer: key is neither an RSA, an EC nor an Ed25519/Ed448 public key")


def token_scopes(claims: Mapping[str, Any]) -> set[str]:
    """The scopes a token grants: its `scope` (RFC 8693, space-separated) and `scp` claims."""
    granted: set[str] = set()
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            granted.update(value.split())
        elif isinstance(value, list):
            granted.update(item for item in value if isinstance(item, str))
    return granted
