"""Authentication of inbound requests, written once for the REST and SOAP inbound adapters.

- `hmac_signature`: `HmacSignature`, an HMAC over the raw body (and a signed timestamp), with
  presets for the webhooks of Stripe, GitHub and Shopify; returns a `VerifiedSignature`.
- `api_key`: `ApiKey`, one of several keys in a header or a query parameter.
- `basic`: `BasicAuth`, HTTP Basic user/password pairs; returns the user name.

Each is a `Verifier`: pure and synchronous, it reads only what the adapter hands it (headers,
query parameters, raw body bytes, the time) and returns, or raises `AuthenticationError`, whose
`reason` is safe to send back with the 401 and whose `challenge` is its WWW-Authenticate value.
Secrets are kept as pydantic `SecretBytes` and never appear in a repr or an error message.
"""

from collections.abc import Mapping
from typing import Protocol

from bus.auth.api_key import ApiKey
from bus.auth.basic import BasicAuth
from bus.auth.credentials import SecretLike
from bus.auth.hmac_signature import HmacSignature, VerifiedSignature
from bus.errors import AuthenticationError


class Verifier(Protocol):
    """What an inbound adapter calls for each request before it reads the body as an event."""

    def verify(
        self, headers: Mapping[str, str], *, body: bytes, query: Mapping[str, str], now: float
    ) -> object:
        """Return what was learned (the verifier's own type), or raise AuthenticationError."""
        ...


__all__ = [
    "ApiKey",
    "AuthenticationError",
    "BasicAuth",
    "HmacSignature",
    "SecretLike",
    "VerifiedSignature",
    "Verifier",
]
