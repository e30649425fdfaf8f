"""HMAC webhook signatures: one generic verifier, with Stripe, GitHub and Shopify as presets.

A sender that shares a secret with us signs each request: it computes HMAC(secret, signed string)
and sends the digest in a header. The schemes differ only in details, which are the options here:

| option | Stripe | GitHub | Shopify |
|---|---|---|---|
| `header` | Stripe-Signature | X-Hub-Signature-256 | X-Shopify-Hmac-Sha256 |
| `algorithm`, `encoding` | sha256, hex | sha256, hex | sha256, base64 (padded) |
| `prefix` | | `sha256=` | |
| `signed_payload` | `{timestamp}.{body}` | `{body}` | `{body}` |
| `signature_key`, `timestamp_key` | v1, t (`t=...,v1=...`) | | |
| `delivery_id_header` | | X-GitHub-Delivery | X-Shopify-Webhook-Id |

Secrets are used as given, as their UTF-8 bytes (Stripe's `whsec_...` included; it is not
decoded), which is what the three vendors' own libraries do.

Replay: whoever captures a signed request can send it again. Where a timestamp is signed, the
tolerance bounds that window; GitHub and Shopify sign no time, so the inbound adapter should
later remember `VerifiedSignature.delivery_id` for a while and refuse repeats. Not done here.
"""

import base64
import binascii
import hashlib
import hmac
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from bus.auth.credentials import SecretLike, read_header, secrets_from
from bus.errors import AuthenticationError, ConfigError

Algorithm = Literal["sha1", "sha256", "sha512"]
Encoding = Literal["hex", "base64"]

_ALGORITHMS = ("sha1", "sha256", "sha512")
_ENCODINGS = ("hex", "base64")
# Unix seconds as digits only: int() alone would also take " 12", "+12", "1_2" and "١٢".
_TIMESTAMP = re.compile(r"[0-9]{1,15}")


@dataclass(frozen=True)
class VerifiedSignature:
    """What a successful check learned about the request."""

    timestamp: int | None
    """The signed Unix timestamp, for schemes that sign one (Stripe), else None."""
    delivery_id: str | None
    """The sender's id of this delivery (for replay detection), where the scheme has one."""
    secret_index: int
    """Which configured secret matched (0 is the first): shows when an old one is still used."""


class HmacSignature:
    """Verifies an HMAC signature over the raw request body (and a signed timestamp, if any).

    Usage::

        verifier = HmacSignature.github([new_secret, old_secret])
        verified = verifier.verify(request_headers, body=raw_body)  # raises AuthenticationError

    Options (all but `header` have defaults; see the module docstring for the vendors' values):
    - `signed_payload`: the signed string, `{body}` standing for the raw body bytes and
      `{timestamp}` for the timestamp exactly as sent;
    - `signature_key`: set for a structured header, a comma-separated list of `key=value` items
      (Stripe's `t=...,v1=...`); the signatures are the values under this key, any of which may
      match, and items under other keys (Stripe's v0) are ignored. Unset: the whole header value
      is the signature;
    - `timestamp_key` (in the structured header) or `timestamp_header` (a header of its own):
      where the signed timestamp is; `signed_payload` must use `{timestamp}` exactly when one is
      set, since an unsigned timestamp proves nothing;
    - `prefix`: text before each signature (`sha256=`), required;
    - `tolerance`: seconds a signed timestamp may be in the past or in the future.
    """

    def __init__(
        self,
        secrets: SecretLike | Sequence[SecretLike],
        *,
        header: str,
        algorithm: Algorithm = "sha256",
        encoding: Encoding = "hex",
        prefix: str = "",
        signed_payload: str = "{body}",
        signature_key: str | None = None,
        timestamp_key: str | None = None,
        timestamp_header: str | None = None,
        tolerance: float = 300.0,
        delivery_id_header: str | None = None,
    ) -> None:
        # Options may come from a YAML file, so the Literal types are checked here as well.
        if not header:
            raise ConfigError("HmacSignature: header must name the signature header")
        if algorithm not in _ALGORITHMS:
            raise ConfigError(f"HmacSignature: algorithm must be one of {', '.join(_ALGORITHMS)}")
        if encoding not in _ENCODINGS:
            raise ConfigError(f"HmacSignature: encoding must be one of {', '.join(_ENCODINGS)}")
        if signed_payload.count("{body}") != 1:
            raise ConfigError("HmacSignature: signed_payload must contain {body} exactly once")
        if timestamp_key is not None and signature_key is None:
            raise ConfigError(
                "HmacSignature: timestamp_key needs signature_key (a structured header)"
            )
        if timestamp_key is not None and timestamp_header is not None:
            raise ConfigError("HmacSignature: set timestamp_key or timestamp_header, not both")
        reads_timestamp = timestamp_key is not None or timestamp_header is not None
        if reads_timestamp != ("{timestamp}" in signed_payload):
            raise ConfigError(
                "HmacSignature: signed_payload must use {timestamp} exactly when timestamp_key or"
                " timestamp_header is set"
            )
        if not tolerance > 0:
            raise ConfigError("HmacSignature: tolerance must be a positive number of seconds")
        self._secrets = secrets_from(secrets, "HmacSignature secrets")
        self.header = header
        self.algorithm: Algorithm = algorithm
        self.encoding: Encoding = encoding
        self.prefix = prefix
        self.signed_payload = signed_payload
        self.signature_key = signature_key
        self.timestamp_key = timestamp_key
        self.timestamp_header = timestamp_header
        self.tolerance = float(tolerance)
        self.delivery_id_header = delivery_id_header
        self._digest_size = hashlib.new(algorithm).digest_size

    @classmethod
    def stripe(
        cls, secrets: SecretLike | Sequence[SecretLike], *, tolerance: float = 300.0
    ) -> "HmacSignature":
        """`Stripe-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>...]` over `<t>.<body>`."""
        return cls(
            secrets,
            header="Stripe-Signature",
            signed_payload="{timestamp}.{body}",
            signature_key="v1",
            timestamp_key="t",
            tolerance=tolerance,
        )

    @classmethod
    def github(cls, secrets: SecretLike | Sequence[SecretLike]) -> "HmacSignature":
        """`X-Hub-Signature-256: sha256=<hex>` over the body; no timestamp is signed."""
        return cls(
            secrets,
            header="X-Hub-Signature-256",
            prefix="sha256=",
            delivery_id_header="X-GitHub-Delivery",
        )

    @classmethod
    def shopify(cls, secrets: SecretLike | Sequence[SecretLike]) -> "HmacSignature":
        """`X-Shopify-Hmac-Sha256: <padded base64>` over the body; no timestamp is signed."""
        return cls(
            secrets,
            header="X-Shopify-Hmac-Sha256",
            encoding="base64",
            delivery_id_header="X-Shopify-Webhook-Id",
        )

    def __repr__(self) -> str:
        # Written by hand so that the secrets never show, not even as a count of characters.
        options = [
            f"header={self.header!r}",
            f"algorithm={self.algorithm!r}",
            f"encoding={self.encoding!r}",
        ]
        for name in ("prefix", "signature_key", "timestamp_key", "timestamp_header"):
            if value := getattr(self, name):
                options.append(f"{name}={value!r}")
        if "{timestamp}" in self.signed_payload:
            options.append(f"signed_payload={self.signed_payload!r}")
            options.append(f"tolerance={self.tolerance:g}")
        options.append(f"secrets=<{len(self._secrets)} hidden>")
        return f"HmacSignature({', '.join(options)})"

    def verify(
        self,
        headers: Mapping[str, str],
        *,
        body: bytes,
        query: Mapping[str, str] | None = None,
        now: float | None = None,
    ) -> VerifiedSignature:
        """Return what was verified, or raise AuthenticationError saying what is wrong.

        `body` must be the raw bytes as received: a body parsed and serialised again (even
        without a visible change) no longer matches. `now` is Unix time, `time.time()` if None.
        `query` is unused, taken so that every verifier is called alike.
        """
        value = read_header(headers, self.header)
        if value is None:
            raise AuthenticationError(f"missing {self.header} header")
        timestamp_text, signatures = self._parse(value.strip())
        if self.timestamp_header is not None:
            timestamp_text = read_header(headers, self.timestamp_header)
            if timestamp_text is None:
                raise AuthenticationError(f"missing {self.timestamp_header} header")
            timestamp_text = timestamp_text.strip()
        timestamp = None
        if timestamp_text is not None:
            if not _TIMESTAMP.fullmatch(timestamp_text):
                raise AuthenticationError(
                    f"malformed {self.timestamp_header or self.header} header: the timestamp is"
                    " not a whole number of seconds"
                )
            timestamp = int(timestamp_text)

        signed = self._signed_string(body, timestamp_text)
        matched = None
        # Every secret against every signature, without stopping at the first match, so the
        # time taken does not tell which one matched.
        for index, secret in enumerate(self._secrets):
            expected = hmac.digest(secret.get_secret_value(), signed, self.algorithm)
            for signature in signatures:
                if hmac.compare_digest(expected, signature) and matched is None:
                    matched = index
        if matched is None:
            raise AuthenticationError(f"the {self.header} signature does not match the request")
        # The age is checked only once the signature holds: for a forged request the timestamp
        # means nothing, for a genuine one "too old" is the useful answer (a replay, or a clock).
        if timestamp is not None:
            self._check_age(timestamp, time.time() if now is None else now)
        delivery_id = None
        if self.delivery_id_header is not None:
            delivery_id = read_header(headers, self.delivery_id_header)
        return VerifiedSignature(timestamp, delivery_id, matched)

    def _parse(self, value: str) -> tuple[str | None, list[bytes]]:
        """The timestamp (if the header carries one) and the decoded signatures in the header."""
        if self.signature_key is None:
            return None, [self._decode(value)]
        timestamps: list[str] = []
        signatures: list[bytes] = []
        for item in value.split(","):
            key, equals, item_value = item.strip().partition("=")
            if not equals:
                raise AuthenticationError(
                    f"malformed {self.header} header: expected comma-separated key=value items"
                )
            if key == self.timestamp_key:
                timestamps.append(item_value)
            elif key == self.signature_key:
                signatures.append(self._decode(item_value))
        if self.timestamp_key is not None and len(timestamps) != 1:
            raise AuthenticationError(
                f"malformed {self.header} header: expected one {self.timestamp_key}= timestamp,"
                f" found {len(timestamps)}"
            )
        if not signatures:
            raise AuthenticationError(
                f"malformed {self.header} header: no {self.signature_key}= signature"
            )
        return (timestamps[0] if timestamps else None), signatures

    def _decode(self, text: str) -> bytes:
        """One signature as digest bytes; comparing bytes makes hex letter case irrelevant."""
        if not text.startswith(self.prefix):
            raise AuthenticationError(
                f"malformed {self.header} header: the signature must start with {self.prefix!r}"
            )
        text = text.removeprefix(self.prefix)
        try:
            if self.encoding == "hex":
                digest = binascii.a2b_hex(text)
            else:
                # validate=True refuses characters outside the alphabet and missing padding
                # instead of skipping them, as b64decode does by default.
                digest = base64.b64decode(text, validate=True)
        except ValueError:  # binascii.Error, and non-ASCII text
            digest = b""
        if len(digest) != self._digest_size:
            raise AuthenticationError(
                f"malformed {self.header} header: the signature is not a {self.encoding}-encoded"
                f" {self.algorithm} digest"
            )
        return digest

    def _signed_string(self, body: bytes, timestamp: str | None) -> bytes:
        # The body goes in as bytes, never through str.format: it may hold braces, and it must
        # not be decoded and encoded again.
        before, _, after = self.signed_payload.partition("{body}")
        if timestamp is not None:
            before = before.replace("{timestamp}", timestamp)
            after = after.replace("{timestamp}", timestamp)
        return before.encode() + body + after.encode()

    def _check_age(self, timestamp: int, now: float) -> None:
        age = now - timestamp
        if age > self.tolerance:
            raise AuthenticationError(
                f"signature timestamp is {int(age)} s old; at most {self.tolerance:g} s accepted"
            )
        if -age > self.tolerance:
            raise AuthenticationError(
                f"signature timestamp is {int(-age)} s in the future; at most"
                f" {self.tolerance:g} s of clock difference accepted"
            )
