"""Outbound REST: one HTTP call per event, built from the event by expressions.

The call itself only classifies what happened: 2xx is a success; a timeout, a connection
failure, 408, 425, 429 and 5xx (but 501 and 505, which no retry changes) are transient; any
other status is permanent. A 401 first asks the credentials to refresh (an OAuth2 token may
have been revoked early) and tries once more. Retrying, the breaker, the rate limit and
dead letters belong to the delivery runner (bus/delivery).
"""

import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
from multidict import CIMultiDict

from adapters.rest.config import (
    OUTBOUND_VARIABLES,
    PLACEHOLDER,
    RestOutbound,
    url_placeholders,
)
from bus.auth.outbound import OutboundAuth
from bus.delivery.contract import Response
from bus.errors import DeliveryError, PermanentDeliveryError
from bus.events import json_values
from bus.events.codec import DecodedEvent
from bus.flows.expressions import Expression, ExpressionError, compile_expression
from bus.flows.steps.base import attributes_of
from bus.http.client import (
    credentials_error,
    parsed_body,
    read_limited,
    status_error,
    transport_error,
)
from bus.http.retry_after import parse_retry_after
from bus.inbound.idempotency import HEADER as IDEMPOTENCY_HEADER

EXCERPT_CHARS = 500
MAX_RESPONSE_BYTES = 4 * 1024 * 1024


class RestDelivery:
    """The `Delivery` of one `rest` outbound item."""

    def __init__(
        self,
        name: str,
        settings: RestOutbound,
        *,
        field_map: Mapping[str, str],
        session: aiohttp.ClientSession,
        auth: OutboundAuth | None,
        call_timeout: float,
    ) -> None:
        self.name = name
        self.settings = settings
        self.session = session
        self.auth = auth
        self.timeout = aiohttp.ClientTimeout(total=call_timeout)

        def compiled(source: str) -> Expression:
            return compile_expression(source, OUTBOUND_VARIABLES)

        self._url = [(source, compiled(source)) for source in url_placeholders(settings.url)]
        self._headers = {name: compiled(src) for name, src in settings.headers.items()}
        self._query = {name: compiled(src) for name, src in settings.query.items()}
        self._fields = {name: compiled(src) for name, src in field_map.items()}
        self._body = compiled(settings.body) if settings.body is not None else None

    async def call(self, decoded: DecodedEvent) -> Response:
        event = decoded.event
        values = {"event": event.data, "attributes": attributes_of(event)}
        try:
            url = self._fill_url(values)
            headers = CIMultiDict(
                {n: _text(e.evaluate_in(values)) for n, e in self._headers.items()}
            )
            query = {name: _text(e.evaluate_in(values)) for name, e in self._query.items()}
            body = self._request_body(values)
        except ExpressionError as error:
            raise PermanentDeliveryError(f"cannot build the request: {error}") from error
        headers.setdefault(IDEMPOTENCY_HEADER, event.id)
        if body is not None:
            headers.setdefault("Content-Type", "application/json")
        response = await self._send(url, headers, query, body)
        if response.status == 401 and self.auth is not None and await self.auth.refresh():
            response = await self._send(url, headers, query, body)
        return _classified(response)

    async def close(self) -> None:
        """Nothing of its own to close: the session and credentials belong to the runtime."""

    def _fill_url(self, values: Mapping[str, Any]) -> str:
        filled = iter(self._url)

        def segment(_: re.Match[str]) -> str:
            source, expression = next(filled)
            value = _text(expression.evaluate_in(values))
            if not value:
                # An empty segment would turn PUT /customers/{id} into PUT /customers/.
                raise PermanentDeliveryError(
                    f"cannot build the request: URL part {{{source}}} is empty or null"
                )
            return quote(value, safe="")

        return PLACEHOLDER.sub(segment, self.settings.url)

    def _request_body(self, values: Mapping[str, Any]) -> bytes | None:
        if self.settings.method in ("GET", "DELETE") and self._body is None and not self._fields:
            return None
        if self._body is not None:
            data = self._body.evaluate_in(values)
        elif self._fields:
            data = {
                name: expression.evaluate_in(values) for name, expression in self._fields.items()
            }
        else:
            data = values["event"]
        return json_values.dumps(data)

    async def _send(
        self,
        url: str,
        headers: CIMultiDict[str],
        query: dict[str, str],
        body: bytes | None,
    ) -> Response:
        headers, query = CIMultiDict(headers), dict(query)
        if self.auth is not None:
            try:
                await self.auth.apply(headers, query)
            except DeliveryError as error:
                raise credentials_error(error) from error
        try:
            # Redirects are not followed: the credentials would go along to wherever they point.
            async with self.session.request(
                self.settings.method, url, headers=headers, params=query, data=body,
                timeout=self.timeout, allow_redirects=False,
            ) as answer:  # fmt: skip
                raw, _ = await read_limited(answer, MAX_RESPONSE_BYTES)
                return Response(
                    status=answer.status,
                    headers={name.lower(): value for name, value in answer.headers.items()},
                    body=parsed_body(answer.content_type, raw),
                )
        except (TimeoutError, aiohttp.ClientError) as error:
            raise transport_error(error, url, self.timeout.total)  # noqa: B904 (its cause is set)


def _classified(response: Response) -> Response:
    status = response.status
    if 200 <= status < 300:
        return response
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    raise status_error(status, excerpt=_excerpt(response.body), retry_after=retry_after)


def _excerpt(body: Any) -> str:
    text = body if isinstance(body, str) else "" if body is None else json.dumps(body)
    return text[:EXCERPT_CHARS]


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    ready = json_values.json_ready(value)
    return json.dumps(ready) if isinstance(ready, dict | list) else str(ready)
