"""RFC 9457 problem details: how every HTTP error of the bus is told to the caller.

Each problem has a stable `type` URI (a `tag:` URI, RFC 4151: an identifier that is not meant to
be fetched), a short `title` that is the same for every occurrence of the type, and a `detail`
that says what was wrong with this request and how to fix it. docs/adapters/rest.md lists the
types. A 422 also carries `errors`: one `{field, problem}` per invalid field.
"""

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)
MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "tag:bus.dev,2026:problem:"


@dataclass(frozen=True)
class FieldProblem:
    """One invalid field: its path in the event (`customer.email`) and what was expected."""

    field: str
    problem: str


@dataclass(frozen=True)
class Problem(Exception):  # noqa: N818 -- it is raised, but it is a response, not a failure
    """A problem response, raised from a handler and turned into a response by `respond`."""

    status: int
    slug: str
    title: str
    detail: str
    errors: Sequence[FieldProblem] = ()
    headers: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status} {self.title}: {self.detail}"

    @property
    def type(self) -> str:
        return TYPE_PREFIX + self.slug

    def body(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance is not None:
            body["instance"] = instance
        if self.errors:
            body["errors"] = [{"field": e.field, "problem": e.problem} for e in self.errors]
        return body

    def response(self, instance: str | None = None) -> web.Response:
        return web.Response(
            status=self.status,
            body=json.dumps(self.body(instance)).encode(),
            content_type=MEDIA_TYPE,
            headers=dict(self.headers),
        )


def not_found(path: str) -> Problem:
    return Problem(
        404, "not-found", "No such endpoint", f"nothing is served at {path}; GET /openapi.json "
        "lists the endpoints",
    )  # fmt: skip


def method_not_allowed(method: str, allowed: Sequence[str]) -> Problem:
    listed = ", ".join(sorted(allowed))
    return Problem(
        405,
        "method-not-allowed",
        "Method not allowed",
        f"{method} is not accepted here; use {listed}",
        headers={"Allow": listed},
    )


@web.middleware
async def problem_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Problems raised by handlers, and aiohttp's own 404 and 405, as problem+json."""
    try:
        response: web.StreamResponse = await handler(request)
    except Problem as problem:
        return problem.response(request.path)
    except web.HTTPMethodNotAllowed as refused:
        return method_not_allowed(request.method, tuple(refused.allowed_methods)).response(
            request.path
        )
    except web.HTTPNotFound:
        return not_found(request.path).response(request.path)
    except web.HTTPException:
        raise
    except Exception:
        # A bug of ours: logged with its traceback, answered without it.
        log.exception("%s %s failed", request.method, request.path)
        return Problem(
            500, "internal-error", "Internal error",
            "the request failed on our side (it is logged); try again later, with the same "
            "Idempotency-Key",
        ).response(request.path)  # fmt: skip
    return response
