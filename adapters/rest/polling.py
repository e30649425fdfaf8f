"""REST polling sources: an inbound item that polls a collection instead of serving a webhook.

```yaml
inbound:
  - name: tickets-poll
    rest:
      poll:
        url: https://helpdesk.example/api/tickets
        every: 30s
        items: response.body.tickets          # over `response`: the list of items
        cursor:
          kind: since                         # since | page_token | etag
          param: updated_since                # or header: X-Updated-Since
          next: item.updated_at               # since: over `item`; page_token: over `response`
          start: "2026-01-01T00:00:00Z"
        headers: {Accept: application/json}
        timeout: 10s
    event: {type: com.acme.crm.CustomerChanged, key: item.id, map: {customerId: item.id}}
    topic: crm.customer-changed.v1
```

`RestPoll` is the `poll:` mapping; `PollingClient.pages` is the fetch a `bus.polling.Poller`
runs (see that module for the guarantees: one Kafka transaction per page with its cursor, ids
that are the same for the same item, fencing of a second poller with the same name). Each poll:

- `since`: one GET with the cursor (the greatest `next` value published so far, else `start`,
  else none) in `param` or `header`; the cursor becomes the greatest `next` of the items. Values
  compare as numbers, as timestamps (ISO 8601 text) or else as text. Items that come again (an
  API that answers `>=`) are skipped: the cursor remembers what it published.
- `page_token`: GET the page of the cursor's token (else `start`, else the first page), then
  follow `next` (over `response`) until it is empty or null; each page is committed before the
  next is fetched, its cursor the token of the page after it. The last page's own token stays
  the cursor, so the next poll fetches it again and publishes only what was added to it.
- `etag`: GET with `If-None-Match` of the last ETag; 304 means nothing new; otherwise the items
  not published before are published, and the new ETag kept.
- no `cursor`: GET the whole collection every time and publish the items not published before.

HTTP failures (no connection, a timeout, 5xx, 429, any other unexpected status) raise
`PollFailedError` with a message that says which; the poller logs it and polls again after a
backoff (a 429's or 503's Retry-After first). A response whose `items` is not a list, and an
item whose `next` cannot be read, are dead-lettered (`<name>.dlq`), and the poll goes on.
"""

import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Annotated, Any, Literal, Self

import aiohttp
from pydantic import Field, PlainValidator, WithJsonSchema, field_validator, model_validator
from pydantic_core import PydanticCustomError
from yarl import URL

from bus.auth.outbound import OutboundAuth
from bus.auth.settings import OutboundAuthConfig
from bus.delivery.contract import Response
from bus.events.codec import EventCodec
from bus.flows.expressions import Expression as CompiledExpression
from bus.flows.expressions import ExpressionError, compile_expression
from bus.flows.model import (
    Block,
    Duration,
    Expression,
    Inbound,
    KeyProblems,
    describe_value,
    duration_field,
    format_duration,
    key_errors,
)
from bus.http.client import is_transient, parsed_body, read_limited
from bus.http.retry_after import parse_retry_after
from bus.polling.cursor_store import DEFAULT_REMEMBER, CursorStore
from bus.polling.poller import (
    ITEM_VARIABLES,
    ItemMapper,
    Page,
    Poller,
    PollFailedError,
    Rejected,
    canonical_json,
    json_type,
)
from bus.resilience.retry import RetryPolicy
from bus.telemetry.hub import Telemetry

log = logging.getLogger(__name__)

RESPONSE_VARIABLES = ("response",)
"""What `items` and a page token's `next` see: `response.status`, `response.headers` (names in
lower case) and `response.body` (parsed JSON, else text, else null)."""
POLL_VARIABLES = ITEM_VARIABLES
"""What a polling item's `event` block (key, subject, map), `identity` and a since cursor's
`next` see: `item`, one element of the list that `items` gave."""
MAX_REMEMBER = 50_000  # 8 bytes each, base64 in the cursor record: ~530 KB, under Kafka's 1 MB
DEFAULT_MAX_BODY = 16 * 1024 * 1024


# -- settings ---------------------------------------------------------------------------------


def _problem(message: str) -> PydanticCustomError:
    return PydanticCustomError("flow_value", message)


_NO_PLACEHOLDER = (
    "a polling URL is fixed and has no {placeholders}: the cursor goes in a query parameter "
    "(cursor.param) or a header (cursor.header)"
)
_URL = re.compile(r"https?://[^\s/?#]+[^\s]*")


def _poll_url(value: object) -> str:
    if not isinstance(value, str) or not _URL.fullmatch(value):
        raise _problem(f"expected an http:// or https:// URL, found {describe_value(value)}")
    if "{" in value or "}" in value:
        raise _problem(f"{_NO_PLACEHOLDER}; found {describe_value(value)}")
    try:
        parsed = URL(value)
    except ValueError as error:
        raise _problem(f"expected a URL, found {describe_value(value)}: {error}") from None
    if not parsed.host:
        raise _problem(f"expected a URL with a host, found {describe_value(value)}")
    return value


PollUrl = Annotated[
    str,
    PlainValidator(_poll_url),
    WithJsonSchema({"type": "string", "pattern": "^https?://", "description": "The collection."}),
]

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token: a header name


def _header_name(value: object) -> str:
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise _problem(
            f"expected a header name (letters, digits, -), found {describe_value(value)}"
        )
    return value


def _header_value(value: object) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or any(char in value for char in "\r\n\0"):
        raise _problem(
            f"expected a header value as one line of text, found {describe_value(value)}"
        )
    if "{cursor}" in value:
        raise _problem(_NO_PLACEHOLDER)
    return value


HeaderName = Annotated[str, PlainValidator(_header_name), WithJsonSchema({"type": "string"})]
HeaderValue = Annotated[str, PlainValidator(_header_value), WithJsonSchema({"type": "string"})]

_PARAM = re.compile(r"[^\s&=#?]+")


def _query_param(value: object) -> str:
    if not isinstance(value, str) or not _PARAM.fullmatch(value):
        raise _problem(
            f"expected a query parameter name (no spaces, &, =, # or ?), found "
            f"{describe_value(value)}"
        )
    return value


QueryParam = Annotated[str, PlainValidator(_query_param), WithJsonSchema({"type": "string"})]


def _cursor_start(value: object) -> str | int | float:
    if isinstance(value, datetime):
        # YAML reads an unquoted 2026-01-01T00:00:00Z as a timestamp, and would send it back in
        # another spelling; the API should get the text the file has.
        raise _problem(
            f"found the timestamp {value.isoformat()}; quote it in YAML, so that it is sent "
            "exactly as written"
        )
    if isinstance(value, bool) or not isinstance(value, str | int | float) or value == "":
        raise _problem(f"expected a cursor value (text or a number), found {describe_value(value)}")
    return value


CursorStart = Annotated[
    str | int | float,
    PlainValidator(_cursor_start),
    WithJsonSchema({"type": ["string", "number"], "description": "The cursor's first value."}),
]


def _compiled(source: str, variables: tuple[str, ...]) -> str:
    try:
        compile_expression(source, variables)
    except ExpressionError as error:
        raise _problem(str(error)) from None
    return source


class PollCursor(Block):
    """How a poll knows what is new."""

    kind: Literal["since", "page_token", "etag"] = Field(
        description="since: the greatest `next` of the items so far; page_token: the API's "
        "next-page token; etag: If-None-Match with the last ETag."
    )
    param: QueryParam | None = Field(
        default=None, description="Query parameter that carries the cursor (since, page_token)."
    )
    header: HeaderName | None = Field(
        default=None, description="Header that carries the cursor, instead of param."
    )
    next: Expression | None = Field(
        default=None,
        description="since: expression over `item` (its cursor value); page_token: expression "
        "over `response` (the next page's token; empty or null on the last page).",
    )
    start: CursorStart | None = Field(
        default=None, description="The cursor's value before anything was published."
    )

    @model_validator(mode="after")
    def _fitsjson_type(self) -> Self:
        problems: KeyProblems = []
        if self.kind == "etag":
            for key in ("param", "header", "next", "start"):
                if getattr(self, key) is not None:
                    problems.append(
                        (
                            (key,),
                            "not used by kind etag (the last ETag goes back as If-None-Match); "
                            "remove it",
                        )
                    )
        else:
            if (self.param is None) == (self.header is None):
                found = "not both" if self.param is not None else "found neither"
                problems.append(
                    (
                        (),
                        f"kind {self.kind} sends the cursor in a query parameter (param) or a "
                        f"header (header); expected one of them, {found}",
                    )
                )
            since = self.kind == "since"
            if self.next is None:
                example = (
                    "an expression over `item` giving its cursor value, e.g. item.updated_at"
                    if since
                    else "an expression over `response` giving the next page's token, e.g. "
                    "response.body.next_page_token"
                )
                problems.append(((), f"kind {self.kind} needs next: {example}"))
            else:
                try:
                    compile_expression(self.next, ITEM_VARIABLES if since else RESPONSE_VARIABLES)
                except ExpressionError as error:
                    problems.append((("next",), str(error)))
            if (
                self.kind == "page_token"
                and self.start is not None
                and not isinstance(self.start, str)
            ):
                problems.append((("start",), "a page token is text; quote it"))
        if problems:
            raise key_errors("PollCursor", problems, dict(self))
        return self


class RestPoll(Block):
    """An inbound item that polls a collection (`rest: {poll: ...}`); the item's `event`
    expressions see `item`."""

    url: PollUrl = Field(description="The collection: an http:// or https:// URL.")
    every: Duration = Field(description="Time between polls, e.g. 30s.")
    items: Expression = Field(
        default="response.body",
        description="Expression over `response` giving the list of items.",
    )
    cursor: PollCursor | None = Field(
        default=None,
        description="How to ask for what is new; omitted: the whole collection every time, "
        "publishing the items not published before.",
    )
    identity: Expression | None = Field(
        default=None,
        description="Expression over `item` naming one version of an item (e.g. item.id + '@' "
        "+ item.updated_at); omitted: its whole content. Equal identities are published once.",
    )
    headers: dict[HeaderName, HeaderValue] = Field(
        default_factory=dict, description="Request headers."
    )
    auth: OutboundAuthConfig | None = Field(
        default=None, description="How to authenticate, as for an outbound call."
    )
    timeout: Duration = duration_field("30s", "Limit of one request.")
    remember: int = Field(
        default=DEFAULT_REMEMBER,
        ge=1,
        le=MAX_REMEMBER,
        description="How many published items the cursor remembers, to skip them when they "
        "come again (with etag or no cursor: at least the size of the collection).",
    )

    @field_validator("items")
    @classmethod
    def _items_compile(cls, source: str) -> str:
        return _compiled(source, RESPONSE_VARIABLES)

    @field_validator("identity")
    @classmethod
    def _identity_compiles(cls, source: str | None) -> str | None:
        return None if source is None else _compiled(source, ITEM_VARIABLES)

    @property
    def origin(self) -> str:
        """The URL without query or fragment: safe to log and to put in dead letters."""
        return str(URL(self.url).with_query(None).with_fragment(None))


def poll_settings(item: Inbound) -> RestPoll | None:
    """The `poll:` settings of a rest inbound item, or None if it serves a webhook; raises
    pydantic's ValidationError (located below `poll`) if they are invalid."""
    poll = item.config.get("poll")
    return None if poll is None else RestPoll.model_validate(poll)


# -- the fetch --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fetched:
    """One successful GET: the response as expressions see it, and its body's bytes."""

    response: Response
    raw: bytes


class PollingClient:
    """GETs a collection with a shared `aiohttp.ClientSession`; `pages` is a `bus.polling.Fetch`.

    Usage::

        client = PollingClient(session, poll)
        async for page in client.pages(position):     # what the Poller does
            ...
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        poll: RestPoll,
        *,
        auth: OutboundAuth | None = None,
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        self.session = session
        self.poll = poll
        self.auth = auth
        self.max_body = max_body
        self.url = URL(poll.url)
        self.origin = poll.origin
        self._items = compile_expression(poll.items, RESPONSE_VARIABLES)
        cursor = poll.cursor
        self._next: CompiledExpression | None = None
        if cursor is not None and cursor.next is not None:
            variables = ITEM_VARIABLES if cursor.kind == "since" else RESPONSE_VARIABLES
            self._next = compile_expression(cursor.next, variables)
        self._timeout = aiohttp.ClientTimeout(total=poll.timeout.total_seconds())
        self._warned_no_etag = False

    async def pages(self, position: Any) -> AsyncIterator[Page]:
        """The pages of one poll from the committed `position` (see the module's docstring)."""
        cursor = self.poll.cursor
        if cursor is None:
            fetched = await self.get()
            if fetched is not None:
                yield self._page(fetched, None)
        elif cursor.kind == "etag":
            etag = position if isinstance(position, str) else None
            fetched = await self.get(etag=etag)
            if fetched is not None:
                new_etag = fetched.response.headers.get("etag")
                if new_etag is None and not self._warned_no_etag:
                    self._warned_no_etag = True
                    log.warning(
                        "poller of %s: the response has no ETag, so every poll fetches the "
                        "whole collection again (already published items are skipped)",
                        self.origin,
                    )
                yield self._page(fetched, new_etag)
        elif cursor.kind == "since":
            value = position if position is not None else cursor.start
            fetched = await self.get(cursor_value=value)
            if fetched is not None:
                yield self._since_page(fetched, value)
        else:
            async for page in self._token_pages(position if position is not None else cursor.start):
                yield page

    async def _token_pages(self, token: Any) -> AsyncIterator[Page]:
        followed = {token}
        while True:
            fetched = await self.get(cursor_value=token)
            if fetched is None:
                return
            assert self._next is not None  # noqa: S101 -- page_token requires next
            try:
                following = self._next.evaluate_in({"response": fetched.response.as_variable()})
            except ExpressionError as error:
                # Publish this page; the next poll fetches it again and goes on from there.
                rejected = Rejected(fetched.raw, "cursor.next", str(error), type(error).__name__)
                yield self._page(fetched, token, (rejected,))
                return
            if following is None or following == "":
                yield self._page(fetched, token)
                return
            if isinstance(following, bool) or not isinstance(following, str | int):
                problem = (
                    f"expression {self._next.source!r} gave {json_type(following)}, not a token"
                )
                yield self._page(fetched, token, (Rejected(fetched.raw, "cursor.next", problem),))
                return
            if following in followed:
                log.warning(
                    "poller of %s: page token %r came back in one poll; stopping this poll "
                    "there (a page-token loop)",
                    self.origin,
                    following,
                )
                yield self._page(fetched, token)
                return
            followed.add(following)
            yield self._page(fetched, following)
            token = following

    def _page(self, fetched: Fetched, position: Any, rejected: tuple[Rejected, ...] = ()) -> Page:
        items = self._read_items(fetched)
        if isinstance(items, Rejected):
            return Page(items=(), position=position, rejected=(*rejected, items))
        return Page(items=items, position=position, rejected=rejected)

    def _read_items(self, fetched: Fetched) -> list[Any] | Rejected:
        try:
            items = self._items.evaluate_in({"response": fetched.response.as_variable()})
        except ExpressionError as error:
            return Rejected(fetched.raw, "items", str(error), type(error).__name__)
        if not isinstance(items, list):
            return Rejected(
                fetched.raw,
                "items",
                f"expression {self._items.source!r} gave {json_type(items)}, not a list of items",
            )
        return items

    def _since_page(self, fetched: Fetched, value: Any) -> Page:
        items = self._read_items(fetched)
        if isinstance(items, Rejected):
            return Page(items=(), position=value, rejected=(items,))
        assert self._next is not None  # noqa: S101 -- since requires next
        kept: list[Any] = []
        rejected: list[Rejected] = []
        greatest = value
        for item in items:
            try:
                candidate = _cursor_value(self._next.evaluate_in({"item": item}))
                if greatest is None or _later(candidate, greatest):
                    greatest = candidate
            except (ExpressionError, TypeError) as error:
                problem = str(error) if isinstance(error, ExpressionError) else f"{error}"
                rejected.append(
                    Rejected(canonical_json(item), "cursor.next", problem, type(error).__name__)
                )
                continue
            kept.append(item)
        return Page(items=kept, position=greatest, rejected=rejected)

    async def get(self, cursor_value: Any = None, *, etag: str | None = None) -> Fetched | None:
        """One GET, with the cursor (if any) and the ETag (if any); None when the server says
        nothing is new (304, 204). Raises PollFailedError."""
        extra_query: dict[str, str] = {}
        extra_headers: dict[str, str] = {}
        cursor = self.poll.cursor
        if cursor_value is not None and cursor is not None:
            text = _cursor_text(cursor_value)
            if cursor.param is not None:
                extra_query[cursor.param] = text
            elif cursor.header is not None:
                extra_headers[cursor.header] = text
        if etag is not None:
            extra_headers["If-None-Match"] = etag
        refreshed = False
        while True:
            status, reason, headers, raw = await self._request(extra_query, extra_headers)
            if status == HTTPStatus.UNAUTHORIZED and self.auth is not None and not refreshed:
                refreshed = True
                if await self.auth.refresh():
                    continue
            break
        if status in (HTTPStatus.NOT_MODIFIED, HTTPStatus.NO_CONTENT):
            return None
        if 200 <= status < 300:
            body = parsed_body(headers.get("content-type", ""), raw)
            response = Response(status=status, headers=headers, body=body)
            return Fetched(response, raw)
        answered = f"GET {self.origin} answered HTTP {status} {reason}".rstrip()
        if is_transient(status):
            retry_after = parse_retry_after(headers.get("retry-after"))
            wish = f" (Retry-After {retry_after:.0f} s)" if retry_after is not None else ""
            raise PollFailedError(answered + wish, retry_after=retry_after)
        if status in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN):
            again = " even after refreshing the credentials" if refreshed else ""
            raise PollFailedError(f"{answered}{again}; check the poller's credentials")
        raise PollFailedError(f"{answered}; check the url, its headers and the cursor")

    async def _request(
        self, extra_query: Mapping[str, str], extra_headers: Mapping[str, str]
    ) -> tuple[int, str, dict[str, str], bytes]:
        headers: dict[str, str] = {**self.poll.headers, **extra_headers}
        query: dict[str, str] = dict(extra_query)
        if self.auth is not None:
            await self.auth.apply(headers, query)
        url = self.url.update_query(query) if query else self.url
        seconds = format_duration(self.poll.timeout)
        try:
            # Redirects are not followed: credentials would go along to wherever they point.
            async with self.session.get(
                url, headers=headers, timeout=self._timeout, allow_redirects=False
            ) as answer:
                raw = await self._read(answer)
                received = {name.lower(): value for name, value in answer.headers.items()}
                return answer.status, answer.reason or "", received, raw
        except TimeoutError:
            raise PollFailedError(f"GET {self.origin} timed out after {seconds}") from None
        except aiohttp.ClientConnectorError as error:
            raise PollFailedError(f"GET {self.origin}: cannot connect ({error})") from None
        except aiohttp.ClientError as error:
            raise PollFailedError(
                f"GET {self.origin}: the connection broke ({type(error).__name__}: {error})"
            ) from None

    async def _read(self, answer: aiohttp.ClientResponse) -> bytes:
        raw, more = await read_limited(answer, self.max_body)
        if more:
            raise PollFailedError(
                f"GET {self.origin}: the response is larger than {self.max_body} bytes"
            )
        return raw


def _cursor_value(value: Any) -> str | int | float:
    """A since cursor value as kept and sent: text or a number (a timestamp becomes RFC 3339)."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, bool) or not isinstance(value, str | int | float) or value == "":
        raise TypeError(f"the cursor value is {json_type(value)}; expected text or a number")
    return value


def _order(value: Any) -> tuple[int, Any]:
    """How since values compare: numbers as numbers, ISO 8601 text as instants, other text as
    text. Values of two different kinds cannot be compared (TypeError)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, value)
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return (2, value)
        return (1, moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC))
    raise TypeError(f"the cursor value is {json_type(value)}; expected text or a number")


def _later(value: Any, than: Any) -> bool:
    """Whether since value `value` comes after `than`; TypeError if they are of two kinds."""
    (kind, key), (than_kind, than_key) = _order(value), _order(than)
    if kind != than_kind:
        kinds = {0: "a number", 1: "an ISO 8601 timestamp", 2: "text"}
        raise TypeError(
            f"the cursor value is {kinds[kind]} but the cursor holds {kinds[than_kind]}; "
            "cursor values must all be numbers, all timestamps or all text"
        )
    return bool(key > than_key)


def _cursor_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def rest_poller(
    item: Inbound,
    poll: RestPoll,
    *,
    session: aiohttp.ClientSession,
    codec: EventCodec,
    bootstrap_servers: str,
    auth: OutboundAuth | None = None,
    store: CursorStore | None = None,
    backoff: RetryPolicy | None = None,
    before_commit: Callable[[], Awaitable[None]] | None = None,
    telemetry: Telemetry | None = None,
) -> Poller:
    """The poller of a rest inbound item with `poll:` settings; `await poller.run(stop)`.
    `telemetry` gets its hops and its item's state (default: a board and metrics of its own)."""
    client = PollingClient(session, poll, auth=auth)
    identity = None if poll.identity is None else compile_expression(poll.identity, ITEM_VARIABLES)
    return Poller(
        item.name,
        client.pages,
        ItemMapper(item.event, codec.catalog),
        codec=codec,
        bootstrap_servers=bootstrap_servers,
        topic=item.topic,
        every=poll.every.total_seconds(),
        origin=poll.origin,
        identity=identity,
        store=store,
        remember=poll.remember,
        backoff=backoff,
        before_commit=before_commit,
        telemetry=telemetry,
    )
