"""Reading a request body without letting a caller make us hold more than the limit."""

from aiohttp import web

from bus.http.problem import Problem

_CHUNK = 64 * 1024


def too_large(limit: int, *, declared: int | None = None) -> Problem:
    said = f"declares {declared} bytes" if declared is not None else "is longer"
    return Problem(
        413,
        "body-too-large",
        "Request body too large",
        f"the body {said}; this endpoint accepts at most {limit} bytes (its max_body setting)",
    )


async def read_body(request: web.Request, limit: int) -> bytes:
    """The raw body, refused with 413 as soon as it is known to exceed `limit` bytes: by its
    Content-Length before reading anything, else (chunked) once more than `limit` has arrived."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise too_large(limit, declared=declared)
    received = bytearray()
    while chunk := await request.content.read(_CHUNK):
        received += chunk
        if len(received) > limit:
            raise too_large(limit)
    return bytes(received)
