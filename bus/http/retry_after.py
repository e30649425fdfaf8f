"""Reading a Retry-After header (RFC 9110 §10.2.3): seconds, or an HTTP date."""

import email.utils
import time

MAX_RETRY_AFTER_S = 3600.0  # a server asking for more is not asking for a retry at all


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """The wait in seconds, or None when the header is absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    wait = moment.timestamp() - (time.time() if now is None else now)
    return min(max(wait, 0.0), MAX_RETRY_AFTER_S)
