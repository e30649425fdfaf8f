"""JWT bearer tokens against a real JWKS endpoint on 127.0.0.1, and the inbound auth settings.

Keys are generated here with `cryptography`; tokens are signed with PyJWT, or by hand where a
forgery is the point (`alg: none`, an HS256 token keyed with the RSA public key's PEM).
"""

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import ValidationError

from bus.auth import (
    AuthenticationError,
    AuthorizationError,
    InboundAuth,
    JwtBearer,
    KeySetUnavailableError,
    VerifiedSignature,
    inbound_authenticator,
)
from bus.errors import BusError, ConfigError
from bus.resilience.clock import FakeClock
from tests.conftest import free_port

NOW = 1_700_000_000
ISSUER = "https://login.example.com/"
AUDIENCE = "https://bus.example.com"
HS_SECRET = "hs256-shared-secret-for-tests-0123456789abcdef"

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
NEW_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def jwk(key: rsa.RSAPrivateKey, kid: str, **extra: str) -> dict[str, Any]:
    public: dict[str, Any] = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**public, "kid": kid, "use": "sig", **extra}


def claims(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "crm-service",
        "iat": NOW,
        "nbf": NOW,
        "exp": NOW + 300,
        "scope": "events:write events:read",
        "tenant": "acme",
    }
    base.update(changes)
    return {name: value for name, value in base.items() if value is not None}


def token(
    key: Any = RSA_KEY, *, kid: str | None = "k1", algorithm: str = "RS256", **changes: Any
) -> str:
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(claims(**changes), key, algorithm=algorithm, headers=headers)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade(header: dict[str, Any], payload: dict[str, Any], sign: Any = None) -> str:
    """A token put together by hand, the way a forger would."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    signature = sign(signing_input.encode()) if sign else b""
    return f"{signing_input}.{b64url(signature)}"


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


class Jwks:
    """A JWKS endpoint whose keys and answer the test changes; it counts the requests."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = [jwk(RSA_KEY, "k1")]
        self.status = 200
        self.delay = 0.0
        self.requests = 0
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status != 200:
            return web.Response(status=self.status, text="down for maintenance")
        return web.json_response({"keys": self.keys})


@pytest.fixture
async def jwks() -> AsyncIterator[Jwks]:
    state = Jwks()
    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", state.handle)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    state.url = str(server.make_url("/.well-known/jwks.json"))
    try:
        yield state
    finally:
        await server.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=1000.0)


def from_jwks(
    jwks: Jwks, session: aiohttp.ClientSession, clock: FakeClock, **options: Any
) -> JwtBearer:
    options.setdefault("issuer", ISSUER)
    options.setdefault("audience", AUDIENCE)
    return JwtBearer(jwks_url=jwks.url, session=session, clock=clock, **options)


async def refused(verifier: JwtBearer, headers: dict[str, str], now: float = NOW) -> str:
    """The reason for a 401; checks that neither it nor the challenge repeats the token."""
    with pytest.raises(AuthenticationError) as caught:
        await verifier.authenticate(headers, body=b"", query={}, now=now)
    error = caught.value
    sent = headers.get("Authorization", "").removeprefix("Bearer ")
    for part in [sent, *sent.split(".")]:
        if len(part) > 8:
            assert part not in f"{error} {error!r} {error.challenge}"
    assert error.challenge is not None
    assert error.challenge.startswith('Bearer realm="bus"')
    return error.reason


# --- accepted ----------------------------------------------------------------------------------


async def test_a_valid_token_is_accepted_and_its_claims_returned(
    jwks: Jwks, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    verifier = from_jwks(jwks, session, clock, scopes=["events:write"], claims={"tenant": "acme"})

    verified = await verifier.authenticate(bearer(token()), body=b"", query={}, now=NOW + 10)

    assert verified["sub"] == "crm-service"
    assert verified["tenant"] == "acme"
    assert jwks.requests == 1


async def test_keys_are_cached_between_requests(
    jwks: Jwks, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    verifier = from_jwks(jwks, session, clock)

    for _ in range(5):
        await verifier.authenticate(bearer(token()), now=NOW)

    assert jwks.requests == 1


async def test_concurrent_first_requests_share_one_jwks_fetch(
    jwks: Jwks, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    jwks.delay = 0.05
    verifier = from_jwks(jwks, session, clock)

    results = await asyncio.gather(
        *(verifier.authenticate(bearer(token()), now=NOW) for _ in range(10))
    )

    assert all(result["sub"] == "crm-service" for result in results)
    assert jwks.requests == 1


async def test_the_scheme_name_is_case_insensitive(
    jwks: Jwks, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    verified = await from_jwks(jwks, session, clock).authenticate(
        {"authorization": f"bearer {token()}"}, now=NOW
    )

    assert verified["iss"] == ISSUER


async def test_a_token_without_kid_is_checked_with_the_only_fitting_key(
    jwks: Jwks, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    verified = await from_jwks(jwks, session, clock).authenticate(bearer(token(kid=None)), now=NOW)

    assert verified["sub"] == "crm-service"


async def test_a_static_pem_key_verifies_without_any_fetch() -> None:
    verifier = JwtBearer(key=public_pem(RSA_KEY), issuer=ISSUER, audience=AUDIENCE)

    verified = await verifier.verify_token(token(kid=None), now=NOW)

    assert verified["sub"] == "crm-service"


async def test_an_ec_key_verifies_es256() -> None:
    verifier = JwtBearer(key=public_pem(EC_KEY), algorithms=["ES256"], audience=AUDIENCE)

    verified = await verifier.verify_token(token(EC_KEY, algorithm="ES256"), now=NOW)

    assert verified["tenant"] == "acme"


async def test_a_shared_secret_verifies_hs256() -> None:
    verifier = JwtBearer(key=HS_SECRET, algorithms=["HS256"], audience=AUDIENCE)

    verified = await verifier.verify_token(token(HS_SECRET, algorithm="HS256"), now=NOW)

    assert verified["sub"] == "crm-service"


# --- times -------------------------------------------------------------------------------------


async def test_an_expired_token_is_refused(
    jwks: Jwks, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    reason = await refused(from_jwks(jwks, session, clock), bearer(token()), now=NOW + 301)

    assert reason == "the token expired 1 s ago"


async def test_an_expired_token_within_the_leeway_is_accepted(
    jwks: Jwks, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    verifier = from_jwks(jwks, session, clock, leeway=30)

    verified = await verifier.authenticate(bearer(token()), now=NOW + 320)

    assert verified["sub"] == "crm-service"
    assert "expired" in await refused(verifier, bearer(token()), now=NOW + 331)


async def test_exp_is_required(
    jwks: Jwks, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    reason = await refused(from_jwks(jwks, session, clock), bearer(token(exp=None)))

    assert reason == "the token has no expiry (exp claim), which is required"


async def test_a_token_not_valid_yet_is_refused(
    jwks: Jwks, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    verifier = from_jwks(jwks, session, clock, leeway=5)

    reason = await refused(verifier, bearer(token(nbf=NOW + 60, iat=None)))
    in_leeway = await verifier.authenticate(bearer(token(nbf=NOW + 4, iat=None)), now=NOW)

    assert reason == "the token is not valid yet (nbf is 60 s ahead)"
    assert in_leeway["sub"] == "crm-service"


async def test_a_token_issued_in_the_future_is_refused(
    jwks: Jwks, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    reason = await refused(from_jwks(jwks, session, clock), bearer(token(iat=NOW + 120)))

    assert reason == "the token was issued in the future (iat is 120 s ahead)"


async def test_a_time_claim_that_is_not_a_number_is_malformed(
    jwks: Jwks, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    reason = await refused(from_jwks(jwks, session, clock), bearer(token(exp="tomorrow")))

    assert reason == "malformed token: the exp claim is not a number of seconds"


# --- issuer and audience -----------------------------------------------------------------------


async def test_a_wrong_issuer_is_refused(
    jwks: Jwks, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    reason = await refused(
        from_jwks(jwks, session, clock), bearer(token(iss="https://evil.example.com/"))
    )

    assert reason == "wrong issuer: the token's iss is not the expected issuer"


async def test_a_missing_issuer_is_refused(
    jwks: Jwks, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    reason = await refused(from_jwks(jwks, session, clock), bearer(token(iss=None)))

    assert reason == "the token has no iss claim"


async def test_a_wrong_audience_is_refused(
    jwks: Jwks, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    reason = await refused(
        from_jwks(jwks, session, clock), bearer(token(aud="https://billing.example.com"))
    )

    assert reason == "wrong audience: the token's aud does not name this endpoint"


async def test_one_of_several_audiences_is_enough(
    jwks: Jwks, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    verifier = from_jwks(jwks, session, clock, audience=["https://other.example.com", AUDIENCE])

    verified = await verifier.authenticate(bearer(token(aud=["x", AUDIENCE])), now=NOW)

    assert verified["aud"] == ["x", AUDIENCE]


async def test_a_token_with_an_audience_is_refused_when_none_is_configured(
    jwks: Jwks, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    verifier = from_jwks(jwks, session, clock, audience=None)

    reason = await refused(verifier, bearer(token()))
    verified = await verifier.authenticate(bearer(token(aud=None)), now=NOW)

    assert reason.startswith("wrong audience: the token names an audience (aud)")
    assert verified["sub"] == "crm-service"


# --- signatures and algorithms -----------------------------------------------------------------


async def test_a_bad_signature_is_refused(
    jwks: Jwks, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    forged = token(OTHER_RSA_KEY)  # another key, claiming to be k1

    reason = await refused(from_jwks(jwks, session, clock), bearer(forged))

    assert reason == "bad signature: the token's signature does not match its key"


async def test_a_changed_payload_breaks_the_signature(
    jwks: Jwks, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    header, _, signature = token().split(".")
    payload = b64url(json.dumps(claims(tenant="globex")).encode())

    reason = await refused(
        from_jwks(jwks, session, clock), bearer(f"{header}.{payload}.{signature}")
    )

    assert reason.startswith("bad signature")


@pytest.mark.parametrize("none", ["none", "None", "NONE"])
async def test_a_forged_alg_none_token_is_refused(
    jwks: Jwks, session: aiohttp.ClientSession, clock: FakeClock, none: str
) -> None:
    forged = handmade({"alg": none, "typ": "JWT", "kid": "k1"}, claims())
    verifier = from_jwks(jwks, session, clock, algorithms=["RS256", "ES256"])

    reason = await refused(verifier, bearer(forged))

    assert reason.startswith("algorithm not allowed")


async def test_alg_none_cannot_be_configured() -> None:
    with pytest.raises(ConfigError, match="none"):
        JwtBearer(key=public_pem(RSA_KEY), algorithms=["RS256", "none"])


def sign_hs256_with_public_pem(signing_input: bytes) -> bytes:
    return hmac.new(public_pem(RSA_KEY), signing_input, hashlib.sha256).digest()


async def test_hs256_signed_with_the_public_pem_is_refused_with_a_static_key() -> None:
    # The algorithm confusion attack: the public key, known to all, used as an HMAC secret.
    forged = handmade({"alg": "HS256", "typ": "JWT"}, claims(), sign_hs256_with_public_pem)
    verifier = JwtBearer(key=public_pem(RSA_KEY), issuer=ISSUER, audience=AUDIENCE)

    with pytest.raises(AuthenticationError) as caught:
        await verifier.verify_token(forged, now=NOW)

    assert caught.value.reason.startswith("algorithm not allowed: the token's alg (HS256)")


async def test_hs256_signed_with_the_public_pem_is_refused_even_when_hs256_is_allowed(
    jwks: Jwks, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    forged = handmade(
        {"alg": "HS256", "typ": "JWT", "kid": "k1"}, claims(), sign_hs256_with_public_pem
    )
    verifier = from_jwks(jwks, session, clock, algorithms=["RS256", "HS256"])

    reason = await refused(verifier, bearer(forged))

    assert reason == "algorithm not allowed: the token's key does not use HS256"


async def test_hs_algorithms_with_a_public_key_are_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="HS\\* algorithms cannot be used with a public key"):
        JwtBearer(key=public_pem(RSA_KEY), algorithms=["RS256", "HS256"])


async def test_an_algorithm_outside_the_list_is_refused(
    jwks: Jwks, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    verifier = from_jwks(jwks, session, clock, algorithms=["RS256"])
    jwks.keys.append(jwk(NEW_RSA_KEY, "k2"))

    reason = await refused(verifier, bearer(token(NEW_RSA_KEY, kid="k2", algorithm="RS512")))

    assert reason == "algorithm not allowed: the token's alg (RS512) is not one of RS256"


async def test_a_key_pinned_to_another_algorithm_is_not_used(
    jwks: Jwks, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    jwks.keys = [jwk(RSA_KEY, "k1", alg="RS256")]
    verifier = from_jwks(jwks, session, clock, algorithms=["RS256", "PS256"])

    reason = await refused(verifier, bearer(token(algorithm="PS256")))

    assert reason == "algorithm not allowed: the token's key does not use PS256"


@pytest.mark.parametrize(
    "value", ["not-a-jwt", "a.b", "a.b.c", "eyJhbGciOiJSUzI1NiJ9.e30", "x" * 20_000]
)
async def test_malformed_tokens_are_refused(
    jwks: Jwks, session: aiohttp.ClientSession, clock: FakeClock, value: str
) -> None:
    reason = await refused(from_jwks(jwks, session, clock), bearer(value))

    assert reason.startswith("malformed token")
    assert jwks.requests == 0  # refused before any key is looked for


async def test_a_missing_header_gets_the_bare_challenge(
    jwks: Jwks, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    with pytest.raises(AuthenticationError) as caught:
        await from_jwks(jwks, session, clock).authenticate({}, body=b"", query={}, now=NOW)

    assert caught.value.reason == "missing Authorization header: a Bearer token is required"
    assert caught.value.challenge == 'Bearer realm="bus"'


async def test_another_scheme_is_refused(
    jwks: Jwks, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    with pytest.raises(AuthenticationError) as caught:
        await from_jwks(jwks, session, clock).authenticate(
            {"Authorization": "Basic dXNlcjpwYXNz"}, now=NOW
        )

    assert caught.value.reason == "the Authorization header does not use the Bearer scheme"


async def test_an_invalid_token_gets_an_rfc6750_challenge(
    jwks: Jwks, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    with pytest.raises(AuthenticationError) as caught:
        await from_jwks(jwks, session, clock).authenticate(bearer(token()), now=NOW + 400)

    assert caught.value.challenge == (
        'Bearer realm="bus", error="invalid_token", error_description="the token expired 100 s ago"'
    )


# --- the key set -------------------------------------------------------------------------------


async def test_an_unknown_kid_fetches_the_key_set_again_for_a_rotated_key(
    jwks: Jwks, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    verifier = from_jwks(jwks, session, clock, refetch_interval=30)
    await verifier.authenticate(bearer(token()), now=NOW)
    jwks.keys = [jwk(NEW_RSA_KEY, "k2"), jwk(RSA_KEY, "k1")]  # the issuer rotates
    clock.advance(31)

    verified = await verifier.authenticate(bearer(token(NEW_RSA_KEY, kid="k2")), now=NOW)
    still = await verifier.authenticate(bearer(token()), now=NOW)

    assert verified["sub"] == still["sub"] == "crm-service"
    assert jwks.requests == 2


async def test_a_flood_of_unknown_kids_does_not_refetch_every_time(
    jwks: Jwks, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    verifier = from_jwks(jwks, session, clock, refetch_interval=30)
    await verifier.authenticate(bearer(token()), now=NOW)
    clock.advance(31)

    reasons = []
    for number in range(50):
        reasons.append(await refused(verifier, bearer(token(OTHER_RSA_KEY, kid=f"forged{number}"))))
        clock.advance(0.1)
    fetches_during_the_flood = jwks.requests
    clock.advance(30)
    await refused(verifier, bearer(token(OTHER_RSA_KEY, kid="forged-later")))

    assert set(reasons) == {"unknown key id: no signing key has the token's kid"}
    assert fetches_during_the_flood == 2  # the first, then one for the first forged kid
    assert jwks.requests == 3  # once the interval has passed, one more


async def test_a_concurrent_flood_of_unknown_kids_makes_one_fetch(
    jwks: Jwks, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    verifier = from_jwks(jwks, session, clock)
    await verifier.authenticate(bearer(token()), now=NOW)
    clock.advance(3600 - 1)
    jwks.delay = 0.05

    outcomes = await asyncio.gather(
        *(
            verifier.authenticate(bearer(token(OTHER_RSA_KEY, kid=f"f{n}")), now=NOW)
            for n in range(20)
        ),
        return_exceptions=True,
    )

    assert all(isinstance(outcome, AuthenticationError) for outcome in outcomes)
    assert jwks.requests == 2


async def test_the_key_set_is_fetched_again_after_max_key_age(
    jwks: Jwks, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    verifier = from_jwks(jwks, session, clock, max_key_age=600)
    await verifier.authenticate(bearer(token()), now=NOW)
    jwks.keys = [jwk(NEW_RSA_KEY, "k2")]  # k1 withdrawn
    clock.advance(601)

    reason = await refused(verifier, bearer(token()))

    assert reason == "unknown key id: no signing key has the token's kid"
    assert jwks.requests == 2


async def test_a_failed_periodic_fetch_keeps_the_cached_keys(
    jwks: Jwks, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    verifier = from_jwks(jwks, session, clock, max_key_age=600)
    await verifier.authenticate(bearer(token()), now=NOW)
    jwks.status = 503
    clock.advance(601)

    verified = await verifier.authenticate(bearer(token()), now=NOW)

    assert verified["sub"] == "crm-service"
    assert jwks.requests == 2


async def test_a_jwks_endpoint_that_fails_is_a_503_not_a_401(
    jwks: Jwks, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    jwks.status = 500
    verifier = from_jwks(jwks, session, clock, refetch_interval=30)

    with pytest.raises(KeySetUnavailableError) as caught:
        await verifier.authenticate(bearer(token()), now=NOW)
    with pytest.raises(KeySetUnavailableError) as again:
        await verifier.authenticate(bearer(token()), now=NOW)  # not asked again at once
    jwks.status = 200
    clock.advance(30)
    verified = await verifier.authenticate(bearer(token()), now=NOW)

    error = caught.value
    assert isinstance(error, BusError)
    assert not isinstance(error, AuthenticationError)
    assert error.reason == "the keys to verify bearer tokens are unavailable; try again later"
    assert "answered HTTP 500" in str(error)
    assert error.retry_after == 30
    assert again.value.retry_after == 30
    assert verified["sub"] == "crm-service"
    assert jwks.requests == 2


async def test_an_unreachable_jwks_endpoint_is_a_503(
    session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    url = f"http://127.0.0.1:{free_port()}/jwks.json"  # nothing listens there
    verifier = JwtBearer(jwks_url=url, session=session, clock=clock, audience=AUDIENCE)

    with pytest.raises(KeySetUnavailableError, match="could not be fetched"):
        await verifier.authenticate(bearer(token()), now=NOW)


async def test_a_jwks_that_is_not_a_key_set_is_a_503(
    jwks: Jwks, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    jwks.keys = [{"kty": "RSA", "use": "enc", "kid": "e1", "n": "AQAB", "e": "AQAB"}]

    with pytest.raises(KeySetUnavailableError, match="no signing key"):
        await from_jwks(jwks, session, clock).authenticate(bearer(token()), now=NOW)


async def test_a_large_key_set_is_read_whole(
    jwks: Jwks, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    jwks.keys = [jwk(OTHER_RSA_KEY, f"old-{number}") for number in range(400)]
    jwks.keys.append(jwk(RSA_KEY, "k1"))  # the last, after some 180 KB

    verified = await from_jwks(jwks, session, clock).authenticate(bearer(token()), now=NOW)

    assert verified["sub"] == "crm-service"


async def test_a_key_set_over_a_megabyte_is_refused(
    jwks: Jwks, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    jwks.keys = [jwk(RSA_KEY, f"k{number}") for number in range(3000)]

    with pytest.raises(KeySetUnavailableError, match="more than 1048576 bytes"):
        await from_jwks(jwks, session, clock).authenticate(bearer(token()), now=NOW)


# --- authorization -----------------------------------------------------------------------------


async def test_a_missing_scope_is_a_403(
    jwks: Jwks, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    verifier = from_jwks(jwks, session, clock, scopes=["events:write", "events:admin"])

    with pytest.raises(AuthorizationError) as caught:
        await verifier.authenticate(bearer(token()), now=NOW)

    assert caught.value.reason == "the token lacks the required scope(s): events:admin"
    assert caught.value.challenge is not None
    assert caught.value.challenge.endswith(
        ', error="insufficient_scope", scope="events:write events:admin"'
    )


async def test_scopes_may_come_as_an_scp_list(
    jwks: Jwks, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    verifier = from_jwks(jwks, session, clock, scopes=["events:write"])

    verified = await verifier.authenticate(bearer(token(scope=None, scp=["events:write"])), now=NOW)

    assert verified["scp"] == ["events:write"]


async def test_a_claim_without_the_required_value_is_a_403(
    jwks: Jwks, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    verifier = from_jwks(jwks, session, clock, claims={"tenant": "acme", "admin": True})

    with pytest.raises(AuthorizationError) as wrong:
        await verifier.authenticate(bearer(token(admin=1)), now=NOW)
    with pytest.raises(AuthorizationError) as missing:
        await verifier.authenticate(bearer(token(tenant=None, admin=True)), now=NOW)
    verified = await verifier.authenticate(bearer(token(admin=True)), now=NOW)

    assert wrong.value.reason == "the token's admin claim does not have the required value"
    assert missing.value.reason == "the token's tenant claim does not have the required value"
    assert verified["admin"] is True


async def test_authorization_is_checked_only_after_authentication(
    jwks: Jwks, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    verifier = from_jwks(jwks, session, clock, scopes=["events:admin"])

    reason = await refused(verifier, bearer(token(OTHER_RSA_KEY)))

    assert reason.startswith("bad signature")


# --- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "set either jwks_url"),
        ({"jwks_url": "https://x/jwks", "key": HS_SECRET}, "not both"),
        ({"jwks_url": "https://x/jwks"}, "needs session"),
        ({"key": HS_SECRET}, "verifies only HS\\* algorithms, not RS256"),
        ({"key": "short", "algorithms": ["HS256"]}, "at least 32 bytes"),
        ({"key": public_pem(RSA_KEY), "algorithms": ["ES256"]}, "RSA key, which cannot verify"),
        ({"key": public_pem(EC_KEY), "algorithms": ["ES384"]}, "curve secp256r1"),
        ({"key": public_pem(RSA_KEY), "algorithms": ["RS257"]}, "unknown algorithm"),
        ({"key": public_pem(RSA_KEY), "algorithms": []}, "at least one algorithm"),
        ({"key": b"-----BEGIN PUBLIC KEY-----\nnonsense\n-----END PUBLIC KEY-----\n"}, "PEM"),
    ],
)
def test_configuration_mistakes_are_explained(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        JwtBearer(**options)


def test_a_private_key_is_refused_and_not_repeated() -> None:
    private = RSA_KEY.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )

    with pytest.raises(ConfigError) as caught:
        JwtBearer(key=private)

    assert "give the issuer's public key" in str(caught.value)
    assert "PRIVATE" not in str(caught.value)


def test_the_repr_hides_a_shared_secret() -> None:
    verifier = JwtBearer(key=HS_SECRET, algorithms=["HS256"])

    assert HS_SECRET not in repr(verifier)
    assert "key=<hidden>" in repr(verifier)


# --- settings ----------------------------------------------------------------------------------


def problems_of(data: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    with pytest.raises(ValidationError) as caught:
        InboundAuth.model_validate(data)
    for secret in ("k-one-secret", HS_SECRET, "s3cret-pass", "whsec_test_secret"):
        assert secret not in str(caught.value)
    return [(tuple(error["loc"]), error["msg"]) for error in caught.value.errors()]


async def test_jwt_settings_build_a_working_authenticator(
    jwks: Jwks, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    config = InboundAuth.model_validate(
        {
            "jwt": {
                "jwks_url": jwks.url,
                "issuer": ISSUER,
                "audience": AUDIENCE,
                "algorithms": ["RS256"],
                "leeway": "30s",
                "scopes": ["events:write"],
                "claims": {"tenant": "acme"},
            }
        }
    )

    authenticator = inbound_authenticator(config, session, clock=clock)
    verified = await authenticator.authenticate(bearer(token()), body=b"", query={}, now=NOW + 320)

    assert config.kind == "jwt"
    assert isinstance(authenticator, JwtBearer)
    assert isinstance(verified, dict)
    assert verified["tenant"] == "acme"


async def test_jwt_settings_with_a_static_key_hide_it(session: aiohttp.ClientSession) -> None:
    config = InboundAuth.model_validate({"jwt": {"key": HS_SECRET, "algorithms": ["HS256"]}})

    authenticator = inbound_authenticator(config, session)
    verified = await authenticator.authenticate(
        bearer(token(HS_SECRET, algorithm="HS256", aud=None)), body=b"", query={}, now=NOW
    )

    assert isinstance(verified, dict)
    assert verified["sub"] == "crm-service"
    for shown in (repr(config), config.model_dump_json(), str(config.model_dump())):
        assert HS_SECRET not in shown


async def test_api_key_basic_and_hmac_settings_build_authenticators(
    session: aiohttp.ClientSession,
) -> None:
    api_key = inbound_authenticator(
        InboundAuth.model_validate({"api_key": {"header": "X-Api-Key", "keys": ["k-one-secret"]}}),
        session,
    )
    by_query = inbound_authenticator(
        InboundAuth.model_validate({"api_key": {"query": "api_key", "keys": "k-one-secret"}}),
        session,
    )
    basic = inbound_authenticator(
        InboundAuth.model_validate({"basic": {"users": {"alice": "s3cret-pass"}, "realm": "x"}}),
        session,
    )
    stripe = inbound_authenticator(
        InboundAuth.model_validate(
            {"hmac": {"preset": "stripe", "secrets": ["whsec_test_secret"], "tolerance": "5m"}}
        ),
        session,
    )
    body = b'{"id": "evt_1"}'
    signature = hmac.new(b"whsec_test_secret", f"{NOW}.".encode() + body, "sha256").hexdigest()
    alice = base64.b64encode(b"alice:s3cret-pass").decode()

    await api_key.authenticate({"x-api-key": "k-one-secret"}, body=b"", query={}, now=NOW)
    await by_query.authenticate({}, body=b"", query={"api_key": "k-one-secret"}, now=NOW)
    user = await basic.authenticate(
        {"Authorization": f"Basic {alice}"}, body=b"", query={}, now=NOW
    )
    verified = await stripe.authenticate(
        {"Stripe-Signature": f"t={NOW},v1={signature}"}, body=body, query={}, now=NOW + 299
    )
    with pytest.raises(AuthenticationError):
        await api_key.authenticate({"x-api-key": "wrong"}, body=b"", query={}, now=NOW)
    with pytest.raises(AuthenticationError, match="301 s old"):
        await stripe.authenticate(
            {"Stripe-Signature": f"t={NOW},v1={signature}"}, body=body, query={}, now=NOW + 301
        )

    assert user == "alice"
    assert isinstance(verified, VerifiedSignature)
    assert "k-one-secret" not in repr(api_key)


async def test_custom_hmac_settings_build_the_scheme(session: aiohttp.ClientSession) -> None:
    config = InboundAuth.model_validate(
        {
            "hmac": {
                "header": "X-Signature",
                "algorithm": "sha512",
                "encoding": "base64",
                "prefix": "v1=",
                "signed_payload": "{timestamp}:{body}",
                "timestamp_header": "X-Timestamp",
                "tolerance": "1m",
                "delivery_id_header": "X-Delivery",
                "secrets": ["whsec_test_secret"],
            }
        }
    )
    body = b"payload"
    digest = hmac.new(b"whsec_test_secret", f"{NOW}:".encode() + body, "sha512").digest()
    headers = {
        "X-Signature": "v1=" + base64.b64encode(digest).decode(),
        "X-Timestamp": str(NOW),
        "X-Delivery": "d-1",
    }

    authenticator = inbound_authenticator(config, session)
    verified = await authenticator.authenticate(headers, body=body, query={}, now=NOW + 59)

    assert isinstance(verified, VerifiedSignature)
    assert verified.delivery_id == "d-1"


def test_inbound_settings_need_exactly_one_kind() -> None:
    assert problems_of({}) == [
        (
            (),
            "expected one of api_key, basic, hmac, jwt, anonymous, found none; e.g. api_key:"
            " {header: X-Api-Key, keys: [${API_KEY}]}",
        )
    ]
    two = problems_of({"api_key": {"keys": ["k-one-secret"]}, "basic": {"users": {"a": "b"}}})
    assert [loc for loc, _ in two] == [("api_key",), ("basic",)]
    assert all(
        "only one of api_key, basic, hmac, jwt, anonymous may be set" in msg for _, msg in two
    )
    assert problems_of({"jwtt": {"key": HS_SECRET}}) == [
        (
            ("jwtt",),
            "unknown key (did you mean jwt?); allowed keys: api_key, basic, hmac, jwt, anonymous",
        )
    ]
    assert problems_of({"jwt": None}) == [
        (("jwt",), "expected the jwt settings as a mapping, found nothing")
    ]


def test_jwt_settings_mistakes_are_explained() -> None:
    assert problems_of({"jwt": {"issuer": ISSUER}}) == [
        (
            ("jwt",),
            "set jwks_url (the issuer's signing keys) or key (a PEM public key or a shared secret)",
        )
    ]
    assert problems_of({"jwt": {"jwks_url": "https://x/jwks", "key": HS_SECRET}}) == [
        (("jwt", "key"), "set jwks_url or key, not both; remove one")
    ]
    (none,) = problems_of({"jwt": {"jwks_url": "https://x/jwks", "algorithms": ["RS256", "none"]}})
    assert none[0] == ("jwt", "algorithms")
    assert "never accepted; remove it" in none[1]
    (confused,) = problems_of(
        {"jwt": {"key": public_pem(RSA_KEY).decode(), "algorithms": ["HS256"]}}
    )
    assert confused[0] == ("jwt", "key")
    assert "HS* algorithms cannot be used with a public key" in confused[1]
    (plain,) = problems_of({"jwt": {"jwks_url": "http://login.example.com/jwks"}})
    assert plain[0] == ("jwt", "jwks_url")
    assert plain[1].startswith("expected an https:// URL")
    (short,) = problems_of({"jwt": {"key": "k-one-secret", "algorithms": ["HS256"]}})
    assert short == (
        ("jwt", "key"),
        "the shared secret must be at least 32 bytes for HS256; use a longer random secret",
    )


def test_inbound_settings_mistakes_are_explained() -> None:
    (number,) = problems_of({"basic": {"users": {"alice": 1234}}})
    assert number[0] == ("basic", "users", "alice")
    assert "quote it in YAML" in number[1]
    assert "1234" not in number[1]
    (colon,) = problems_of({"basic": {"users": {"a:b": "s3cret-pass"}}})
    assert "without ':'" in colon[1]
    preset = problems_of({"hmac": {"preset": "github", "secrets": ["x"], "header": "X-Sig"}})
    assert preset == [
        (
            ("hmac", "header"),
            "not used with preset: github; remove it, or remove preset to describe a custom"
            " scheme (github is fixed)",
        )
    ]
    (headless,) = problems_of({"hmac": {"secrets": ["whsec_test_secret"]}})
    assert headless[0] == ("hmac",)
    assert "set preset (stripe, github or shopify), or header" in headless[1]
    (unsigned,) = problems_of(
        {"hmac": {"header": "X-Sig", "timestamp_header": "X-T", "secrets": ["whsec_test_secret"]}}
    )
    assert "signed_payload must use {timestamp}" in unsigned[1]
    (empty,) = problems_of({"api_key": {"keys": [""]}})
    assert empty[1] == "expected a secret, found empty text; is its ${VARIABLE} set?"


def test_inbound_settings_never_show_secrets() -> None:
    config = InboundAuth.model_validate(
        {"basic": {"users": {"alice": "s3cret-pass"}}},
    )
    api = InboundAuth.model_validate({"api_key": {"keys": ["k-one-secret"]}})

    for shown in (
        repr(config),
        str(config),
        config.model_dump_json(),
        repr(api),
        api.model_dump_json(),
    ):
        assert "s3cret-pass" not in shown
        assert "k-one-secret" not in shown
    assert '"alice":"**********"' in config.model_dump_json()


def test_inbound_settings_have_a_json_schema() -> None:
    schema = InboundAuth.model_json_schema()

    assert set(schema["properties"]) == {"api_key", "basic", "hmac", "jwt", "anonymous"}


async def test_the_wall_clock_is_the_default_now() -> None:
    verifier = JwtBearer(key=HS_SECRET, algorithms=["HS256"])
    fresh = jwt.encode({"exp": int(time.time()) + 60}, HS_SECRET, algorithm="HS256")
    stale = jwt.encode({"exp": int(time.time()) - 60}, HS_SECRET, algorithm="HS256")

    verified = await verifier.verify_token(fresh)
    with pytest.raises(AuthenticationError, match="expired"):
        await verifier.verify_token(stale)

    assert "exp" in verified
