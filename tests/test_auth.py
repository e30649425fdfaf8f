"""Inbound authentication: HMAC webhook signatures over real vendor payloads, API keys, Basic.

The webhook bodies are real third-party payloads (tests/data/webhooks, see its NOTICE); the
signatures are computed here with test secrets, the way each vendor documents its scheme.
"""

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from bus.auth import (
    ApiKey,
    AuthenticationError,
    BasicAuth,
    HmacSignature,
    Verifier,
)
from bus.errors import BusError, ConfigError

WEBHOOKS = Path(__file__).parent / "data" / "webhooks"
STRIPE_BODY = (WEBHOOKS / "stripe" / "customer.created.event.json").read_bytes()
GITHUB_BODY = (WEBHOOKS / "github" / "push.payload.json").read_bytes()
# Shopify's metadata file holds the body as the value of "response", serialised here compactly as
# a webhook body would be. Python's ints keep the large (source-rounded) ids exactly as written.
SHOPIFY_BODY = json.dumps(
    json.loads((WEBHOOKS / "shopify" / "orders-create.metadata.json").read_bytes())["response"],
    separators=(",", ":"),
    ensure_ascii=False,
).encode()

NOW = 1_700_000_000
STRIPE_SECRET = "whsec_stripe_test_5d1f0c8e"
STRIPE_OLD_SECRET = "whsec_stripe_old_7a2b9e41"
GITHUB_SECRET = "github-test-secret-3c9d"
GITHUB_OLD_SECRET = "github-old-secret-81fe"
SHOPIFY_SECRET = "shpss_test_secret_a4e2"
API_KEYS = ("api-key-crm-0b7c5e", "api-key-shop-9f13d2")
PASSWORD = "pa55:word-é-6e1a"  # a colon and a non-ASCII letter, both allowed in a password
SHOP_PASSWORD = "shop-password-2f9b"
SECRETS = (
    STRIPE_SECRET,
    STRIPE_OLD_SECRET,
    GITHUB_SECRET,
    GITHUB_OLD_SECRET,
    SHOPIFY_SECRET,
    *API_KEYS,
    PASSWORD,
    SHOP_PASSWORD,
)

# Every signature a test computes with a right secret is one a verifier expects; none of them
# may show up in an error message either.
expected_signatures: set[str] = set()


def hmac_hex(secret: str, message: bytes, algorithm: str = "sha256") -> str:
    signature = hmac.new(secret.encode(), message, algorithm).hexdigest()
    if secret in SECRETS:
        expected_signatures.add(signature)
    return signature


def hmac_base64(secret: str, message: bytes) -> str:
    digest = hmac.new(secret.encode(), message, hashlib.sha256).digest()
    signature = base64.b64encode(digest).decode()
    expected_signatures.add(signature)
    return signature


def stripe_v1(body: bytes, timestamp: int, secret: str = STRIPE_SECRET) -> str:
    return hmac_hex(secret, f"{timestamp}.".encode() + body)


def one_byte_changed(body: bytes) -> bytes:
    """`body` with the lowest bit of its middle byte flipped."""
    middle = len(body) // 2
    return body[:middle] + bytes([body[middle] ^ 1]) + body[middle + 1 :]


def refused(verifier: Verifier, headers: Mapping[str, str], **request: Any) -> str:
    """The reason `verifier` gives for refusing; checks that it gives away no secret."""
    request.setdefault("body", b"")
    request.setdefault("query", {})
    request.setdefault("now", NOW)
    with pytest.raises(AuthenticationError) as caught:
        verifier.verify(headers, **request)
    error = caught.value
    assert isinstance(error, BusError)
    shown = f"{error} {error!r} {error.reason} {error.challenge}"
    for secret in (*SECRETS, *expected_signatures):
        assert secret not in shown
    return error.reason


# --- Stripe ---------------------------------------------------------------------------------


def test_stripe_signature_over_the_real_payload_verifies() -> None:
    header = f"t={NOW},v1={stripe_v1(STRIPE_BODY, NOW)}"

    verified = HmacSignature.stripe(STRIPE_SECRET).verify(
        {"stripe-signature": header}, body=STRIPE_BODY, now=NOW + 5
    )

    assert verified.timestamp == NOW
    assert verified.delivery_id is None
    assert verified.secret_index == 0


def test_stripe_one_byte_changed_in_the_body_fails() -> None:
    header = f"t={NOW},v1={stripe_v1(STRIPE_BODY, NOW)}"
    changed = one_byte_changed(STRIPE_BODY)

    reason = refused(
        HmacSignature.stripe(STRIPE_SECRET), {"Stripe-Signature": header}, body=changed
    )

    assert reason == "the Stripe-Signature signature does not match the request"


def test_stripe_timestamp_is_signed_too() -> None:
    signature = stripe_v1(STRIPE_BODY, NOW)

    reason = refused(
        HmacSignature.stripe(STRIPE_SECRET),
        {"Stripe-Signature": f"t={NOW + 1},v1={signature}"},
        body=STRIPE_BODY,
    )

    assert reason == "the Stripe-Signature signature does not match the request"


def test_stripe_wrong_secret_fails() -> None:
    header = f"t={NOW},v1={stripe_v1(STRIPE_BODY, NOW, 'whsec_somebody_else')}"

    reason = refused(
        HmacSignature.stripe(STRIPE_SECRET), {"Stripe-Signature": header}, body=STRIPE_BODY
    )

    assert reason == "the Stripe-Signature signature does not match the request"


def test_stripe_stale_timestamp_fails() -> None:
    header = f"t={NOW - 412},v1={stripe_v1(STRIPE_BODY, NOW - 412)}"

    reason = refused(
        HmacSignature.stripe(STRIPE_SECRET), {"Stripe-Signature": header}, body=STRIPE_BODY
    )

    assert reason == "signature timestamp is 412 s old; at most 300 s accepted"


def test_stripe_future_timestamp_fails() -> None:
    header = f"t={NOW + 412},v1={stripe_v1(STRIPE_BODY, NOW + 412)}"

    reason = refused(
        HmacSignature.stripe(STRIPE_SECRET), {"Stripe-Signature": header}, body=STRIPE_BODY
    )

    assert reason == (
        "signature timestamp is 412 s in the future; at most 300 s of clock difference accepted"
    )


@pytest.mark.parametrize("offset", [-300, 300])
def test_stripe_timestamp_at_the_tolerance_passes(offset: int) -> None:
    header = f"t={NOW + offset},v1={stripe_v1(STRIPE_BODY, NOW + offset)}"

    HmacSignature.stripe(STRIPE_SECRET).verify(
        {"Stripe-Signature": header}, body=STRIPE_BODY, now=NOW
    )


def test_stripe_tolerance_is_configurable() -> None:
    header = f"t={NOW - 61},v1={stripe_v1(STRIPE_BODY, NOW - 61)}"

    reason = refused(
        HmacSignature.stripe(STRIPE_SECRET, tolerance=60),
        {"Stripe-Signature": header},
        body=STRIPE_BODY,
    )

    assert reason == "signature timestamp is 61 s old; at most 60 s accepted"


def test_stripe_any_of_several_v1_signatures_is_enough() -> None:
    # During a secret rotation Stripe signs with the old and the new secret.
    old = stripe_v1(STRIPE_BODY, NOW, STRIPE_OLD_SECRET)
    new = stripe_v1(STRIPE_BODY, NOW, STRIPE_SECRET)
    header = f"t={NOW},v1={old},v1={new}"

    verified = HmacSignature.stripe(STRIPE_SECRET).verify(
        {"Stripe-Signature": header}, body=STRIPE_BODY, now=NOW
    )

    assert verified.secret_index == 0


def test_stripe_ignores_v0_and_other_schemes() -> None:
    v1 = stripe_v1(STRIPE_BODY, NOW)
    verifier = HmacSignature.stripe(STRIPE_SECRET)

    verifier.verify(
        {"Stripe-Signature": f"t={NOW}, v0=not-even-hex, v1={v1}, x9=whatever"},
        body=STRIPE_BODY,
        now=NOW,
    )
    # A v0 signature that would be right is still not a v1 signature.
    reason = refused(verifier, {"Stripe-Signature": f"t={NOW},v0={v1}"}, body=STRIPE_BODY)
    assert reason == "malformed Stripe-Signature header: no v1= signature"


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("", "expected comma-separated key=value items"),
        ("garbage", "expected comma-separated key=value items"),
        ("t=1700000000,,v1=00", "expected comma-separated key=value items"),
        ("t=1700000000", "no v1= signature"),
        ("v1={sig}", "expected one t= timestamp, found 0"),
        ("t=1700000000,t=1700000001,v1={sig}", "expected one t= timestamp, found 2"),
        ("t=soon,v1={sig}", "the timestamp is not a whole number of seconds"),
        ("t=-1700000000,v1={sig}", "the timestamp is not a whole number of seconds"),
        ("t=1700000000,v1=xyz", "the signature is not a hex-encoded sha256 digest"),
        ("t=1700000000,v1=abcd", "the signature is not a hex-encoded sha256 digest"),
    ],
)
def test_stripe_malformed_header_fails(header: str, reason: str) -> None:
    header = header.replace("{sig}", stripe_v1(STRIPE_BODY, NOW))

    got = refused(
        HmacSignature.stripe(STRIPE_SECRET), {"Stripe-Signature": header}, body=STRIPE_BODY
    )

    assert got == f"malformed Stripe-Signature header: {reason}"


def test_stripe_missing_header_fails() -> None:
    reason = refused(HmacSignature.stripe(STRIPE_SECRET), {"X-Other": "1"}, body=STRIPE_BODY)

    assert reason == "missing Stripe-Signature header"


# --- GitHub ---------------------------------------------------------------------------------


def test_github_signature_over_the_real_payload_verifies() -> None:
    headers = {
        "X-Hub-Signature-256": "sha256=" + hmac_hex(GITHUB_SECRET, GITHUB_BODY),
        "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
    }

    verified = HmacSignature.github(GITHUB_SECRET).verify(headers, body=GITHUB_BODY)

    assert verified.delivery_id == "72d3162e-cc78-11e3-81ab-4c9367dc0958"
    assert verified.timestamp is None


def test_github_one_byte_changed_in_the_body_fails() -> None:
    header = "sha256=" + hmac_hex(GITHUB_SECRET, GITHUB_BODY)
    changed = one_byte_changed(GITHUB_BODY)

    reason = refused(
        HmacSignature.github(GITHUB_SECRET), {"X-Hub-Signature-256": header}, body=changed
    )

    assert reason == "the X-Hub-Signature-256 signature does not match the request"


def test_github_wrong_secret_fails() -> None:
    header = "sha256=" + hmac_hex("not-the-secret", GITHUB_BODY)

    reason = refused(
        HmacSignature.github(GITHUB_SECRET), {"X-Hub-Signature-256": header}, body=GITHUB_BODY
    )

    assert reason == "the X-Hub-Signature-256 signature does not match the request"


def test_github_signature_without_the_sha256_prefix_fails() -> None:
    header = hmac_hex(GITHUB_SECRET, GITHUB_BODY)  # right digest, prefix left out

    reason = refused(
        HmacSignature.github(GITHUB_SECRET), {"X-Hub-Signature-256": header}, body=GITHUB_BODY
    )

    assert reason == "malformed X-Hub-Signature-256 header: the signature must start with 'sha256='"


def test_github_rotation_accepts_either_secret_and_says_which() -> None:
    verifier = HmacSignature.github([GITHUB_SECRET, GITHUB_OLD_SECRET])

    for index, secret in enumerate([GITHUB_SECRET, GITHUB_OLD_SECRET]):
        header = "sha256=" + hmac_hex(secret, GITHUB_BODY)
        verified = verifier.verify({"X-Hub-Signature-256": header}, body=GITHUB_BODY)
        assert verified.secret_index == index
    refused(
        verifier,
        {"X-Hub-Signature-256": "sha256=" + hmac_hex("third", GITHUB_BODY)},
        body=GITHUB_BODY,
    )


# --- Shopify --------------------------------------------------------------------------------


def test_shopify_signature_over_the_real_payload_verifies() -> None:
    signature = hmac_base64(SHOPIFY_SECRET, SHOPIFY_BODY)
    # Standard, padded Base64: a SHA-256 digest (32 bytes) is 44 characters, ending in one "=".
    assert len(signature) == 44
    assert signature.endswith("=")
    assert not signature.endswith("==")
    headers = {"X-Shopify-Hmac-Sha256": signature, "x-shopify-webhook-id": "b54557e4-bdd9-4b37"}

    verified = HmacSignature.shopify(SHOPIFY_SECRET).verify(headers, body=SHOPIFY_BODY)

    assert verified.delivery_id == "b54557e4-bdd9-4b37"


def test_shopify_one_byte_changed_in_the_body_fails() -> None:
    signature = hmac_base64(SHOPIFY_SECRET, SHOPIFY_BODY)
    changed = one_byte_changed(SHOPIFY_BODY)

    reason = refused(
        HmacSignature.shopify(SHOPIFY_SECRET), {"X-Shopify-Hmac-Sha256": signature}, body=changed
    )

    assert reason == "the X-Shopify-Hmac-Sha256 signature does not match the request"


def test_shopify_same_json_serialised_differently_fails() -> None:
    # The signature covers the bytes, not the JSON value: a re-serialised body is not the body.
    signature = hmac_base64(SHOPIFY_SECRET, SHOPIFY_BODY)
    reformatted = json.dumps(json.loads(SHOPIFY_BODY), indent=2).encode()

    refused(
        HmacSignature.shopify(SHOPIFY_SECRET),
        {"X-Shopify-Hmac-Sha256": signature},
        body=reformatted,
    )


def test_shopify_wrong_secret_fails() -> None:
    signature = base64.b64encode(
        hmac.new(b"another-app", SHOPIFY_BODY, hashlib.sha256).digest()
    ).decode()

    reason = refused(
        HmacSignature.shopify(SHOPIFY_SECRET),
        {"X-Shopify-Hmac-Sha256": signature},
        body=SHOPIFY_BODY,
    )

    assert reason == "the X-Shopify-Hmac-Sha256 signature does not match the request"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda sig: sig.rstrip("="),  # padding left out
        lambda sig: sig[:20] + "*" + sig[21:],  # outside the Base64 alphabet
        lambda sig: base64.b64decode(sig).hex(),  # the right digest, but hex
    ],
    ids=["unpadded", "bad-character", "hex"],
)
def test_shopify_signature_must_be_padded_base64(mangle: Any) -> None:
    signature = mangle(hmac_base64(SHOPIFY_SECRET, SHOPIFY_BODY))

    reason = refused(
        HmacSignature.shopify(SHOPIFY_SECRET),
        {"X-Shopify-Hmac-Sha256": signature},
        body=SHOPIFY_BODY,
    )

    assert reason == (
        "malformed X-Shopify-Hmac-Sha256 header: the signature is not a base64-encoded sha256"
        " digest"
    )


# --- The generic mechanism ------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "sha512"])
def test_generic_algorithms_and_prefix(algorithm: str) -> None:
    # GitHub's legacy X-Hub-Signature is the sha1 case.
    verifier = HmacSignature(
        GITHUB_SECRET,
        header="X-Signature",
        algorithm=algorithm,  # type: ignore[arg-type]  # a string from configuration
        prefix=f"{algorithm}=",
    )
    header = f"{algorithm}=" + hmac_hex(GITHUB_SECRET, GITHUB_BODY, algorithm)

    verifier.verify({"X-Signature": header}, body=GITHUB_BODY)
    refused(verifier, {"X-Signature": header}, body=GITHUB_BODY + b" ")


def test_generic_timestamp_in_a_header_of_its_own() -> None:
    # Slack's scheme: v0=hex(HMAC("v0:<timestamp>:<body>")), the timestamp in its own header.
    verifier = HmacSignature(
        GITHUB_SECRET,
        header="X-Slack-Signature",
        prefix="v0=",
        signed_payload="v0:{timestamp}:{body}",
        timestamp_header="X-Slack-Request-Timestamp",
    )
    signature = "v0=" + hmac_hex(GITHUB_SECRET, f"v0:{NOW}:".encode() + GITHUB_BODY)
    headers = {"X-Slack-Signature": signature, "X-Slack-Request-Timestamp": str(NOW)}

    assert verifier.verify(headers, body=GITHUB_BODY, now=NOW).timestamp == NOW
    assert refused(verifier, {"X-Slack-Signature": signature}, body=GITHUB_BODY) == (
        "missing X-Slack-Request-Timestamp header"
    )
    assert refused(verifier, headers, body=GITHUB_BODY, now=NOW + 301) == (
        "signature timestamp is 301 s old; at most 300 s accepted"
    )


def test_body_with_braces_and_placeholders_is_signed_as_is() -> None:
    body = b'{"text": "{timestamp} and {body}"}'
    header = f"t={NOW},v1={stripe_v1(body, NOW)}"

    HmacSignature.stripe(STRIPE_SECRET).verify({"Stripe-Signature": header}, body=body, now=NOW)


def test_a_header_repeated_with_different_values_is_refused() -> None:
    right = "sha256=" + hmac_hex(GITHUB_SECRET, GITHUB_BODY)
    wrong = "sha256=" + hmac_hex("other", GITHUB_BODY)

    reason = refused(
        HmacSignature.github(GITHUB_SECRET),
        {"X-Hub-Signature-256": right, "x-hub-signature-256": wrong},
        body=GITHUB_BODY,
    )

    assert reason == "the X-Hub-Signature-256 header is given more than once, with different values"


@pytest.mark.parametrize(
    "options",
    [
        {"header": ""},
        {"header": "X-Sig", "algorithm": "md5"},
        {"header": "X-Sig", "encoding": "base32"},
        {"header": "X-Sig", "signed_payload": "{timestamp}"},
        {"header": "X-Sig", "signed_payload": "{timestamp}.{body}"},  # no timestamp source
        {"header": "X-Sig", "timestamp_header": "X-Time"},  # a timestamp that is not signed
        {"header": "X-Sig", "timestamp_key": "t", "signed_payload": "{timestamp}.{body}"},
        {"header": "X-Sig", "tolerance": 0},
    ],
)
def test_invalid_hmac_configuration_is_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        HmacSignature(GITHUB_SECRET, **options)


@pytest.mark.parametrize("secrets", [[], "", [GITHUB_SECRET, ""]])
def test_missing_or_empty_secrets_are_refused(secrets: Any) -> None:
    with pytest.raises(ConfigError):
        HmacSignature.github(secrets)


# --- API keys -------------------------------------------------------------------------------


def test_api_key_in_the_header() -> None:
    verifier = ApiKey(list(API_KEYS))

    verifier.verify({"X-API-Key": API_KEYS[0]})
    verifier.verify({"x-api-key": API_KEYS[1]})


def test_api_key_in_the_query() -> None:
    verifier = ApiKey(API_KEYS[0], header=None, query_parameter="api_key")

    verifier.verify({}, query={"api_key": API_KEYS[0]})
    # The query parameter alone was configured, so a key in the default header does not count.
    assert refused(verifier, {"X-API-Key": API_KEYS[0]}) == (
        "missing API key: send it in the api_key query parameter"
    )


def test_api_key_header_first_then_query() -> None:
    verifier = ApiKey(API_KEYS[0], query_parameter="api_key")

    verifier.verify({}, query={"api_key": API_KEYS[0]})
    assert refused(verifier, {"X-API-Key": "wrong"}, query={"api_key": API_KEYS[0]}) == (
        "the API key is not valid"
    )


def test_api_key_missing() -> None:
    verifier = ApiKey(list(API_KEYS), query_parameter="api_key")

    assert refused(verifier, {}, query={"other": "x"}) == (
        "missing API key: send it in the X-API-Key header or the api_key query parameter"
    )
    assert refused(verifier, {"X-API-Key": ""}).startswith("missing API key")


def test_api_key_wrong() -> None:
    verifier = ApiKey(list(API_KEYS))

    assert refused(verifier, {"X-API-Key": API_KEYS[0] + "x"}) == "the API key is not valid"
    assert refused(verifier, {"X-API-Key": API_KEYS[0][:-1]}) == "the API key is not valid"
    # What a framework makes of bytes that are not UTF-8: refused, not a crash.
    assert refused(verifier, {"X-API-Key": "key-\udcff"}) == "the API key is not valid"


def test_api_key_configuration() -> None:
    with pytest.raises(ConfigError):
        ApiKey(API_KEYS[0], header=None)
    with pytest.raises(ConfigError):
        ApiKey([])


# --- Basic ----------------------------------------------------------------------------------


def basic(credentials: bytes) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(credentials).decode()}


BASIC = BasicAuth({"crm": SecretStr(PASSWORD), "shop": SHOP_PASSWORD}, realm="orders")


def test_basic_good_credentials_return_the_user() -> None:
    assert BASIC.verify(basic(f"crm:{PASSWORD}".encode())) == "crm"
    # Header name and scheme name in any letter case.
    token = base64.b64encode(f"shop:{SHOP_PASSWORD}".encode()).decode()
    assert BASIC.verify({"authorization": f"basic {token}"}) == "shop"


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing Authorization header: Basic credentials are required"),
        ({"Authorization": "Bearer abc"}, "the Authorization header does not use the Basic scheme"),
        ({"Authorization": "Basic "}, "the Authorization header has no Basic credentials"),
        ({"Authorization": "Basic !!!not-base64"}, "the Basic credentials are not valid base64"),
        ({"Authorization": "Basic Y3JtOnBhc3M"}, "the Basic credentials are not valid base64"),
        ({"Authorization": "Basic Y3Jt\u00e9"}, "the Basic credentials are not valid base64"),
        (basic(b"crm"), "the Basic credentials have no ':' between user name and password"),
        (basic(b"crm:\xff\xfe"), "the Basic credentials are not UTF-8 text"),
        (basic(b"crm:wrong"), "wrong user name or password"),
        (basic(b"crm:" + PASSWORD.encode()[:-1]), "wrong user name or password"),
        (basic(b"nobody:" + PASSWORD.encode()), "wrong user name or password"),
        (basic(b"shop:" + PASSWORD.encode()), "wrong user name or password"),
        (basic(b":"), "wrong user name or password"),
    ],
    ids=[
        "missing",
        "bearer",
        "no-credentials",
        "garbage-base64",
        "unpadded-base64",
        "non-ascii-base64",
        "missing-colon",
        "not-utf8",
        "wrong-password",
        "password-prefix",
        "unknown-user",
        "other-users-password",
        "empty",
    ],
)
def test_basic_refusals_say_why_and_challenge(headers: dict[str, str], reason: str) -> None:
    with pytest.raises(AuthenticationError) as caught:
        BASIC.verify(headers)

    assert caught.value.challenge == 'Basic realm="orders", charset="UTF-8"'
    assert refused(BASIC, headers) == reason


def test_basic_realm_is_quoted() -> None:
    verifier = BasicAuth({"a": "b"}, realm='say "hi" \\ bye')

    assert verifier.challenge == 'Basic realm="say \\"hi\\" \\\\ bye", charset="UTF-8"'


def test_basic_configuration() -> None:
    with pytest.raises(ConfigError):
        BasicAuth({})
    with pytest.raises(ConfigError):
        BasicAuth({"a:b": "c"})
    with pytest.raises(ConfigError):
        BasicAuth({"a": ""})


# --- Secrets stay secret --------------------------------------------------------------------


def test_secrets_never_appear_in_repr_or_str() -> None:
    verifiers: list[Verifier] = [
        HmacSignature.stripe([STRIPE_SECRET, SecretStr(STRIPE_OLD_SECRET)]),
        HmacSignature.github([GITHUB_SECRET, GITHUB_OLD_SECRET.encode()]),
        HmacSignature.shopify(SHOPIFY_SECRET),
        ApiKey(list(API_KEYS), query_parameter="api_key"),
        BASIC,
    ]

    for verifier in verifiers:
        shown = f"{verifier!r} {verifier!s} {vars(verifier)!r}"
        for secret in SECRETS:
            assert secret not in shown
    assert repr(verifiers[0]) == (
        "HmacSignature(header='Stripe-Signature', algorithm='sha256', encoding='hex',"
        " signature_key='v1', timestamp_key='t', signed_payload='{timestamp}.{body}',"
        " tolerance=300, secrets=<2 hidden>)"
    )
