"""OAuth 2.0 client credentials (RFC 6749 §4.4): a bearer token for calls made as ourselves.

The token comes from the authorization server's token endpoint, through the process's shared
`aiohttp.ClientSession`, and is reused until shortly before it expires. Token endpoint failures
are delivery errors, so the delivery runner treats them as it treats the call's own: retried when
transient (no answer, 5xx, 429), dead-lettered when permanent (wrong client id or secret).
"""

import asyncio
import base64
import contextvars
import itertools
import json
import logging
import re
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any, Literal
from urllib.parse import quote_plus

import aiohttp
from pydantic import SecretStr

from bus.auth.outbound import OutboundAuth, Secret, secret_str, set_header
from bus.errors import ConfigError, PermanentDeliveryError, TransientDeliveryError
from bus.http.client import is_transient, read_limited
from bus.http.retry_after import parse_retry_after
from bus.resilience.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)

ClientAuth = Literal["basic", "body"]

_MAX_RESPONSE_BYTES = 64 * 1024
_EXCERPT_CHARS = 300
# RFC 6749 §5.2: the error code is printable ASCII without '"' and '\'.
_ERROR_CODE = re.compile(r"[\x20-\x21\x23-\x5b\x5d-\x7e]{1,64}")
# RFC 6750 §2.1 b64token: what may follow `Bearer ` in a header.
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_HINTS = {
    "invalid_client": "check client_id, client_secret and client_auth (basic or body)",
    "unauthorized_client": "the client is not allowed the client_credentials grant; ask the "
    "authorization server's administrator",
    "invalid_scope": "check scope",
    "invalid_target": "check audience",
}

# Which token generation each instance last applied in the current task (its serial -> the
# generation), so that `refresh` knows which token the 401 answered. A context variable, since
# one instance serves many concurrent tasks; one for all instances, since context variables
# are never freed.
_APPLIED: contextvars.ContextVar[Mapping[int, int]] = contextvars.ContextVar("oauth2_applied")
_SERIALS = itertools.count()


class OAuth2ClientCredentials(OutboundAuth):
    """`Authorization: Bearer <token>`, the token fetched with the client credentials grant.

    Usage::

        auth = OAuth2ClientCredentials(
            token_url="https://login.example.com/oauth2/token",
            client_id="bus",
            client_secret=secret,
            session=session,
            scope="orders:write",
        )
        await auth.apply(headers, query)     # fetches a token the first time, then reuses it
        if response.status == 401 and await auth.refresh():
            ...                              # try once more: apply gets a new token

    - `client_auth`: how the client authenticates to the token endpoint: `basic` (HTTP Basic,
      RFC 6749 §2.3.1, the default every server must support) or `body` (client_id and
      client_secret as form fields);
    - `scope` (text or list, sent space-separated) and `audience` (Auth0, Okta and others want it
      to pick the API the token is for) are sent when set;
    - `refresh_before`: seconds before the token's `expires_in` runs out that a new one is
      fetched (at most half the token's lifetime), so that no call leaves with a token that
      expires on the way. A token without `expires_in` is kept until a 401;
    - `request_timeout`: seconds for one token request; `clock`: monotonic time (`FakeClock`).

    Callers that need a token at the same moment share one token request. A failed request
    raises `TransientDeliveryError` (connection error, timeout, 408, 429, 5xx) or
    `PermanentDeliveryError` (400, 401 and the rest: its reason has the OAuth `error` code and
    what to check); it is not cached, so the next call asks again.
    """

    def __init__(
        self,
        *,
        token_url: str,
        client_id: str,
        client_secret: Secret,
        session: aiohttp.ClientSession,
        scope: str | Sequence[str] | None = None,
        audience: str | None = None,
        client_auth: ClientAuth = "basic",
        refresh_before: float = 30.0,
        request_timeout: float = 30.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if not token_url:
            raise ConfigError("OAuth2ClientCredentials: token_url is required")
        if not client_id:
            raise ConfigError("OAuth2ClientCredentials: client_id is required")
        if client_auth not in ("basic", "body"):
            raise ConfigError("OAuth2ClientCredentials: client_auth must be basic or body")
        if refresh_before < 0:
            raise ConfigError("OAuth2ClientCredentials: refresh_before must not be negative")
        if not request_timeout > 0:
            raise ConfigError("OAuth2ClientCredentials: request_timeout must be positive")
        self.token_url = token_url
        self.client_id = client_id
        self._secret = secret_str(client_secret, "OAuth2ClientCredentials client_secret")
        self.scope = scope if scope is None or isinstance(scope, str) else " ".join(scope)
        self.audience = audience
        self.client_auth: ClientAuth = client_auth
        self.refresh_before = float(refresh_before)
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        self._clock = clock
        self._serial = next(_SERIALS)
        self._token: SecretStr | None = None
        self._refresh_at: float | None = None  # clock time from which a new token is fetched
        self._generation = 0  # of the token held; each fetched token gets the next one
        self._from_refresh = False  # the token held was fetched because its forerunner got a 401
        self._after_refresh = False  # so will be the next token fetched
        self._pending: asyncio.Task[tuple[SecretStr, int]] | None = None

    def __repr__(self) -> str:
        return (
            f"OAuth2ClientCredentials(token_url={self.token_url!r}, client_id={self.client_id!r},"
            f" client_secret=<hidden>, scope={self.scope!r}, audience={self.audience!r},"
            f" client_auth={self.client_auth!r})"
        )

    async def apply(
        self, headers: MutableMapping[str, str], query: MutableMapping[str, str]
    ) -> None:
        token, generation = await self.token()
        _APPLIED.set({**_APPLIED.get({}), self._serial: generation})
        set_header(headers, "Authorization", f"Bearer {token.get_secret_value()}")

    async def token(self) -> tuple[SecretStr, int]:
        """The current token and its generation, fetched first if there is none or it is due."""
        if self._token is not None and (
            self._refresh_at is None or self._clock.now() < self._refresh_at
        ):
            return self._token, self._generation
        if self._pending is None:
            self._pending = asyncio.create_task(self._fetch())
            # Retrieved here, so that a failure that every waiter gave up on is not reported
            # as "never retrieved"; the waiters get it through their own await.
            self._pending.add_done_callback(_consume)
        # Shielded: a caller cancelled while waiting must not cancel the others' request.
        return await asyncio.shield(self._pending)

    async def refresh(self) -> bool:
        """After a 401: True (and the token dropped) unless the token was already a fresh one.

        A 401 for a token that has since been replaced is answered True: the retry uses the new
        one. A 401 for a token fetched because its forerunner got a 401 is answered False: the
        authorization server issues tokens the API refuses, and more of them will not help.
        """
        used = _APPLIED.get({}).get(self._serial, self._generation)
        if used != self._generation or self._token is None:
            return True
        if self._from_refresh:
            return False
        log.info("dropping the OAuth2 token from %s after a 401", self.token_url)
        self._token = None
        self._refresh_at = None
        self._after_refresh = True
        return True

    async def close(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None and not pending.done():
            pending.cancel()
        self._token = None
        self._refresh_at = None

    # -- the token request ----------------------------------------------------------------------

    async def _fetch(self) -> tuple[SecretStr, int]:
        try:
            started = self._clock.now()
            status, raw, retry_after = await self._post()
            if 200 <= status < 300:
                token, lifetime = self._parse_token(raw)
            else:
                raise self._failure(status, raw, retry_after)
            self._token = token
            self._generation += 1
            self._from_refresh, self._after_refresh = self._after_refresh, False
            # Counted from before the request, so the time the answer took shortens the
            # token's life here rather than outlasting it.
            margin = min(self.refresh_before, lifetime / 2) if lifetime is not None else 0.0
            self._refresh_at = None if lifetime is None else started + lifetime - margin
            log.debug("fetched an OAuth2 token from %s (expires in %s s)", self.token_url, lifetime)
            return token, self._generation
        finally:
            if self._pending is asyncio.current_task():
                self._pending = None

    async def _post(self) -> tuple[int, bytes, float | None]:
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        if self.audience:
            form["audience"] = self.audience
        headers = {"Accept": "application/json"}
        if self.client_auth == "basic":
            # RFC 6749 §2.3.1: both are form-urlencoded before they are joined and encoded.
            pair = f"{quote_plus(self.client_id)}:{quote_plus(self._secret.get_secret_value())}"
            headers["Authorization"] = f"Basic {base64.b64encode(pair.encode()).decode()}"
        else:
            form["client_id"] = self.client_id
            form["client_secret"] = self._secret.get_secret_value()
        try:
            # No redirects: following one would send the client secret to wherever it points.
            async with self._session.post(
                self.token_url,
                data=form,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                # A longer answer is cut, which makes a token answer unreadable (as it should).
                raw, _ = await read_limited(response, _MAX_RESPONSE_BYTES)
                return response.status, raw, parse_retry_after(response.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError) as error:
            cause = f"{type(error).__name__}: {error}".rstrip(": ")
            raise TransientDeliveryError(
                f"token request to {self.token_url} failed ({self._scrub(cause)})"
            ) from None

    def _parse_token(self, raw: bytes) -> tuple[SecretStr, float | None]:
        # Never an excerpt of this body: it holds the token.
        try:
            document = json.loads(raw)
        except ValueError:
            document = None
        if not isinstance(document, dict):
            raise self._bad_answer("its answer is not a JSON object")
        token = document.get("access_token")
        if not isinstance(token, str) or not _TOKEN.fullmatch(token):
            raise self._bad_answer("its answer has no usable access_token")
        token_type = document.get("token_type", "Bearer")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise self._bad_answer("its token_type is not Bearer, the only type supported")
        expires_in = document.get("expires_in")
        if isinstance(expires_in, str) and expires_in.isascii() and expires_in.strip().isdigit():
            expires_in = int(expires_in)  # some servers send it as text
        if isinstance(expires_in, bool) or not isinstance(expires_in, int | float | None):
            raise self._bad_answer("its expires_in is not a number of seconds")
        return SecretStr(token), None if expires_in is None else max(float(expires_in), 0.0)

    def _bad_answer(self, problem: str) -> PermanentDeliveryError:
        return PermanentDeliveryError(
            f"token request to {self.token_url} succeeded, but {problem}; check that token_url"
            " is the OAuth2 token endpoint"
        )

    def _failure(
        self, status: int, raw: bytes, retry_after: float | None
    ) -> TransientDeliveryError | PermanentDeliveryError:
        # Scrubbed before it is cut, so that no cut-off start of the secret stays.
        excerpt = self._scrub(raw.decode("utf-8", "replace"))[:_EXCERPT_CHARS]
        where = f"token request to {self.token_url}"
        if is_transient(status):
            return TransientDeliveryError(
                f"{where} answered HTTP {status}",
                status=status,
                excerpt=excerpt,
                retry_after=retry_after,
            )
        if 300 <= status < 400:
            return PermanentDeliveryError(
                f"{where} answered a redirect (HTTP {status}); set token_url to the URL it points"
                " to",
                status=status,
                excerpt=excerpt,
            )
        code, description = _oauth_error(raw)
        said = f", error {code}" if code else ""
        if description:
            said += f": {self._scrub(description)}"
        hint = _HINTS.get(code or "", "check token_url, client_id, client_secret and scope")
        return PermanentDeliveryError(
            f"{where} was refused (HTTP {status}{said}); {hint}", status=status, excerpt=excerpt
        )

    def _scrub(self, text: str) -> str:
        """`text` without the client secret, in any of the forms it was sent in."""
        secret = self._secret.get_secret_value()
        pair = f"{quote_plus(self.client_id)}:{quote_plus(secret)}"
        for form in (base64.b64encode(pair.encode()).decode(), quote_plus(secret), secret):
            text = text.replace(form, "<hidden>")
        return text


def _consume(task: "asyncio.Task[Any]") -> None:
    if not task.cancelled():
        task.exception()


def _oauth_error(raw: bytes) -> tuple[str | None, str | None]:
    """RFC 6749 §5.2's `error` and `error_description`, if the body is such an answer."""
    try:
        document = json.loads(raw)
    except ValueError:
        return None, None
    if not isinstance(document, dict):
        return None, None
    code = document.get("error")
    description = document.get("error_description")
    code = code if isinstance(code, str) and _ERROR_CODE.fullmatch(code) else None
    if not isinstance(description, str) or not description.strip():
        return code, None
    description = " ".join(description.split())
    return code, description if len(description) <= 200 else description[:197] + "..."
