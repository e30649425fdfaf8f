"""The REST adapter as bus sees it: the `rest` entry point of the `bus.adapters` group."""

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from adapters.rest.config import (
    INBOUND_VARIABLES,
    OUTBOUND_VARIABLES,
    RestInbound,
    RestOutbound,
)
from adapters.rest.inbound import PublishEndpoint, WebhookEndpoint
from adapters.rest.openapi_route import OpenApi
from adapters.rest.outbound import RestDelivery
from adapters.rest.polling import rest_poller
from bus.auth.outbound import OutboundAuth
from bus.auth.settings import (
    InboundAuth,
    OutboundAuthConfig,
    inbound_authenticator,
    outbound_auth,
)
from bus.delivery.contract import Delivery
from bus.delivery.replies import REPLY_VARIABLES
from bus.errors import ConfigError
from bus.events.catalog import SchemaCatalog
from bus.flows.loading import settings_problems
from bus.flows.model import FlowSet, Inbound, LookupItem, Outbound
from bus.flows.steps.enrich import Lookup
from bus.inbound.mapping import InboundMapping
from bus.plugins import AdapterContext, Problems, expression_problems
from bus.polling.poller import ITEM_VARIABLES, Poller

log = logging.getLogger(__name__)


class RestAdapter:
    name = "rest"

    def check_inbound(self, item: Inbound, catalog: SchemaCatalog) -> Problems:
        try:
            settings = RestInbound.model_validate(item.config)
        except ValidationError as invalid:
            return [
                ((item.adapter, *path), message)
                for path, message in settings_problems(invalid, item.config)
            ]
        variables = ITEM_VARIABLES if settings.poll is not None else INBOUND_VARIABLES
        event = item.event
        problems: Problems = []
        for at, source in (
            (("event", "key"), event.key),
            (("event", "subject"), event.subject),
            *((("event", "map", name), text) for name, text in event.map.items()),
        ):
            if source is not None:
                problems += expression_problems(at, source, variables)
        return problems

    def check_outbound(self, item: Outbound, catalog: SchemaCatalog) -> Problems:
        try:
            settings = RestOutbound.model_validate(item.config)
        except ValidationError as invalid:
            return [
                ((item.adapter, *path), message)
                for path, message in settings_problems(invalid, item.config)
            ]
        problems: Problems = []
        key = item.adapter
        for source in settings.placeholders():
            problems += expression_problems((key, "url"), source, OUTBOUND_VARIABLES)
        for section in ("headers", "query"):
            for name, source in getattr(settings, section).items():
                problems += expression_problems((key, section, name), source, OUTBOUND_VARIABLES)
        if settings.body is not None:
            problems += expression_problems((key, "body"), settings.body, OUTBOUND_VARIABLES)
        for name, source in item.map.items():
            problems += expression_problems(("map", name), source, OUTBOUND_VARIABLES)
        if item.reply is not None:
            for name, source in item.reply.map.items():
                problems += expression_problems(("reply", "map", name), source, REPLY_VARIABLES)
        return problems

    def check_lookup(self, item: LookupItem, catalog: SchemaCatalog) -> Problems:
        return [
            (
                (item.adapter,),
                "the rest adapter offers no lookups yet; use a soap lookup, or a Python "
                "function as module:function in the enrich step",
            )
        ]

    def check_flows(self, flows: FlowSet, catalog: SchemaCatalog) -> list[str]:
        problems: list[str] = []
        http = flows.http
        if http is not None and http.publish is not None and http.publish.auth is not None:
            try:
                InboundAuth.model_validate(http.publish.auth)
            except ValidationError as invalid:
                file = next(f for f in flows.files if f.http is not None)
                problems += [
                    file.source.problem(("http", "publish", "auth", *path), message)
                    for path, message in settings_problems(invalid, http.publish.auth)
                ]
        if http is not None and http.publish is not None:
            file = next(f for f in flows.files if f.http is not None)
            for name in http.publish.events:
                if name not in catalog.names():
                    problems.append(
                        file.source.problem(
                            ("http", "publish", "events", name),
                            f"no schema named {name!r} in {catalog.root}",
                        )
                    )
        problems += _route_conflicts(flows)
        return problems

    def runtime(self, context: AdapterContext) -> "RestRuntime":
        return RestRuntime(context)


def _route_conflicts(flows: FlowSet) -> list[str]:
    seen: dict[tuple[str, str], Inbound] = {}
    problems = []
    for item in flows.inbound:
        if item.adapter != "rest":
            continue
        config: dict[str, Any] = item.config
        path, method = config.get("path"), config.get("method", "POST")
        if not isinstance(path, str):
            continue
        first = seen.setdefault((str(method), path), item)
        if first is not item:
            problems.append(
                item.origin.problem(
                    f"{method} {path} is already served by inbound {first.name!r} at "
                    f"{first.origin.where()}; give each endpoint its own path",
                    "rest",
                    "path",
                )
            )
    return problems


class RestRuntime:
    """The REST part of one `bus run` process."""

    def __init__(self, context: AdapterContext) -> None:
        self.context = context
        self.openapi = OpenApi(context)
        self._routes: list[web.RouteDef] = []
        self._pollers: list[Poller] = []
        self._auths: list[OutboundAuth] = []

    def add_inbound(self, item: Inbound) -> None:
        context = self.context
        settings = RestInbound.model_validate(item.config)
        if settings.poll is not None:
            auth = self._outbound_auth(settings.poll.auth)
            poller = rest_poller(
                item,
                settings.poll,
                session=context.session,
                codec=context.codec,
                bootstrap_servers=context.bootstrap_servers,
                auth=auth,
                telemetry=context.telemetry,
            )
            self._pollers.append(poller)
            return
        assert settings.path is not None  # noqa: S101 -- RestInbound requires path or poll
        authenticator = (
            inbound_authenticator(settings.auth, context.session) if settings.auth else None
        )
        endpoint = WebhookEndpoint(
            name=item.name,
            topic=item.topic,
            mapping=InboundMapping.compile(
                item.event, context.catalog, INBOUND_VARIABLES, whole="body"
            ),
            max_body=settings.max_body,
            authenticator=authenticator,
            ingest=context.ingest,
            catalog=context.catalog,
        )
        self._routes.append(web.route(settings.method, settings.path, endpoint.handle))
        self.openapi.add_endpoint(item, settings)

    def add_outbound(self, item: Outbound) -> Delivery:
        settings = RestOutbound.model_validate(item.config)
        auth = self._outbound_auth(settings.auth)
        return RestDelivery(
            item.name,
            settings,
            field_map=item.map,
            session=self.context.session,
            auth=auth,
            call_timeout=item.timeout.total_seconds(),
        )

    def add_lookup(self, item: LookupItem) -> Lookup:
        raise ConfigError(f"{item.origin.where()}: the rest adapter offers no lookups yet")

    def _outbound_auth(self, config: OutboundAuthConfig | None) -> OutboundAuth | None:
        if config is None:
            return None
        auth = outbound_auth(config, self.context.session)
        self._auths.append(auth)
        return auth

    def routes(self) -> Sequence[web.RouteDef]:
        routes = list(self._routes)
        http = self.context.flows.http
        publish = http.publish if http is not None else None
        if publish is not None:
            auth = InboundAuth.model_validate(publish.auth) if publish.auth else None
            endpoint = PublishEndpoint(
                events=publish.events,
                max_body=publish.max_body,
                authenticator=inbound_authenticator(auth, self.context.session) if auth else None,
                ingest=self.context.ingest,
                catalog=self.context.catalog,
            )
            routes.append(web.post(publish.prefix + "/{schema}", endpoint.handle))
            self.openapi.add_publish(publish)
        if routes:
            routes.append(web.get("/openapi.json", self.openapi.handle))
        return routes

    async def run(self, stop: asyncio.Event) -> None:
        if not self._pollers:
            return
        # One poller that gives up (fenced by another process) must not orphan the others.
        results = await asyncio.gather(
            *(poller.run(stop) for poller in self._pollers), return_exceptions=True
        )
        for poller, result in zip(self._pollers, results, strict=True):
            if isinstance(result, BaseException):
                log.error("poller %s stopped: %s", poller.name, result)

    async def close(self) -> None:
        for auth in self._auths:
            await auth.close()


adapter = RestAdapter()
