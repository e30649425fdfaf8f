"""API keys: a caller proves who it is by sending one of the configured keys as it is."""

from collections.abc import Mapping, Sequence

from bus.auth.credentials import SecretLike, read_header, same_secret, secrets_from
from bus.errors import AuthenticationError, ConfigError


class ApiKey:
    """Accepts a request that carries one of `keys` in a header, or else in a query parameter.

    Usage::

        verifier = ApiKey([key_for_crm, key_for_shop], query_parameter="api_key")
        verifier.verify(request_headers, query=request_query)  # raises AuthenticationError

    The header (`X-API-Key` by default; None to refuse headers) is looked at first. The query
    parameter is off by default: URLs end up in access logs and browser histories, so a key
    sent there should be thought of as leaked sooner or later.
    """

    def __init__(
        self,
        keys: SecretLike | Sequence[SecretLike],
        *,
        header: str | None = "X-API-Key",
        query_parameter: str | None = None,
    ) -> None:
        if not header and not query_parameter:
            raise ConfigError("ApiKey: set header, query_parameter or both")
        self._keys = secrets_from(keys, "ApiKey keys")
        self.header = header or None
        self.query_parameter = query_parameter or None
        places = []
        if self.header:
            places.append(f"the {self.header} header")
        if self.query_parameter:
            places.append(f"the {self.query_parameter} query parameter")
        self._places = " or ".join(places)

    def __repr__(self) -> str:
        return (
            f"ApiKey(header={self.header!r}, query_parameter={self.query_parameter!r},"
            f" keys=<{len(self._keys)} hidden>)"
        )

    def verify(
        self,
        headers: Mapping[str, str],
        *,
        body: bytes = b"",
        query: Mapping[str, str] | None = None,
        now: float | None = None,
    ) -> None:
        """Return if the request carries a valid key, else raise AuthenticationError.

        `body` and `now` are unused, taken so that every verifier is called alike.
        """
        given = read_header(headers, self.header) if self.header else None
        if not given and self.query_parameter and query is not None:
            given = query.get(self.query_parameter)
        if not given:
            raise AuthenticationError(f"missing API key: send it in {self._places}")
        # surrogatepass: frameworks turn bytes that are not UTF-8 into lone surrogates, which a
        # plain encode() would raise on (a 500 where a 401 is due); such a key just won't match.
        presented = given.encode("utf-8", "surrogatepass")
        # Compared with every key, not stopping at a match, so the time does not tell which.
        matches = [same_secret(presented, key) for key in self._keys]
        if not any(matches):
            raise AuthenticationError("the API key is not valid")
