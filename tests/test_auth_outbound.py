"""Outbound credentials, OAuth2 client credentials against a real token endpoint on 127.0.0.1,
and the outbound auth settings.

The token server checks the client's credentials as an authorization server would (HTTP Basic
with form-urlencoded parts, or form fields), counts its requests and issues numbered tokens; an
API endpoint on the same server accepts only tokens it has not revoked.
"""

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote_plus

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import SecretStr, ValidationError

from bus.auth import (
    ApiKeyCredential,
    BasicCredential,
    BearerToken,
    OAuth2ClientCredentials,
    OutboundAuth,
    OutboundAuthConfig,
    outbound_auth,
)
from bus.errors import ConfigError, PermanentDeliveryError, TransientDeliveryError
from bus.resilience.clock import FakeClock
from tests.conftest import free_port

CLIENT_ID = "bus-client"
CLIENT_SECRET = "p@ss:w/rd+s3cret-7f1e"  # characters that Basic's form-urlencoding changes
API_KEY = "api-key-out-4b1d"
PASSWORD = "out-password-9a3c"
TOKEN = "static-bearer-token-2e8f"
SECRETS = (CLIENT_SECRET, API_KEY, PASSWORD, TOKEN)


class AuthorizationServer:
    """A token endpoint (client credentials grant) and an API that wants its tokens."""

    def __init__(self) -> None:
        self.token_requests: list[dict[str, Any]] = []
        self.issued = 0
        self.valid: set[str] = set()
        self.refuse_all = False
        self.expires_in: object = 3600
        self.status = 200
        self.answer: dict[str, Any] | None = None
        self.headers: dict[str, str] = {}
        self.delay = 0.0
        self.received = asyncio.Event()
        self.token_url = ""
        self.api_url = ""

    async def token(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        authorization = request.headers.get("Authorization")
        self.token_requests.append({"form": form, "authorization": authorization})
        self.received.set()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status != 200 or self.answer is not None:
            return web.json_response(self.answer or {}, status=self.status, headers=self.headers)
        if form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        client = self.client(authorization, form)
        if client != (CLIENT_ID, CLIENT_SECRET):
            return web.json_response(
                {
                    "error": "invalid_client",
                    # A careless server that repeats what it was sent.
                    "error_description": f"client {client[0]} with secret {client[1]} is unknown",
                },
                status=401,
            )
        self.issued += 1
        access_token = f"token-{self.issued}"
        self.valid.add(access_token)
        answer: dict[str, Any] = {"access_token": access_token, "token_type": "Bearer"}
        if self.expires_in is not None:
            answer["expires_in"] = self.expires_in
        return web.json_response(answer, headers={"Cache-Control": "no-store"})

    @staticmethod
    def client(authorization: str | None, form: dict[str, Any]) -> tuple[str, str]:
        if authorization is not None:
            pair = base64.b64decode(authorization.removeprefix("Basic ")).decode()
            user, _, password = pair.partition(":")
            return unquote_plus(user), unquote_plus(password)
        return str(form.get("client_id")), str(form.get("client_secret"))

    async def api(self, request: web.Request) -> web.Response:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token not in self.valid or self.refuse_all:
            return web.Response(status=401, headers={"WWW-Authenticate": 'Bearer error="x"'})
        return web.json_response({"ok": True, "token": token})


async def moved(request: web.Request) -> web.Response:
    raise web.HTTPFound("/oauth2/token")


@pytest.fixture
async def server() -> AsyncIterator[AuthorizationServer]:
    state = AuthorizationServer()
    app = web.Application()
    app.router.add_post("/oauth2/token", state.token)
    app.router.add_get("/api", state.api)
    app.router.add_post("/moved", moved)
    test_server = TestServer(app, host="127.0.0.1", port=0)
    await test_server.start_server()
    state.token_url = str(test_server.make_url("/oauth2/token"))
    state.api_url = str(test_server.make_url("/api"))
    try:
        yield state
    finally:
        await test_server.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=500.0)


def oauth2(
    server: AuthorizationServer,
    session: aiohttp.ClientSession,
    clock: FakeClock,
    **options: Any,
) -> OAuth2ClientCredentials:
    options.setdefault("token_url", server.token_url)
    options.setdefault("client_id", CLIENT_ID)
    options.setdefault("client_secret", CLIENT_SECRET)
    return OAuth2ClientCredentials(session=session, clock=clock, **options)


async def authorization(auth: OutboundAuth) -> str:
    headers: dict[str, str] = {}
    await auth.apply(headers, {})
    return headers["Authorization"]


async def call_api(
    auth: OutboundAuth, server: AuthorizationServer, session: aiohttp.ClientSession
) -> int:
    headers: dict[str, str] = {}
    await auth.apply(headers, {})
    async with session.get(server.api_url, headers=headers) as response:
        return response.status


def assert_no_secret(*shown: object) -> None:
    text = " ".join(str(item) for item in shown)
    for secret in SECRETS:
        assert secret not in text
        assert secret.replace("@", "%40") not in text
    assert base64.b64encode(b"bus-client:p%40ss%3Aw%2Frd%2Bs3cret-7f1e").decode() not in text


# --- OAuth2: fetching and caching --------------------------------------------------------------


async def test_concurrent_callers_share_one_token_request(
    server: AuthorizationServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    server.delay = 0.05
    auth = oauth2(server, session, clock)

    values = await asyncio.gather(*(authorization(auth) for _ in range(20)))

    assert set(values) == {"Bearer token-1"}
    assert len(server.token_requests) == 1


async def test_the_token_is_cached(
    server: AuthorizationServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    auth = oauth2(server, session, clock)

    statuses = [await call_api(auth, server, session) for _ in range(5)]

    assert statuses == [200] * 5
    assert len(server.token_requests) == 1


async def test_the_token_is_renewed_refresh_before_seconds_before_it_expires(
    server: AuthorizationServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    server.expires_in = 300
    auth = oauth2(server, session, clock, refresh_before=30)

    first = await authorization(auth)
    clock.advance(269)
    still = await authorization(auth)
    clock.advance(1)
    renewed = await authorization(auth)

    assert first == still == "Bearer token-1"
    assert renewed == "Bearer token-2"
    assert len(server.token_requests) == 2


async def test_a_short_lived_token_is_renewed_at_half_its_life(
    server: AuthorizationServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    server.expires_in = "40"  # some servers send it as text
    auth = oauth2(server, session, clock, refresh_before=30)

    await authorization(auth)
    clock.advance(19)
    kept = await authorization(auth)
    clock.advance(1)
    renewed = await authorization(auth)

    assert (kept, renewed) == ("Bearer token-1", "Bearer token-2")


async def test_a_token_without_expires_in_is_kept_until_a_401(
    server: AuthorizationServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    server.expires_in = None
    auth = oauth2(server, session, clock)

    await authorization(auth)
    clock.advance(10 * 24 * 3600)

    assert await authorization(auth) == "Bearer token-1"


async def test_client_auth_basic_sends_the_credentials_in_the_authorization_header(
    server: AuthorizationServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    auth = oauth2(server, session, clock, scope=["orders:write", "orders:read"], audience="api")

    await authorization(auth)

    (request,) = server.token_requests
    assert request["authorization"].startswith("Basic ")
    assert server.client(request["authorization"], {}) == (CLIENT_ID, CLIENT_SECRET)
    assert request["form"] == {
        "grant_type": "client_credentials",
        "scope": "orders:write orders:read",
        "audience": "api",
    }


async def test_client_auth_body_sends_the_credentials_as_form_fields(
    server: AuthorizationServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    auth = oauth2(server, session, clock, client_auth="body", scope="orders:write")

    await authorization(auth)

    (request,) = server.token_requests
    assert request["authorization"] is None
    assert request["form"] == {
        "grant_type": "client_credentials",
        "scope": "orders:write",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }


# --- OAuth2: after a 401 -----------------------------------------------------------------------


async def test_a_401_drops_the_token_once_and_the_retry_gets_a_new_one(
    server: AuthorizationServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    auth = oauth2(server, session, clock)
    assert await call_api(auth, server, session) == 200
    server.valid.clear()  # revoked before it expired

    first = await call_api(auth, server, session)
    try_again = await auth.refresh()
    retried = await call_api(auth, server, session)

    assert (first, try_again, retried) == (401, True, 200)
    assert server.issued == 2


async def test_a_second_401_with_a_fresh_token_says_trying_again_cannot_help(
    server: AuthorizationServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    auth = oauth2(server, session, clock)
    await call_api(auth, server, session)
    server.valid.clear()
    await call_api(auth, server, session)
    assert await auth.refresh() is True

    server.refuse_all = True  # the API refuses every token: wrong audience, say
    status = await call_api(auth, server, session)
    again = await auth.refresh()
    still = await authorization(auth)

    assert (status, again) == (401, False)
    assert still == "Bearer token-2"  # not dropped: more tokens would not help
    assert server.issued == 2


async def test_concurrent_401s_for_one_token_share_one_new_token(
    server: AuthorizationServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    auth = oauth2(server, session, clock)
    await authorization(auth)
    server.valid.clear()

    async def call_once_more_after_a_401() -> tuple[int, bool, int]:
        first = await call_api(auth, server, session)
        retry = await auth.refresh()
        return first, retry, await call_api(auth, server, session)

    outcomes = await asyncio.gather(*(call_once_more_after_a_401() for _ in range(5)))

    assert outcomes == [(401, True, 200)] * 5
    assert server.issued == 2


async def test_a_token_renewed_on_expiry_gets_its_own_401_retry(
    server: AuthorizationServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    server.expires_in = 100
    auth = oauth2(server, session, clock, refresh_before=10)
    await authorization(auth)
    server.valid.clear()
    await call_api(auth, server, session)
    assert await auth.refresh() is True
    await authorization(auth)  # token-2, after a 401
    clock.advance(95)

    await authorization(auth)  # token-3, because token-2 was due
    server.valid.discard("token-3")
    status = await call_api(auth, server, session)

    assert status == 401
    assert await auth.refresh() is True
    assert await call_api(auth, server, session) == 200


# --- OAuth2: token endpoint failures -----------------------------------------------------------


async def test_invalid_client_is_permanent_and_never_shows_the_secret(
    server: AuthorizationServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    auth = oauth2(server, session, clock, client_id=CLIENT_ID + "-typo")

    with pytest.raises(PermanentDeliveryError) as caught:
        await authorization(auth)

    error = caught.value
    assert error.status == 401
    assert "error invalid_client" in error.reason
    assert "check client_id, client_secret and client_auth" in error.reason
    assert "<hidden>" in error.reason  # what the server repeated
    assert_no_secret(error, repr(error), error.reason, error.excerpt, repr(auth))


async def test_invalid_client_in_the_body_never_shows_the_secret(
    server: AuthorizationServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    server.status = 400
    server.answer = {"error": "invalid_client", "error_description": f"bad {CLIENT_SECRET}"}
    auth = oauth2(server, session, clock, client_auth="body")

    with pytest.raises(PermanentDeliveryError) as caught:
        await authorization(auth)

    assert caught.value.status == 400
    assert_no_secret(caught.value, caught.value.excerpt)


async def test_a_503_from_the_token_endpoint_is_transient_and_not_cached(
    server: AuthorizationServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    server.status = 503
    server.answer = {"error": "temporarily_unavailable"}
    server.headers = {"Retry-After": "7"}
    auth = oauth2(server, session, clock)

    with pytest.raises(TransientDeliveryError) as caught:
        await authorization(auth)
    server.status, server.answer = 200, None
    recovered = await authorization(auth)

    assert caught.value.status == 503
    assert caught.value.retry_after == 7
    assert "answered HTTP 503" in caught.value.reason
    assert recovered == "Bearer token-1"


async def test_a_429_from_the_token_endpoint_is_transient(
    server: AuthorizationServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    server.status = 429

    with pytest.raises(TransientDeliveryError) as caught:
        await authorization(oauth2(server, session, clock))

    assert caught.value.status == 429


async def test_an_unreachable_token_endpoint_is_transient(
    session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    url = f"http://127.0.0.1:{free_port()}/oauth2/token"  # nothing listens there
    auth = OAuth2ClientCredentials(
        token_url=url,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        session=session,
        clock=clock,
    )

    with pytest.raises(TransientDeliveryError) as caught:
        await authorization(auth)

    assert caught.value.status is None
    assert "failed (" in caught.value.reason
    assert_no_secret(caught.value)


async def test_a_slow_token_endpoint_times_out_as_transient(
    server: AuthorizationServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    server.delay = 2.0
    auth = oauth2(server, session, clock, request_timeout=0.2)

    with pytest.raises(TransientDeliveryError, match="failed"):
        await authorization(auth)


async def test_a_failed_request_reaches_every_concurrent_caller(
    server: AuthorizationServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    server.delay = 0.05
    server.status = 500
    auth = oauth2(server, session, clock)

    outcomes = await asyncio.gather(
        *(authorization(auth) for _ in range(5)), return_exceptions=True
    )

    assert all(isinstance(outcome, TransientDeliveryError) for outcome in outcomes)
    assert len(server.token_requests) == 1


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ({"token_type": "Bearer"}, "no usable access_token"),
        ({"access_token": "a b", "token_type": "Bearer"}, "no usable access_token"),
        ({"access_token": "t", "token_type": "mac"}, "token_type is not Bearer"),
        ({"access_token": "t", "expires_in": "soon"}, "expires_in is not a number"),
    ],
)
async def test_an_unusable_answer_is_permanent(
    server: AuthorizationServer,
    session: aiohttp.ClientSession,
    clock: FakeClock,
    answer: dict[str, Any],
    problem: str,
) -> None:
    server.answer = answer

    with pytest.raises(PermanentDeliveryError, match=problem) as caught:
        await authorization(oauth2(server, session, clock))

    assert caught.value.excerpt == ""  # a successful answer may hold a token: never quoted


async def test_a_large_token_answer_is_read_whole(
    server: AuthorizationServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    server.answer = {"padding": "x" * 40_000, "access_token": "big-token", "expires_in": 60}

    assert await authorization(oauth2(server, session, clock)) == "Bearer big-token"


async def test_a_redirect_is_not_followed(
    server: AuthorizationServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    auth = oauth2(
        server, session, clock, token_url=server.token_url.replace("oauth2/token", "moved")
    )

    with pytest.raises(PermanentDeliveryError, match="redirect \\(HTTP 302\\)"):
        await authorization(auth)

    assert server.token_requests == []


async def test_close_cancels_a_token_request_under_way(
    server: AuthorizationServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    server.delay = 5.0
    auth = oauth2(server, session, clock)
    waiting = asyncio.create_task(authorization(auth))
    await server.received.wait()

    await auth.close()

    with pytest.raises(asyncio.CancelledError):
        await waiting


def test_oauth2_configuration_mistakes_are_explained(session: aiohttp.ClientSession) -> None:
    base: dict[str, Any] = {
        "token_url": "https://login.example.com/token",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "session": session,
    }
    with pytest.raises(ConfigError, match="client_secret must not be empty"):
        OAuth2ClientCredentials(**{**base, "client_secret": ""})
    with pytest.raises(ConfigError, match="client_auth must be basic or body"):
        OAuth2ClientCredentials(**{**base, "client_auth": "form"})
    with pytest.raises(ConfigError, match="refresh_before"):
        OAuth2ClientCredentials(**{**base, "refresh_before": -1})


# --- static credentials ------------------------------------------------------------------------


async def test_an_api_key_goes_in_its_header_or_query_parameter() -> None:
    headers: dict[str, str] = {"x-api-key": "old"}
    query: dict[str, str] = {"page": "2"}
    in_header = ApiKeyCredential(API_KEY, header="X-Api-Key")
    in_query = ApiKeyCredential(SecretStr(API_KEY), query_parameter="api_key")

    await in_header.apply(headers, query)
    await in_query.apply(headers, query)

    assert headers == {"X-Api-Key": API_KEY}
    assert query == {"page": "2", "api_key": API_KEY}
    assert await in_header.refresh() is False
    assert_no_secret(repr(in_header), repr(in_query))


async def test_basic_credentials_are_encoded_per_rfc_7617() -> None:
    headers: dict[str, str] = {}
    auth = BasicCredential("crm", PASSWORD + ":é")

    await auth.apply(headers, {})

    encoded = headers["Authorization"].removeprefix("Basic ")
    assert base64.b64decode(encoded).decode() == f"crm:{PASSWORD}:é"
    assert await auth.refresh() is False
    assert_no_secret(repr(auth))


async def test_a_bearer_token_replaces_any_authorization_header() -> None:
    headers = {"authorization": "Basic old"}
    auth = BearerToken(TOKEN)

    await auth.apply(headers, {})
    await auth.close()

    assert headers == {"Authorization": f"Bearer {TOKEN}"}
    assert await auth.refresh() is False
    assert_no_secret(repr(auth))


def test_static_credential_mistakes_are_explained() -> None:
    with pytest.raises(ConfigError, match="not both"):
        ApiKeyCredential(API_KEY, header="X-Api-Key", query_parameter="api_key")
    with pytest.raises(ConfigError, match="key must not be empty"):
        ApiKeyCredential("")
    with pytest.raises(ConfigError, match="must not contain ':'"):
        BasicCredential("a:b", PASSWORD)
    with pytest.raises(ConfigError, match="spaces or line breaks"):
        BearerToken("a\r\nX-Injected: 1")


def test_every_credential_is_an_outbound_auth() -> None:
    credentials = [ApiKeyCredential(API_KEY), BasicCredential("u", PASSWORD), BearerToken(TOKEN)]

    assert all(isinstance(credential, OutboundAuth) for credential in credentials)


# --- settings ----------------------------------------------------------------------------------


def problems_of(data: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    with pytest.raises(ValidationError) as caught:
        OutboundAuthConfig.model_validate(data)
    assert_no_secret(caught.value)
    return [(tuple(error["loc"]), error["msg"]) for error in caught.value.errors()]


async def test_each_outbound_shape_builds_its_credential(
    session: aiohttp.ClientSession,
) -> None:
    shapes: list[tuple[dict[str, Any], type]] = [
        ({"api_key": {"header": "X-Api-Key", "key": API_KEY}}, ApiKeyCredential),
        ({"api_key": {"query": "api_key", "key": API_KEY}}, ApiKeyCredential),
        ({"basic": {"user": "crm", "password": PASSWORD}}, BasicCredential),
        ({"bearer": {"token": TOKEN}}, BearerToken),
        (
            {
                "oauth2": {
                    "token_url": "https://login.example.com/oauth2/token",
                    "client_id": CLIENT_ID,
                    "client_secret": CLIENT_SECRET,
                    "scope": "a b",
                    "audience": "https://api.example.com",
                    "client_auth": "body",
                    "refresh_before": "1m",
                }
            },
            OAuth2ClientCredentials,
        ),
    ]
    for data, kind in shapes:
        config = OutboundAuthConfig.model_validate(data)

        built = outbound_auth(config, session)

        assert isinstance(built, kind)
        assert config.kind == next(iter(data))
        assert_no_secret(repr(config), str(config), config.model_dump_json(), repr(built))


async def test_oauth2_settings_build_a_working_client(
    server: AuthorizationServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    server.expires_in = 120
    config = OutboundAuthConfig.model_validate(
        {
            "oauth2": {
                "token_url": server.token_url,
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "scope": ["orders:write"],
                "client_auth": "body",
                "refresh_before": "20s",
            }
        }
    )
    auth = outbound_auth(config, session, clock)

    assert await call_api(auth, server, session) == 200
    clock.advance(100)
    assert await authorization(auth) == "Bearer token-2"
    assert server.token_requests[0]["form"]["scope"] == "orders:write"
    assert config.model_dump_json().count("**********") == 1


async def test_api_key_settings_put_the_key_where_asked(session: aiohttp.ClientSession) -> None:
    config = OutboundAuthConfig.model_validate({"api_key": {"query": "key", "key": API_KEY}})
    headers: dict[str, str] = {}
    query: dict[str, str] = {}

    await outbound_auth(config, session).apply(headers, query)

    assert (headers, query) == ({}, {"key": API_KEY})


def test_outbound_settings_need_exactly_one_kind() -> None:
    assert problems_of({}) == [
        (
            (),
            "expected one of api_key, basic, bearer, oauth2, found none; e.g. bearer: {token:"
            " ${API_TOKEN}}",
        )
    ]
    two = problems_of({"bearer": {"token": TOKEN}, "basic": {"user": "u", "password": PASSWORD}})
    assert {loc for loc, _ in two} == {("bearer",), ("basic",)}
    assert problems_of({"oauth": {}}) == [
        (
            ("oauth",),
            "unknown key (did you mean oauth2?); allowed keys: api_key, basic, bearer, oauth2",
        )
    ]


def test_outbound_settings_mistakes_are_explained() -> None:
    assert problems_of({"api_key": {"header": "X-Api-Key", "query": "k", "key": API_KEY}}) == [
        (("api_key", "query"), "set header or query, not both; the key goes in one")
    ]
    assert problems_of({"api_key": {"key": API_KEY}}) == [
        (("api_key",), "set header (e.g. X-Api-Key) or query: where the API wants the key")
    ]
    (missing,) = problems_of(
        {"oauth2": {"token_url": "https://login.example.com/t", "client_id": CLIENT_ID}}
    )
    assert missing[0] == ("oauth2", "client_secret")
    (plain,) = problems_of(
        {
            "oauth2": {
                "token_url": "http://login.example.com/t",
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
            }
        }
    )
    assert plain[0] == ("oauth2", "token_url")
    assert "http:// only to localhost" in plain[1]
    (with_password,) = problems_of(
        {
            "oauth2": {
                "token_url": f"https://{CLIENT_ID}:{API_KEY}@login.example.com/t",
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
            }
        }
    )
    assert with_password[1].endswith("found a URL with user:password@")
    (auth_kind,) = problems_of(
        {
            "oauth2": {
                "token_url": "https://login.example.com/t",
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "client_auth": "form",
            }
        }
    )
    assert auth_kind[0] == ("oauth2", "client_auth")
    (number,) = problems_of({"basic": {"user": "u", "password": 1234}})
    assert number == (
        ("basic", "password"),
        "expected a secret as text, found a number; quote it in YAML (a number may have lost"
        " leading zeros), or better, write it as ${VARIABLE}",
    )
    (spaced,) = problems_of({"bearer": {"token": "two words"}})
    assert spaced == (("bearer", "token"), "the token holds spaces or line breaks; check its value")
    typo, missing_password = problems_of({"basic": {"user": "u", "pasword": PASSWORD}})
    assert typo[0] == ("basic", "pasword")
    assert typo[1].startswith("unknown key (did you mean password?)")
    assert missing_password[0] == ("basic", "password")
