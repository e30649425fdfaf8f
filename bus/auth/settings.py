"""Authentication as a flow file declares it, for the adapters' own settings, and the builders.

Inbound (who may call us), a mapping with exactly one key::

    auth:
      api_key: {header: X-Api-Key, keys: [k1, k2]}       # or {query: api_key, keys: [...]}
      # basic: {users: {alice: s3cret}, realm: bus}
      # hmac: {preset: stripe, secrets: [whsec_...], tolerance: 5m}    # stripe, github, shopify
      # hmac: {header: X-Signature, algorithm: sha256, encoding: hex, prefix: "sha256=",
      #        signed_payload: "{timestamp}.{body}", timestamp_header: X-Timestamp,
      #        tolerance: 5m, delivery_id_header: X-Delivery, secrets: [...]}
      # jwt: {jwks_url: https://login.example.com/jwks.json, issuer: https://login.example.com/,
      #       audience: https://bus.example.com, algorithms: [RS256], leeway: 30s,
      #       scopes: [events:write], claims: {tenant: acme}}    # or key: <PEM or secret>
      # anonymous: true      # anyone may call, on purpose (a public endpoint); see below

An inbound endpoint without `auth` is only allowed while the HTTP server listens on a loopback
address (bus.flows.validation refuses it otherwise): a caller reaching it over the network must
either prove who they are or be let in by an explicit `anonymous: true`, which a reviewer sees.

Outbound (how we authenticate our calls), a mapping with exactly one key::

    auth:
      api_key: {header: X-Api-Key, key: ...}             # or {query: api_key, key: ...}
      # basic: {user: ..., password: ...}
      # bearer: {token: ...}
      # oauth2: {token_url: https://login.example.com/oauth2/token, client_id: ...,
      #          client_secret: ..., scope: "a b", audience: ..., client_auth: basic,
      #          refresh_before: 30s}

Secrets are pydantic `SecretStr`: a repr or `model_dump_json` shows `**********`, and no
validation message shows a secret's value. Write them as `${VAR}` in the file, not as text.
`inbound_authenticator` and `outbound_auth` build what the adapters call from these.
"""

import ipaddress
import re
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Protocol, Self
from urllib.parse import urlsplit

import aiohttp
from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    SecretStr,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from bus.auth.api_key import ApiKey
from bus.auth.basic import BasicAuth
from bus.auth.hmac_signature import HmacSignature
from bus.auth.jwt_bearer import JwtBearer, check_algorithms, static_key
from bus.auth.oauth2 import OAuth2ClientCredentials
from bus.auth.outbound import ApiKeyCredential, BasicCredential, BearerToken, OutboundAuth
from bus.errors import ConfigError
from bus.flows.model import (
    Block,
    Duration,
    KeyProblems,
    describe_value,
    format_duration,
    json_pattern,
    key_errors,
    parse_duration,
)
from bus.resilience.clock import SYSTEM_CLOCK, Clock

if TYPE_CHECKING:
    from bus.auth import Verifier

# -- value types ----------------------------------------------------------------------------------


def _problem(message: str) -> PydanticCustomError:
    # No context on purpose: messages may hold braces ({body}) that must not be formatted.
    return PydanticCustomError("flow_value", message)


def _secret(value: object) -> object:
    # The value itself never goes into a message, only what kind of thing it is.
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if value is None or isinstance(value, bool | dict | list):
        kind = "true or false" if isinstance(value, bool) else describe_value(value)
        raise _problem(f"expected a secret as text, found {kind}")
    if not isinstance(value, str):
        raise _problem(
            "expected a secret as text, found a number; quote it in YAML (a number may have"
            " lost leading zeros), or better, write it as ${VARIABLE}"
        )
    if not value:
        raise _problem("expected a secret, found empty text; is its ${VARIABLE} set?")
    return value


Secret = Annotated[
    SecretStr,
    BeforeValidator(_secret),
    WithJsonSchema(
        {
            "type": "string",
            "minLength": 1,
            "writeOnly": True,
            "description": "A secret; write it as ${VARIABLE} rather than in the file.",
        }
    ),
]


def _secrets(value: object) -> object:
    return [value] if isinstance(value, str | SecretStr) else value


Secrets = Annotated[
    tuple[Secret, ...],
    BeforeValidator(_secrets),
    Field(min_length=1),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "writeOnly": True},
                {"type": "array", "items": {"type": "string"}, "minItems": 1, "writeOnly": True},
            ],
            "description": "A secret, or a list of them (old and new while rotating).",
        }
    ),
]


def _text_of(expected: str, pattern: re.Pattern[str]) -> Any:
    def validate(value: object) -> str:
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise _problem(f"expected {expected}, found {describe_value(value)}")
        return value

    return PlainValidator(validate)


_HEADER = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
HeaderName = Annotated[
    str,
    _text_of("a header name (letters, digits and -, e.g. X-Api-Key)", _HEADER),
    WithJsonSchema({"type": "string", "pattern": json_pattern(_HEADER.pattern)}),
]
_PARAMETER = re.compile(r"[A-Za-z0-9._~-]+")
QueryName = Annotated[
    str,
    _text_of("a query parameter name (letters, digits, '.', '_', '~' or '-')", _PARAMETER),
    WithJsonSchema({"type": "string", "pattern": json_pattern(_PARAMETER.pattern)}),
]
_USER = re.compile(r"[^:\x00-\x1f\x7f]+")
UserName = Annotated[
    str,
    _text_of("a user name: not empty, without ':' (which ends it in Basic credentials)", _USER),
    WithJsonSchema({"type": "string", "pattern": json_pattern(_USER.pattern)}),
]
_WORD = re.compile(r"\S(?:.*\S)?")
Text = Annotated[
    str,
    _text_of("text (not empty)", _WORD),
    WithJsonSchema({"type": "string", "minLength": 1}),
]

_LOOPBACK = ("localhost", "127.0.0.1", "::1")


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # another name: it may resolve to anything
        return False


def _url(value: object) -> str:
    if isinstance(value, str) and _acceptable_url(value):
        return value
    # A URL with user:password@ is not repeated: the password is in it.
    found = "a URL with user:password@" if "@" in str(value) else describe_value(value)
    raise _problem(
        "expected an https:// URL (http:// only to localhost: keys and tokens must not travel"
        f" unencrypted), without user:password@, found {found}"
    )


def _acceptable_url(value: str) -> bool:
    parts = urlsplit(value)
    if not parts.hostname or parts.username is not None or parts.fragment:
        # user:password@ would end up in logs and error messages.
        return False
    return parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in _LOOPBACK)


Url = Annotated[
    str,
    PlainValidator(_url),
    WithJsonSchema({"type": "string", "pattern": json_pattern(r"https?://\S+")}),
]

_ZERO = re.compile(r"0+(ms|s|m|h)")


def _duration_or_zero(value: object) -> timedelta:
    if isinstance(value, str) and _ZERO.fullmatch(value):
        return timedelta(0)
    return parse_duration(value)


def _format_duration(value: timedelta) -> str:
    return format_duration(value) if value else "0s"


DurationOrZero = Annotated[
    timedelta,
    PlainValidator(_duration_or_zero),
    PlainSerializer(_format_duration, return_type=str, when_used="json"),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": json_pattern(r"\d+(ms|s|m|h)"),
            "description": "A duration: 0s, 200ms, 30s, 5m or 1h.",
        }
    ),
]


def _words(value: object) -> object:
    # Scopes never hold spaces (RFC 6749 §3.3), so "a b" is two of them, as in a token.
    return value.split() if isinstance(value, str) else value


Scopes = Annotated[
    tuple[Text, ...],
    BeforeValidator(_words),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "description": "Space-separated scopes."},
                {"type": "array", "items": {"type": "string"}},
            ]
        }
    ),
]

ClaimValue = str | bool | int | float

# -- shared shapes --------------------------------------------------------------------------------


class AuthBlock(Block):
    """A block holding secrets: a validation error never shows what was given."""

    model_config = ConfigDict(hide_input_in_errors=True)

    def _given(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in type(self).model_fields}

    def _fail(self, problems: KeyProblems) -> None:
        if problems:
            raise key_errors(type(self).__name__, problems, self._given())


def _config_problem(error: ConfigError) -> str:
    """A verifier's ConfigError as a message for the file: the class name is not the user's."""
    return re.sub(r"^\w+: ", "", str(error))


ANONYMOUS = "anonymous"
"""The inbound auth kind that lets anyone call: an explicit opt-in, never a default."""


def _anonymous_problems(settings: object, kinds: str) -> KeyProblems:
    """`anonymous` takes `true` only: `false` would read as "not anonymous" yet ask nothing."""
    if settings is True:
        return []
    others = ", ".join(kind for kind in kinds.split(", ") if kind != ANONYMOUS)
    message = (
        f"expected true (anyone may call, on purpose), found {describe_value(settings)}; to "
        f"require callers to authenticate, set one of {others} instead"
    )
    return [((ANONYMOUS,), message)]


class OneOf(AuthBlock):
    """A mapping with exactly one key, naming the kind of authentication and its settings."""

    _EXAMPLES: ClassVar[str] = ""

    @classmethod
    def _sort_keys(cls, data: dict[Any, Any]) -> tuple[dict[Any, Any], KeyProblems]:
        kept, problems = super()._sort_keys(data)
        kinds = ", ".join(cls.yaml_keys())
        if problems:
            return kept, problems  # a misspelt kind: its "unknown key" message says it all
        if not kept:
            return kept, [((), f"expected one of {kinds}, found none; e.g. {cls._EXAMPLES}")]
        if len(kept) > 1:
            found = ", ".join(map(str, kept))
            message = f"only one of {kinds} may be set, found {found}; keep one"
            return kept, [((key,), message) for key in kept]
        kind, settings = next(iter(kept.items()))
        if kind == ANONYMOUS:
            return kept, _anonymous_problems(settings, kinds)
        if not isinstance(settings, dict | Block):
            message = f"expected the {kind} settings as a mapping, found {describe_value(settings)}"
            return kept, [((kind,), message)]
        return kept, problems

    @property
    def kind(self) -> str:
        """The one key that is set: api_key, basic, ..."""
        return next(key for key in type(self).model_fields if getattr(self, key) is not None)


# -- inbound --------------------------------------------------------------------------------------


class ApiKeyInbound(AuthBlock):
    header: HeaderName | None = Field(
        default=None, description="Header holding the key; default X-API-Key (unless query)."
    )
    query: QueryName | None = Field(
        default=None,
        description="Query parameter holding the key (URLs end up in logs: prefer a header).",
    )
    keys: Secrets = Field(description="The valid keys (several while rotating).")

    def build(self) -> ApiKey:
        header = self.header if self.header or self.query else "X-API-Key"
        return ApiKey(list(self.keys), header=header, query_parameter=self.query)


class BasicInbound(AuthBlock):
    users: dict[UserName, Secret] = Field(
        min_length=1, description="User name -> password of each caller."
    )
    realm: Text = Field(default="bus", description="The realm named in the 401's challenge.")

    def build(self) -> BasicAuth:
        return BasicAuth(dict(self.users), realm=self.realm)


Preset = Literal["stripe", "github", "shopify"]
_CUSTOM_HMAC = (
    "header",
    "algorithm",
    "encoding",
    "prefix",
    "signed_payload",
    "signature_key",
    "timestamp_key",
    "timestamp_header",
    "delivery_id_header",
)


class HmacInbound(AuthBlock):
    preset: Preset | None = Field(
        default=None, description="A vendor's scheme: stripe, github or shopify."
    )
    secrets: Secrets = Field(description="The shared secret(s), as the sender shows them.")
    header: HeaderName | None = Field(
        default=None, description="Header with the signature (without preset)."
    )
    algorithm: Literal["sha1", "sha256", "sha512"] | None = Field(
        default=None, description="Hash of the HMAC; default sha256."
    )
    encoding: Literal["hex", "base64"] | None = Field(
        default=None, description="How the digest is written; default hex."
    )
    prefix: str | None = Field(default=None, description="Text before the signature (sha256=).")
    signed_payload: str | None = Field(
        default=None, description="The signed string: {body}, with {timestamp} if one is signed."
    )
    signature_key: str | None = Field(
        default=None, description="Key of the signatures in a key=value,... header (v1)."
    )
    timestamp_key: str | None = Field(
        default=None, description="Key of the timestamp in that header (t)."
    )
    timestamp_header: HeaderName | None = Field(
        default=None, description="Header with the signed timestamp, if in a header of its own."
    )
    tolerance: Duration | None = Field(
        default=None, description="Age (either way) a signed timestamp may have; default 5m."
    )
    delivery_id_header: HeaderName | None = Field(
        default=None, description="Header with the sender's delivery id."
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        problems: KeyProblems = []
        if self.preset is not None:
            fix = (
                f"remove it, or remove preset to describe a custom scheme ({self.preset} is fixed)"
            )
            problems += [
                ((key,), f"not used with preset: {self.preset}; {fix}")
                for key in _CUSTOM_HMAC
                if getattr(self, key) is not None
            ]
            if self.tolerance is not None and self.preset != "stripe":
                problems.append(
                    (
                        ("tolerance",),
                        f"{self.preset} signs no timestamp, so tolerance does not apply; remove it",
                    )
                )
        elif self.header is None:
            problems.append(
                (
                    (),
                    "set preset (stripe, github or shopify), or header (and the other options)"
                    " for a custom scheme",
                )
            )
        self._fail(problems)
        try:
            self.build()
        except ConfigError as error:
            raise _problem(_config_problem(error)) from None
        return self

    def build(self) -> HmacSignature:
        secrets = list(self.secrets)
        tolerance = (self.tolerance or timedelta(minutes=5)).total_seconds()
        if self.preset == "stripe":
            return HmacSignature.stripe(secrets, tolerance=tolerance)
        if self.preset == "github":
            return HmacSignature.github(secrets)
        if self.preset == "shopify":
            return HmacSignature.shopify(secrets)
        return HmacSignature(
            secrets,
            header=self.header or "",
            algorithm=self.algorithm or "sha256",
            encoding=self.encoding or "hex",
            prefix=self.prefix or "",
            signed_payload=self.signed_payload or "{body}",
            signature_key=self.signature_key,
            timestamp_key=self.timestamp_key,
            timestamp_header=self.timestamp_header,
            tolerance=tolerance,
            delivery_id_header=self.delivery_id_header,
        )


class JwtInbound(AuthBlock):
    jwks_url: Url | None = Field(
        default=None, description="The issuer's JWKS (signing keys); or set key instead."
    )
    key: Secret | None = Field(
        default=None,
        description="A PEM public key (RS*, PS*, ES*, EdDSA) or a shared secret (HS*), "
        "instead of jwks_url.",
    )
    issuer: Text | None = Field(default=None, description="The expected iss claim.")
    audience: Text | tuple[Text, ...] | None = Field(
        default=None,
        description="The expected aud (one, or a list of which the token must name one). "
        "Without it, a token that names an audience is refused.",
    )
    algorithms: tuple[str, ...] = Field(
        default=("RS256",), min_length=1, description="Accepted alg values; default RS256."
    )
    leeway: DurationOrZero = Field(
        default=timedelta(seconds=30),
        description="Clock difference allowed for exp, nbf and iat.",
        json_schema_extra={"default": "30s"},
    )
    scopes: Scopes = Field(default=(), description="Scopes the token must grant (scope/scp).")
    claims: dict[str, ClaimValue] = Field(
        default_factory=dict, description="Claim -> the exact value the token must have."
    )
    realm: Text = Field(default="bus", description="The realm named in the 401's challenge.")

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.jwks_url is None and self.key is None:
            self._fail(
                [
                    (
                        (),
                        "set jwks_url (the issuer's signing keys) or key (a PEM public key or a"
                        " shared secret)",
                    )
                ]
            )
        if self.jwks_url is not None and self.key is not None:
            self._fail([(("key",), "set jwks_url or key, not both; remove one")])
        try:
            algorithms = check_algorithms(self.algorithms)
        except ConfigError as error:
            self._fail([(("algorithms",), _config_problem(error))])
            return self
        if self.key is not None:
            try:
                static_key(self.key, algorithms)
            except ConfigError as error:
                self._fail([(("key",), _config_problem(error))])
        return self

    def build(self, session: aiohttp.ClientSession, clock: Clock = SYSTEM_CLOCK) -> JwtBearer:
        return JwtBearer(
            jwks_url=self.jwks_url,
            session=session if self.jwks_url else None,
            key=self.key,
            issuer=self.issuer,
            audience=self.audience,
            algorithms=self.algorithms,
            leeway=self.leeway.total_seconds(),
            scopes=self.scopes,
            claims=self.claims,
            realm=self.realm,
            clock=clock,
        )


class InboundAuth(OneOf):
    """How the callers of an inbound endpoint prove who they are: exactly one of the keys."""

    _EXAMPLES: ClassVar[str] = "api_key: {header: X-Api-Key, keys: [${API_KEY}]}"

    api_key: ApiKeyInbound | None = Field(default=None, description="A key in a header or query.")
    basic: BasicInbound | None = Field(default=None, description="HTTP Basic user and password.")
    hmac: HmacInbound | None = Field(default=None, description="An HMAC signature of the body.")
    jwt: JwtInbound | None = Field(default=None, description="A JWT bearer token.")
    anonymous: Literal[True] | None = Field(
        default=None,
        description="true: anyone may call, on purpose (without auth, an endpoint is only "
        "allowed on a loopback http.host).",
    )

    @property
    def anonymous_callers(self) -> bool:
        """Whether anyone may call (`anonymous: true`): no credential is asked for."""
        return self.anonymous is True


class RequestAuthenticator(Protocol):
    """What an inbound adapter calls for each request, whatever the kind of authentication.

    It returns what was learned (the user name, the token's claims, the verified signature), or
    raises AuthenticationError (answer 401 with `challenge` as WWW-Authenticate), AuthorizationError
    (403) or `bus.auth.jwt_bearer.KeySetUnavailableError` (503 with Retry-After).
    """

    async def authenticate(
        self, headers: Mapping[str, str], *, body: bytes, query: Mapping[str, str], now: float
    ) -> object: ...


class Anyone:
    """The authenticator of `anonymous: true`: every caller is let in, and nothing is learned."""

    def __repr__(self) -> str:
        return "Anyone()"

    async def authenticate(
        self, headers: Mapping[str, str], *, body: bytes, query: Mapping[str, str], now: float
    ) -> object:
        return None


class VerifierAuthenticator:
    """A synchronous `Verifier` (ApiKey, BasicAuth, HmacSignature) as a RequestAuthenticator."""

    def __init__(self, verifier: "Verifier") -> None:
        self.verifier = verifier

    def __repr__(self) -> str:
        return f"VerifierAuthenticator({self.verifier!r})"

    async def authenticate(
        self, headers: Mapping[str, str], *, body: bytes, query: Mapping[str, str], now: float
    ) -> object:
        return self.verifier.verify(headers, body=body, query=query, now=now)


def inbound_authenticator(
    config: InboundAuth, session: aiohttp.ClientSession, *, clock: Clock = SYSTEM_CLOCK
) -> RequestAuthenticator:
    """The authenticator `config` describes; `session` fetches a JWKS, `clock` paces that.

    Synchronous, as adapters build their endpoints in `add_inbound`: nothing is fetched yet.
    The first token fetches the JWKS, so that an issuer that is down at start gets callers a
    503 instead of stopping the process.
    """
    if config.jwt is not None:
        return config.jwt.build(session, clock)
    if config.api_key is not None:
        return VerifierAuthenticator(config.api_key.build())
    if config.basic is not None:
        return VerifierAuthenticator(config.basic.build())
    if config.hmac is not None:
        return VerifierAuthenticator(config.hmac.build())
    if config.anonymous_callers:
        return Anyone()
    raise ConfigError("inbound auth: no kind of authentication is set")  # validation prevents it


# -- outbound -------------------------------------------------------------------------------------


class ApiKeyOutbound(AuthBlock):
    header: HeaderName | None = Field(default=None, description="Header to send the key in.")
    query: QueryName | None = Field(default=None, description="Or query parameter to send it in.")
    key: Secret = Field(description="The API key.")

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.header is None and self.query is None:
            self._fail([((), "set header (e.g. X-Api-Key) or query: where the API wants the key")])
        if self.header is not None and self.query is not None:
            self._fail([(("query",), "set header or query, not both; the key goes in one")])
        return self

    def build(self) -> ApiKeyCredential:
        return ApiKeyCredential(self.key, header=self.header, query_parameter=self.query)


class BasicOutbound(AuthBlock):
    user: UserName = Field(description="The user name.")
    password: Secret = Field(description="The password.")

    def build(self) -> BasicCredential:
        return BasicCredential(self.user, self.password)


class BearerOutbound(AuthBlock):
    token: Secret = Field(description="The bearer token, sent as Authorization: Bearer <token>.")

    @model_validator(mode="after")
    def _check(self) -> Self:
        if any(char.isspace() for char in self.token.get_secret_value()):
            self._fail([(("token",), "the token holds spaces or line breaks; check its value")])
        return self

    def build(self) -> BearerToken:
        return BearerToken(self.token)


class OAuth2Outbound(AuthBlock):
    token_url: Url = Field(description="The authorization server's token endpoint.")
    client_id: Text = Field(description="Our client id.")
    client_secret: Secret = Field(description="Our client secret.")
    scope: Scopes = Field(default=(), description="Scopes to ask for (space-separated or list).")
    audience: Text | None = Field(
        default=None, description="The API the token is for, where the server wants it named."
    )
    client_auth: Literal["basic", "body"] = Field(
        default="basic",
        description="basic: HTTP Basic to the token endpoint; body: id and secret as form fields.",
    )
    refresh_before: DurationOrZero = Field(
        default=timedelta(seconds=30),
        description="How long before the token expires a new one is fetched.",
        json_schema_extra={"default": "30s"},
    )

    def build(
        self, session: aiohttp.ClientSession, clock: Clock = SYSTEM_CLOCK
    ) -> OAuth2ClientCredentials:
        return OAuth2ClientCredentials(
            token_url=self.token_url,
            client_id=self.client_id,
            client_secret=self.client_secret,
            session=session,
            scope=self.scope or None,
            audience=self.audience,
            client_auth=self.client_auth,
            refresh_before=self.refresh_before.total_seconds(),
            clock=clock,
        )


class OutboundAuthConfig(OneOf):
    """How an outbound adapter authenticates its calls: exactly one of the keys."""

    _EXAMPLES: ClassVar[str] = "bearer: {token: ${API_TOKEN}}"

    api_key: ApiKeyOutbound | None = Field(default=None, description="A key in a header/query.")
    basic: BasicOutbound | None = Field(default=None, description="HTTP Basic.")
    bearer: BearerOutbound | None = Field(default=None, description="A static bearer token.")
    oauth2: OAuth2Outbound | None = Field(
        default=None, description="A token from OAuth2 client credentials."
    )


def outbound_auth(
    config: OutboundAuthConfig, session: aiohttp.ClientSession, clock: Clock = SYSTEM_CLOCK
) -> OutboundAuth:
    """The credential `config` describes; `session` and `clock` serve OAuth2's token requests."""
    if config.oauth2 is not None:
        return config.oauth2.build(session, clock)
    if config.api_key is not None:
        return config.api_key.build()
    if config.basic is not None:
        return config.basic.build()
    if config.bearer is not None:
        return config.bearer.build()
    raise ConfigError("outbound auth: no kind of authentication is set")  # validation prevents it
