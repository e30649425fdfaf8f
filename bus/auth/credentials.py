"""What every inbound verifier shares: how it reads headers and holds and compares secrets."""

import hashlib
import hmac
from collections.abc import Mapping, Sequence

from pydantic import SecretBytes, SecretStr

from bus.errors import AuthenticationError, ConfigError

SecretLike = str | bytes | SecretStr | SecretBytes
"""A secret as configuration provides it; str is taken as its UTF-8 bytes."""
_ONE_SECRET = (str, bytes, SecretStr, SecretBytes)


def read_header(
    headers: Mapping[str, str], name: str, *, challenge: str | None = None
) -> str | None:
    """The value of header `name` in any letter case, or None when it is absent.

    Frameworks hand headers over as plain dicts (case kept as sent) or as multi-dicts that list a
    repeated header once per value, so this looks at every item. The same header with two
    different values is refused: which one a proxy or the framework would pick is not ours to
    guess.
    """
    wanted = name.lower()
    values = {value for key, value in headers.items() if key.lower() == wanted}
    if len(values) > 1:
        raise AuthenticationError(
            f"the {name} header is given more than once, with different values",
            challenge=challenge,
        )
    return next(iter(values), None)


def secrets_from(secrets: SecretLike | Sequence[SecretLike], what: str) -> tuple[SecretBytes, ...]:
    """One secret or several (rotation: old and new are both valid for a while) as SecretBytes.

    Kept as pydantic's SecretBytes so that no repr shows them, nor a log line or error report
    that prints the verifier's attributes.
    An empty list or an empty secret is a configuration mistake that would weaken or disable the
    check, so it fails at construction, naming `what` is wrong but not its value.
    """
    # str and bytes are sequences themselves, so a lone secret is recognised by its type.
    items = [secrets] if isinstance(secrets, _ONE_SECRET) else secrets
    result = tuple(SecretBytes(_raw(item)) for item in items)
    if not result:
        raise ConfigError(f"{what}: at least one is required")
    if any(not item.get_secret_value() for item in result):
        raise ConfigError(f"{what}: an empty value is not allowed")
    return result


def _raw(secret: SecretLike) -> bytes:
    if isinstance(secret, SecretStr | SecretBytes):
        secret = secret.get_secret_value()
    return secret.encode() if isinstance(secret, str) else secret


def same_secret(given: bytes, expected: bytes | SecretBytes) -> bool:
    """Constant-time equality of a presented credential and a configured one.

    compare_digest runs in time independent of the contents but not of the lengths; comparing
    SHA-256 digests (always 32 bytes) keeps the configured secret's length from leaking too.
    """
    if isinstance(expected, SecretBytes):
        expected = expected.get_secret_value()
    return hmac.compare_digest(hashlib.sha256(given).digest(), hashlib.sha256(expected).digest())
