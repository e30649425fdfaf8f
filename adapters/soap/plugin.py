"""The SOAP adapter as bus sees it: the `soap` entry point of the `bus.adapters` group.

A relative `wsdl:` path is read from the directory of the flow file that names it, so a flow
file and its WSDL travel together, whatever directory `bus run` starts in.
"""

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from aiohttp import web
from pydantic import ValidationError

from adapters.soap.inbound import SoapInbound, check_soap_inbound, soap_routes
from adapters.soap.lookup import SoapLookup
from adapters.soap.outbound import (
    LOOKUP_VARIABLES,
    OUTBOUND_VARIABLES,
    SoapDelivery,
    SoapOutbound,
    request_problems,
)
from adapters.soap.wsdl import load_wsdl
from bus.auth.outbound import OutboundAuth
from bus.auth.settings import OutboundAuthConfig, outbound_auth
from bus.delivery.contract import Delivery
from bus.delivery.replies import REPLY_VARIABLES
from bus.errors import ConfigError
from bus.events.catalog import SchemaCatalog
from bus.flows.loading import settings_problems
from bus.flows.model import FlowSet, Inbound, LookupItem, Outbound
from bus.flows.steps.enrich import Lookup
from bus.plugins import AdapterContext, Problems, expression_problems

Item = TypeVar("Item", Inbound, Outbound, LookupItem)


def located(item: Item) -> Item:
    """The item with a relative wsdl path made relative to its flow file's directory."""
    wsdl = item.config.get("wsdl")
    file = item.origin.source.file
    if not isinstance(wsdl, str) or "://" in wsdl or Path(wsdl).is_absolute():
        return item
    if file.startswith("<"):  # built in code, not loaded from a file
        return item
    config = {**item.config, "wsdl": str(Path(file).parent / wsdl)}
    return item.model_copy(update={"config": config})  # private attributes (its origin) kept


class SoapAdapter:
    name = "soap"

    def check_inbound(self, item: Inbound, catalog: SchemaCatalog) -> Problems:
        return check_soap_inbound(located(item), catalog)

    def check_outbound(self, item: Outbound, catalog: SchemaCatalog) -> Problems:
        problems = self._check_call(located(item), headers=OUTBOUND_VARIABLES, fields=item.map)
        for name, source in item.map.items():
            problems += expression_problems(("map", name), source, OUTBOUND_VARIABLES)
        if item.reply is not None:
            for name, source in item.reply.map.items():
                problems += expression_problems(("reply", "map", name), source, REPLY_VARIABLES)
        return problems

    def check_lookup(self, item: LookupItem, catalog: SchemaCatalog) -> Problems:
        return self._check_call(located(item), headers=LOOKUP_VARIABLES, fields={})

    def check_flows(self, flows: FlowSet, catalog: SchemaCatalog) -> list[str]:
        return []

    def runtime(self, context: AdapterContext) -> "SoapRuntime":
        return SoapRuntime(context)

    @staticmethod
    def _check_call(
        item: Outbound | LookupItem, *, headers: tuple[str, ...], fields: dict[str, str]
    ) -> Problems:
        key = item.adapter
        try:
            settings = SoapOutbound.model_validate(item.config)
        except ValidationError as invalid:
            return [
                ((key, *path), message) for path, message in settings_problems(invalid, item.config)
            ]
        problems: Problems = []
        for name, source in settings.headers.items():
            problems += expression_problems((key, "headers", name), source, headers)
        try:
            info = load_wsdl(settings.wsdl).operation(
                settings.operation, service=settings.service, port=settings.port
            )
        except ConfigError as error:
            return [*problems, ((key, "operation"), str(error))]
        address = settings.address or info.address
        if not address or not address.startswith(("http://", "https://")):
            problems.append(
                (
                    (key, "address"),
                    f"the WSDL gives port {info.port} no http(s) address ({address or 'none'}); "
                    "set soap.address",
                )
            )
        if fields:
            problems += [
                (("map", name), problem) for name, problem in request_problems(info, list(fields))
            ]
        return problems


class SoapRuntime:
    """The SOAP part of one `bus run` process."""

    def __init__(self, context: AdapterContext) -> None:
        self.context = context
        self._inbound: list[tuple[Inbound, SoapInbound]] = []
        self._auths: list[OutboundAuth] = []

    def add_inbound(self, item: Inbound) -> None:
        item = located(item)
        self._inbound.append((item, SoapInbound.model_validate(item.config)))

    def add_outbound(self, item: Outbound) -> Delivery:
        item = located(item)
        settings = SoapOutbound.model_validate(item.config)
        return SoapDelivery(
            item.name,
            settings,
            field_map=item.map,
            session=self.context.session,
            auth=self._auth(settings.auth),
            call_timeout=item.timeout.total_seconds(),
        )

    def add_lookup(self, item: LookupItem) -> Lookup:
        item = located(item)
        settings = SoapOutbound.model_validate(item.config)
        return SoapLookup(
            item.name,
            settings,
            session=self.context.session,
            auth=self._auth(settings.auth),
            call_timeout=item.timeout.total_seconds(),
        )

    def routes(self) -> Sequence[web.RouteDef]:
        if not self._inbound:
            return []
        context = self.context
        return soap_routes(
            self._inbound, ingest=context.ingest, catalog=context.catalog, session=context.session
        )

    async def run(self, stop: asyncio.Event) -> None:
        return

    async def close(self) -> None:
        for auth in self._auths:
            await auth.close()

    def _auth(self, config: OutboundAuthConfig | None) -> OutboundAuth | None:
        if config is None:
            return None
        auth = outbound_auth(config, self.context.session)
        self._auths.append(auth)
        return auth


adapter = SoapAdapter()
