"""Credentials that outbound adapters put on their calls: API keys, Basic, bearer tokens.

Every one follows `OutboundAuth`. The adapter calls `apply` on the headers and query parameters
of each request just before sending it; after a 401 it calls `refresh` once, and tries again
only when that returns True (an OAuth2 token may have been revoked early; a static credential
stays as wrong as it was). `bus.auth.oauth2` has the OAuth2 client-credentials implementation.

Secrets are kept as pydantic `SecretStr`: no repr, log line or error report shows them.
"""

import base64
from collections.abc import MutableMapping
from typing import Protocol, runtime_checkable

from pydantic import SecretBytes, SecretStr

from bus.errors import ConfigError

Secret = str | SecretStr
"""A secret as configuration provides it."""


@runtime_checkable
class OutboundAuth(Protocol):
    """What an outbound adapter calls to authenticate its requests."""

    async def apply(
        self, headers: MutableMapping[str, str], query: MutableMapping[str, str]
    ) -> None:
        """Add the credentials to one request's headers or query parameters."""
        ...

    async def refresh(self) -> bool:
        """After a 401: drop cached credentials; True if trying the request again can help."""
        ...

    async def close(self) -> None:
        """Let go of what is held (a token request under way); the session is not ours."""
        ...


def set_header(headers: MutableMapping[str, str], name: str, value: str) -> None:
    """Set header `name`, replacing it in any letter case (a plain dict keeps case apart)."""
    for existing in [key for key in headers if key.lower() == name.lower()]:
        del headers[existing]
    headers[name] = value


def secret_str(value: Secret | SecretBytes, what: str) -> SecretStr:
    """`value` as a non-empty SecretStr; ConfigError naming `what` (never the value) otherwise."""
    if isinstance(value, SecretBytes):
        value = SecretStr(value.get_secret_value().decode())
    secret = value if isinstance(value, SecretStr) else SecretStr(value)
    if not secret.get_secret_value():
        raise ConfigError(f"{what} must not be empty")
    return secret


class _Static(OutboundAuth):
    """A credential that never changes: a 401 means it is wrong, and asking again cannot help."""

    async def refresh(self) -> bool:
        return False

    async def close(self) -> None:
        return None


class ApiKeyCredential(_Static):
    """An API key sent as it is, in a header (`X-API-Key` by default) or a query parameter.

    Usage::

        auth = ApiKeyCredential(key, header="X-Api-Key")   # or query_parameter="api_key"
        await auth.apply(headers, query)
    """

    def __init__(
        self, key: Secret, *, header: str | None = None, query_parameter: str | None = None
    ) -> None:
        if header and query_parameter:
            raise ConfigError(
                "ApiKeyCredential: set header or query_parameter, not both (the key goes in one)"
            )
        self._key = secret_str(key, "ApiKeyCredential key")
        self.query_parameter = query_parameter or None
        self.header = None if self.query_parameter else header or "X-API-Key"

    def __repr__(self) -> str:
        place = f"header={self.header!r}" if self.header else f"query={self.query_parameter!r}"
        return f"ApiKeyCredential({place}, key=<hidden>)"

    async def apply(
        self, headers: MutableMapping[str, str], query: MutableMapping[str, str]
    ) -> None:
        if self.header:
            set_header(headers, self.header, self._key.get_secret_value())
        elif self.query_parameter:
            query[self.query_parameter] = self._key.get_secret_value()


class BasicCredential(_Static):
    """HTTP Basic (RFC 7617): `Authorization: Basic base64(user:password)`, in UTF-8."""

    def __init__(self, user: str, password: Secret) -> None:
        if ":" in user:
            # RFC 7617: the first colon ends the user name, so the server would read another one.
            raise ConfigError("BasicCredential: the user name must not contain ':'")
        self.user = user
        self._password = secret_str(password, "BasicCredential password")
        token = base64.b64encode(f"{user}:{self._password.get_secret_value()}".encode()).decode()
        self._value = SecretStr(f"Basic {token}")

    def __repr__(self) -> str:
        return f"BasicCredential(user={self.user!r}, password=<hidden>)"

    async def apply(
        self, headers: MutableMapping[str, str], query: MutableMapping[str, str]
    ) -> None:
        set_header(headers, "Authorization", self._value.get_secret_value())


class BearerToken(_Static):
    """A static bearer token (RFC 6750): `Authorization: Bearer <token>`."""

    def __init__(self, token: Secret) -> None:
        self._token = secret_str(token, "BearerToken token")
        if any(char.isspace() for char in self._token.get_secret_value()):
            raise ConfigError("BearerToken: the token must not contain spaces or line breaks")

    def __repr__(self) -> str:
        return "BearerToken(token=<hidden>)"

    async def apply(
        self, headers: MutableMapping[str, str], query: MutableMapping[str, str]
    ) -> None:
        set_header(headers, "Authorization", f"Bearer {self._token.get_secret_value()}")
