"""Trace context on outgoing HTTP requests: an aiohttp `TraceConfig` for the process's one
client session (`bus.plugins.AdapterContext.session`), which every adapter calls through.

A request sent while a span is current (an outbound attempt's CLIENT span, a lookup step's
span) carries that span's `traceparent`; a CLIENT span also gets the request's HTTP attributes
(other spans keep their own: an inbound request's SERVER span is not about the key set fetch
made while it is current). The adapters know nothing of it: REST and SOAP calls, token requests
and key set fetches alike.
"""

from types import SimpleNamespace

import aiohttp
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind
from yarl import URL

from bus.telemetry.tracing import inject


def tracing_config() -> aiohttp.TraceConfig:
    """Add it to a session only when tracing is on: off, requests pay nothing."""
    config = aiohttp.TraceConfig()
    config.on_request_start.append(_started)
    config.on_request_end.append(_ended)
    return config


async def _started(
    session: aiohttp.ClientSession,
    context: SimpleNamespace,
    params: aiohttp.TraceRequestStartParams,
) -> None:
    span = trace.get_current_span()
    if not span.get_span_context().is_valid:
        return
    params.headers.update(inject(span))
    if not _is_client(span):
        return
    url = params.url
    span.set_attributes(
        {
            "http.request.method": params.method,
            "url.full": str(_without_secrets(url)),
            "server.address": url.host or "",
            "server.port": url.port or 0,
        }
    )


async def _ended(
    session: aiohttp.ClientSession,
    context: SimpleNamespace,
    params: aiohttp.TraceRequestEndParams,
) -> None:
    span = trace.get_current_span()
    if span.get_span_context().is_valid and _is_client(span):
        span.set_attribute("http.response.status_code", params.response.status)


def _is_client(span: Span) -> bool:
    # The API's Span has no kind; the SDK's spans, the only ones made here, do.
    return getattr(span, "kind", None) is SpanKind.CLIENT


def _without_secrets(url: URL) -> URL:
    """The URL without user info and query: either may hold a credential (an API key)."""
    return url.with_user(None).with_query(None).with_fragment(None)
