"""What every outbound HTTP caller of the bus (REST calls, pollers, OAuth2 token requests) reads
from a response the same way: a bounded body, JSON or text, and whether trying again can help."""

import json
from typing import Any

import aiohttp
from yarl import URL

from bus.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError

_TRANSIENT = frozenset({408, 425, 429})
# 5xx that no retry changes: the server says it cannot do this at all.
_PERMANENT_5XX = frozenset({501, 505})


def is_transient(status: int) -> bool:
    """Whether a failed call with this status may succeed if tried again later."""
    return status in _TRANSIENT or (status >= 500 and status not in _PERMANENT_5XX)


async def read_limited(response: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    """The body, up to `limit` bytes, and whether there was more (then left unread).

    `content.read(limit)` would not do: it returns what has arrived so far, which for a body
    that comes in several packets is only its start.
    """
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(chunks)[:limit], True
    return b"".join(chunks), False


_UNSAID = frozenset({"", "application/octet-stream", "text/plain"})


def parsed_body(content_type: str, raw: bytes) -> Any:
    """JSON for a JSON media type (or none in particular) when it parses, else text; None for
    an empty body. `content_type` is the media type alone, without parameters."""
    if not raw.strip():
        return None
    media = content_type.split(";", 1)[0].strip().lower()
    if media in _UNSAID or media == "application/json" or media.endswith("+json"):
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            pass
    return raw.decode("utf-8", errors="replace")


def origin(url: str) -> str:
    """Scheme, host and port only, for messages: a path or query may carry tokens or personal
    data."""
    try:
        parsed = URL(url)
    except ValueError:  # a raw ${VAR} with '/' or '#' in a password: say so, not crash on it
        return "a URL that does not parse"
    port = "" if parsed.explicit_port is None else f":{parsed.explicit_port}"
    return f"{parsed.scheme}://{parsed.host}{port}"


def status_error(
    status: int, *, excerpt: str = "", retry_after: float | None = None
) -> DeliveryError:
    """The failure a non-2xx answer (without anything more specific in it) means."""
    if is_transient(status):
        return TransientDeliveryError(
            f"HTTP {status}", status=status, excerpt=excerpt, retry_after=retry_after
        )
    return PermanentDeliveryError(f"HTTP {status}", status=status, excerpt=excerpt)


def invalid_url_error(url: str) -> PermanentDeliveryError:
    """A URL that cannot be called at all: permanent, and its text stays out of the message
    (the userinfo or query is where a misplaced secret would be)."""
    return PermanentDeliveryError(
        f"cannot call {origin(url)}: the URL is not valid; check the outbound url and "
        "percent-encode reserved characters ('/', '?', '#', '@') in substituted values"
    )


def transport_error(error: BaseException, url: str, seconds: float | None) -> DeliveryError:
    """A call that got no answer (a timeout, a refused or broken connection): worth retrying;
    a URL aiohttp cannot call is permanent. Raise it as it is (`raise transport_error(...)`):
    its cause is set here, and left out for an invalid URL, whose text is the URL."""
    failure: DeliveryError
    if isinstance(error, aiohttp.InvalidURL):
        failure = invalid_url_error(url)
    elif isinstance(error, TimeoutError):
        failure = TransientDeliveryError(f"no answer within {seconds:g} s from {origin(url)}")
    else:
        failure = TransientDeliveryError(
            f"cannot call {origin(url)}: {type(error).__name__}: {error}"
        )
    failure.__cause__ = None if isinstance(error, aiohttp.InvalidURL) else error
    failure.__suppress_context__ = True
    return failure


def credentials_error(error: DeliveryError) -> TransientDeliveryError:
    """Credentials that could not be had (a token endpoint refusing or down) are the endpoint's
    trouble, not the event's: a wrong client secret must open the breaker and pause the
    delivery, not dead-letter the whole topic."""
    return TransientDeliveryError(
        f"cannot get credentials: {error.reason}",
        status=error.status,
        excerpt=error.excerpt,
        retry_after=getattr(error, "retry_after", None),
    )
