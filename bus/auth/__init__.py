"""Authentication, written once for the REST and SOAP adapters: of inbound requests, and of ours.

Inbound (who may call us):

- `hmac_signature`: `HmacSignature`, an HMAC over the raw body (and a signed timestamp), with
  presets for the webhooks of Stripe, GitHub and Shopify; returns a `VerifiedSignature`.
- `api_key`: `ApiKey`, one of several keys in a header or a query parameter.
- `basic`: `BasicAuth`, HTTP Basic user/password pairs; returns the user name.

Each is a `Verifier`: pure and synchronous, it reads only what the adapter hands it (headers,
query parameters, raw body bytes, the time) and returns, or raises `AuthenticationError`, whose
`reason` is safe to send back with the 401 and whose `challenge` is its WWW-Authenticate value.
Secrets are kept as pydantic `SecretBytes` and never appear in a repr or an error message.

- `jwt_bearer`: `JwtBearer`, a JWT bearer token checked against a JWKS URL or a static key, with
  required scopes and claims; asynchronous (it may fetch keys), returns the verified claims. It
  also raises `AuthorizationError` (403) and `KeySetUnavailableError` (503: the keys could not
  be fetched, not the caller's fault).

Outbound (how we authenticate our calls), each an `OutboundAuth` (`outbound`):

- `outbound`: `ApiKeyCredential`, `BasicCredential`, `BearerToken`, static credentials;
- `oauth2`: `OAuth2ClientCredentials`, a token from the client credentials grant, cached and
  renewed before it expires; token endpoint failures are Transient/PermanentDeliveryError.

`settings` holds the flow-file shapes (`InboundAuth`, `OutboundAuthConfig`) and the builders
`inbound_authenticator` (every inbound kind as one async `RequestAuthenticator`) and
`outbound_auth`.
"""

from collections.abc import Mapping
from typing import Protocol

from bus.auth.api_key import ApiKey
from bus.auth.basic import BasicAuth
from bus.auth.credentials import SecretLike
from bus.auth.hmac_signature import HmacSignature, VerifiedSignature
from bus.auth.jwt_bearer import JwtBearer, KeySetUnavailableError
from bus.auth.oauth2 import OAuth2ClientCredentials
from bus.auth.outbound import ApiKeyCredential, BasicCredential, BearerToken, OutboundAuth
from bus.auth.settings import (
    InboundAuth,
    OutboundAuthConfig,
    RequestAuthenticator,
    VerifierAuthenticator,
    inbound_authenticator,
    outbound_auth,
)
from bus.errors import AuthenticationError, AuthorizationError


class Verifier(Protocol):
    """What an inbound adapter calls for each request before it reads the body as an event."""

    def verify(
        self, headers: Mapping[str, str], *, body: bytes, query: Mapping[str, str], now: float
    ) -> object:
        """Return what was learned (the verifier's own type), or raise AuthenticationError."""
        ...


__all__ = [
    "ApiKey",
    "ApiKeyCredential",
    "AuthenticationError",
    "AuthorizationError",
    "BasicAuth",
    "BasicCredential",
    "BearerToken",
    "HmacSignature",
    "InboundAuth",
    "JwtBearer",
    "KeySetUnavailableError",
    "OAuth2ClientCredentials",
    "OutboundAuth",
    "OutboundAuthConfig",
    "RequestAuthenticator",
    "SecretLike",
    "VerifiedSignature",
    "Verifier",
    "VerifierAuthenticator",
    "inbound_authenticator",
    "outbound_auth",
]
