"""Inbound REST: a webhook endpoint per inbound item, and the generic publish API.

Every request goes through the same stages, each with its own answer when it fails:
body within the limit (413), authentication (401/403), media type (415), JSON (400), mapping
and schema (422), Kafka (503 with Retry-After) — and only then 202 with the event id.
Authentication comes after reading the body because an HMAC signature covers the raw bytes;
the body is bounded before that, so an anonymous caller cannot make us hold more than the limit.
"""

import hashlib
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from bus.auth.hmac_signature import VerifiedSignature
from bus.auth.settings import RequestAuthenticator
from bus.events.catalog import SchemaCatalog
from bus.events.event import Event
from bus.http.authentication import authenticate
from bus.http.problem import FieldProblem, Problem
from bus.inbound import idempotency
from bus.inbound.body import read_body
from bus.inbound.ingest import RETRY_AFTER_S, EventTooLargeError, Ingest, StorageUnavailableError
from bus.inbound.mapping import InboundMapping, MappingError

log = logging.getLogger(__name__)
MAX_JSON_DEPTH = 64  # deeper nesting is no event of ours, and json.loads would recurse


@dataclass(frozen=True)
class Stored:
    """What a request became."""

    event: Event
    topic: str


class Endpoint:
    """What the webhook and the publish API share: the stages before and after the mapping."""

    def __init__(
        self,
        *,
        name: str,
        max_body: int,
        authenticator: RequestAuthenticator | None,
        ingest: Ingest,
        catalog: SchemaCatalog,
    ) -> None:
        self.name = name
        self.max_body = max_body
        self.authenticator = authenticator
        self.ingest = ingest
        self.catalog = catalog

    async def read(self, request: web.Request) -> tuple[bytes, object]:
        """The raw body and what authentication learned (None without auth)."""
        raw = await read_body(request, self.max_body)
        if self.authenticator is None:
            return raw, None
        principal = await authenticate(
            self.authenticator, request, raw, who=self.name, unavailable=_unavailable
        )
        return raw, principal

    def event_id(self, request: web.Request, principal: object, raw: bytes) -> str:
        key = request.headers.get(idempotency.HEADER)
        why = None if key is None else idempotency.key_problem(key)
        if why is not None:
            raise Problem(400, "bad-idempotency-key", "Invalid Idempotency-Key", why)
        if key is None and isinstance(principal, VerifiedSignature):
            key = _signed_request_key(principal, raw)
        return idempotency.event_id_for(self.name, key)

    async def store(self, topic: str, event: Event) -> web.Response:
        try:
            await self.ingest.store(topic, event, item=self.name)
        except StorageUnavailableError as unavailable:
            log.warning("%s: %s", self.name, unavailable)
            raise _unavailable("Kafka did not store the event in time") from None
        except EventTooLargeError as too_large:
            raise Problem(413, "event-too-large", "Event too large", str(too_large)) from None
        return web.json_response({"id": event.id}, status=202)


class WebhookEndpoint(Endpoint):
    """One `rest` inbound item with a `path`."""

    def __init__(
        self,
        *,
        name: str,
        topic: str,
        mapping: InboundMapping,
        max_body: int,
        authenticator: RequestAuthenticator | None,
        ingest: Ingest,
        catalog: SchemaCatalog,
    ) -> None:
        super().__init__(
            name=name, max_body=max_body, authenticator=authenticator, ingest=ingest,
            catalog=catalog,
        )  # fmt: skip
        self.topic = topic
        self.mapping = mapping

    async def handle(self, request: web.Request) -> web.Response:
        raw, principal = await self.read(request)
        body = parse_json(request, raw)
        values = {
            "body": body,
            "query": dict(request.query),
            "headers": {name.lower(): _text(value) for name, value in request.headers.items()},
            "path": dict(request.match_info),
        }
        try:
            event = self.mapping.event(
                self.catalog, values, event_id=self.event_id(request, principal, raw),
                source=f"/inbound/{self.name}",
            )  # fmt: skip
        except MappingError as invalid:
            raise invalid_event(invalid) from None
        return await self.store(self.topic, event)


class PublishEndpoint(Endpoint):
    """`POST <prefix>/<schema full name>`: the body is the event's data as it is."""

    def __init__(
        self,
        *,
        events: Mapping[str, str],
        max_body: int,
        authenticator: RequestAuthenticator | None,
        ingest: Ingest,
        catalog: SchemaCatalog,
    ) -> None:
        super().__init__(
            name="publish", max_body=max_body, authenticator=authenticator, ingest=ingest,
            catalog=catalog,
        )  # fmt: skip
        self.events = events

    async def handle(self, request: web.Request) -> web.Response:
        # Authenticated first: which types are published is no business of anonymous callers.
        raw, principal = await self.read(request)
        event_type = request.match_info["schema"]
        topic = self.events.get(event_type)
        if topic is None:
            listed = ", ".join(sorted(self.events))
            raise Problem(
                404,
                "unknown-event-type",
                "Unknown event type",
                f"{event_type!r} is not published here; the publish API takes: {listed}",
            )
        body = parse_json(request, raw)
        mapping = InboundMapping(event_type, None, None, {}, whole="body")
        try:
            event = mapping.event(
                self.catalog, {"body": body}, event_id=self.event_id(request, principal, raw),
                source=_attribute(request, "ce-source") or "/publish",
            )  # fmt: skip
        except MappingError as invalid:
            raise invalid_event(invalid) from None
        # CloudEvents' HTTP binding names attributes ce-<name>; `partitionkey` is the key.
        key = _attribute(request, "ce-partitionkey")
        subject = _attribute(request, "ce-subject")
        event = Event(
            type=event.type, data=event.data, source=event.source, id=event.id,
            time=event.time, subject=subject, key=key,
        )  # fmt: skip
        return await self.store(topic, event)


def _text(value: str) -> str:
    """A header value as text. aiohttp decodes header bytes as UTF-8, keeping the bytes that
    are not as surrogates, which no event can carry; such bytes are obs-text, which HTTP
    historically read as ISO-8859-1."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape").decode("latin-1")
    return value


def _attribute(request: web.Request, header: str) -> str | None:
    """A CloudEvents attribute from its `ce-` header: a Kafka header of the event, so text."""
    value = request.headers.get(header)
    if value is None:
        return None
    if _text(value) != value:
        raise Problem(400, "bad-header", "Invalid header", f"the {header} header is not UTF-8 text")
    return value


def _signed_request_key(signature: VerifiedSignature, raw: bytes) -> str:
    """A signed webhook's own identity. The sender's delivery id where the scheme has one, so a
    redelivery is the same event; else the signed timestamp and body, so that a captured
    request replayed within the tolerance is the same event too (consumers drop it by id)."""
    if signature.delivery_id:
        return f"delivery:{signature.delivery_id}"
    digest = hashlib.sha256(raw).hexdigest()
    return f"signed:{signature.timestamp}:{digest}"


def parse_json(request: web.Request, raw: bytes) -> Any:
    media = request.content_type
    if media != "application/json" and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        sent = request.headers.get("Content-Type", "none")
        raise Problem(
            415,
            "unsupported-media-type",
            "Unsupported media type",
            f"the body must be JSON (Content-Type: application/json); the request said {sent}",
        )
    if not raw:
        raise _bad_json("the body is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _bad_json(f"the body is not UTF-8 (byte {error.start})") from None
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as error:
        raise _bad_json(f"{error.msg} at line {error.lineno}, column {error.colno}") from None
    except (RecursionError, ValueError) as error:
        raise _bad_json(
            str(error) if isinstance(error, ValueError) else "nested too deep"
        ) from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise _bad_json(f"nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _depth(value: Any) -> int:
    depth, level = 0, [value]
    while level:
        depth += 1
        level = [
            child
            for item in level
            if isinstance(item, dict | list)
            for child in (item.values() if isinstance(item, dict) else item)
        ]
    return depth - 1


def _bad_json(detail: str) -> Problem:
    return Problem(400, "malformed-json", "Malformed JSON", f"the body is not valid JSON: {detail}")


def _unavailable(detail: str, retry_after: float | None = None) -> Problem:
    wait = RETRY_AFTER_S if retry_after is None else max(1, math.ceil(retry_after))
    return Problem(
        503,
        "unavailable",
        "Service unavailable",
        f"{detail}; the event may not be stored: send it again, with the same "
        "Idempotency-Key so that it stays one event",
        headers={"Retry-After": str(wait)},
    )


def invalid_event(invalid: MappingError) -> Problem:
    return Problem(
        422,
        "invalid-event",
        "The request does not make a valid event",
        f"it does not make a valid {invalid.event_type}; see errors for each field",
        errors=[FieldProblem(field or "<event>", problem) for field, problem in invalid.problems],
    )
