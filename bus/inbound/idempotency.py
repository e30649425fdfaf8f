"""Event ids that a caller's retry reproduces.

A caller that retries after a timeout cannot know whether its first attempt was stored; with
the same `Idempotency-Key` (or, for webhooks, the sender's own delivery id) the retry yields the
same event id, so consumers see one event, possibly twice, never two different ones.
"""

import uuid

from bus.events.event import new_event_id

_NAMESPACE = uuid.UUID("0b7f5e2a-9f61-4c4e-8d0e-5a3c2f1b9e47")
HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255


def key_problem(key: str) -> str | None:
    """Why `key` cannot be an idempotency key, or None. It is a Structured Field string: 1 to
    MAX_KEY_LENGTH visible ASCII characters (a header value aiohttp could not decode as UTF-8
    comes with surrogates, which no UUID can be derived from)."""
    if not 0 < len(key) <= MAX_KEY_LENGTH:
        return f"the {HEADER} header must be 1 to {MAX_KEY_LENGTH} characters long"
    if not all(" " <= character <= "~" for character in key):
        return f"the {HEADER} header must be visible ASCII characters only"
    return None


def event_id_for(endpoint: str, key: str | None) -> str:
    """A UUID derived from the endpoint and the caller's key; a random one without a key.
    The endpoint is part of it, so two endpoints never share ids by accident."""
    if not key:
        return new_event_id()
    return str(uuid.uuid5(_NAMESPACE, f"{endpoint}\x00{key}"))
