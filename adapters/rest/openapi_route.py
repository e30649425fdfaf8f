"""`GET /openapi.json`: the document of every REST endpoint this process serves."""

import json
from importlib.metadata import version

from aiohttp import web

from adapters.rest.config import RestInbound
from adapters.rest.openapi import EndpointDoc, PublishDoc, SecurityDoc, openapi_document
from bus.auth.settings import InboundAuth
from bus.flows.model import Inbound, PublishApi
from bus.plugins import AdapterContext


def security_doc(auth: InboundAuth | None) -> SecurityDoc | None:
    """The operation's security scheme; None, documented as no security requirement (and no
    401), for an endpoint anyone may call: no auth on a loopback server, or `anonymous: true`."""
    if auth is None or auth.anonymous_callers:
        return None
    if auth.api_key is not None:
        key = auth.api_key
        if key.query:
            return SecurityDoc("api_key_query", key.query)
        return SecurityDoc("api_key_header", key.header or "X-API-Key")
    if auth.basic is not None:
        return SecurityDoc("basic")
    if auth.hmac is not None:
        return SecurityDoc("hmac", auth.hmac.build().header)
    return SecurityDoc("jwt")


class OpenApi:
    """Collects the endpoints as the adapter adds them; renders the document once."""

    def __init__(self, context: AdapterContext) -> None:
        self.context = context
        self.endpoints: list[EndpointDoc] = []
        self.publish: PublishDoc | None = None
        self._rendered: bytes | None = None

    def add_endpoint(self, item: Inbound, settings: RestInbound) -> None:
        assert settings.path is not None  # noqa: S101 -- only webhooks are documented
        self.endpoints.append(
            EndpointDoc(
                name=item.name,
                method=settings.method,
                path=settings.path,
                event=self.context.catalog.current(item.event.type),
                topic=item.topic,
                event_map=item.event.map,
                security=security_doc(settings.auth),
                max_body_bytes=settings.max_body,
            )
        )

    def add_publish(self, publish: PublishApi) -> None:
        catalog = self.context.catalog
        auth = InboundAuth.model_validate(publish.auth) if publish.auth else None
        self.publish = PublishDoc(
            prefix=publish.prefix,
            schemas={
                name: (catalog.current(name), topic) for name, topic in publish.events.items()
            },
            security=security_doc(auth),
            max_body_bytes=publish.max_body,
        )

    async def handle(self, _: web.Request) -> web.Response:
        if self._rendered is None:
            document = openapi_document(self.endpoints, self.publish, version=version("bus"))
            self._rendered = json.dumps(document).encode()
        return web.Response(body=self._rendered, content_type="application/json")
