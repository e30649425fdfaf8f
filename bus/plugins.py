"""Adapters are plugins: installed packages that declare an entry point in the `bus.adapters`
group, whose object follows the `Adapter` protocol below. The REST adapter is registered this
way by bus's own pyproject.toml; a third-party adapter does the same in its own package:

```toml
[project.entry-points."bus.adapters"]
ftp = "acme_bus_ftp:adapter"
```

A flow file's inbound or outbound item names its adapter by its one extra key (`rest:`,
`ftp:`, ...). The adapter checks that key's settings (`bus validate` reports the problems with
file and line), and at run time gets one `AdapterRuntime` per process, to which the runtime
hands every item of that adapter. Everything around an outbound call (retries, breaker, rate
limit, order, dead letters, replies) is the delivery runner's, so an adapter only implements
`Delivery.call`; an inbound adapter serves aiohttp routes on the shared inbound server, or runs
background work (polling) in `run`, and stores events through `AdapterContext.ingest` (or,
when it writes to Kafka itself, records its hops and its items' state in
`AdapterContext.telemetry`).
"""

import asyncio
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Protocol

import aiohttp
from aiohttp import web

from bus.delivery.contract import Delivery
from bus.errors import ConfigError
from bus.events.catalog import SchemaCatalog
from bus.events.codec import EventCodec
from bus.flows.expressions import ExpressionError, compile_expression
from bus.flows.model import FlowSet, Inbound, KeyPath, LookupItem, Outbound
from bus.flows.steps.enrich import Lookup
from bus.inbound.ingest import Ingest
from bus.telemetry.hub import Telemetry

ENTRY_POINT_GROUP = "bus.adapters"

Problems = list[tuple[KeyPath, str]]
"""Problems found in an item: (key path below the item, message)."""


@dataclass(frozen=True)
class AdapterContext:
    """What the runtime lends each adapter for a run."""

    flows: FlowSet
    catalog: SchemaCatalog
    codec: EventCodec
    ingest: Ingest
    session: aiohttp.ClientSession
    """The process's one HTTP client session: its connection pool is shared by all adapters."""
    bootstrap_servers: str
    telemetry: Telemetry = field(default_factory=Telemetry.disabled)
    """The process's spans, journeys, metrics and status board: for the hops of what an
    adapter runs itself (a poller's); what goes through `ingest` is recorded there. A default,
    so that code made before it existed still builds a context."""


class AdapterRuntime(Protocol):
    """One adapter's part of a running process."""

    def add_inbound(self, item: Inbound) -> None:
        """Serve or start this inbound item (raise ConfigError if it cannot be)."""

    def add_outbound(self, item: Outbound) -> Delivery:
        """The call this outbound item makes for each event."""

    def add_lookup(self, item: LookupItem) -> Lookup:
        """The call an `enrich` step makes by this item's name."""

    def routes(self) -> Sequence[web.RouteDef]:
        """Routes for the shared inbound HTTP server (after every item was added)."""

    async def run(self, stop: asyncio.Event) -> None:
        """Background work (polling) until `stop` is set; return at once if there is none."""

    async def close(self) -> None: ...


class Adapter(Protocol):
    """What an entry point of the `bus.adapters` group provides."""

    name: str

    def check_inbound(self, item: Inbound, catalog: SchemaCatalog) -> Problems: ...

    def check_outbound(self, item: Outbound, catalog: SchemaCatalog) -> Problems: ...

    def check_lookup(self, item: LookupItem, catalog: SchemaCatalog) -> Problems: ...

    def check_flows(self, flows: FlowSet, catalog: SchemaCatalog) -> list[str]:
        """Problems with settings outside the items (e.g. the publish API), as full lines."""

    def runtime(self, context: AdapterContext) -> AdapterRuntime: ...


def expression_problems(at: KeyPath, source: str, variables: tuple[str, ...]) -> Problems:
    """The problem with an expression of an adapter's settings, if it does not compile with the
    variables the adapter gives it."""
    try:
        compile_expression(source, variables)
    except ExpressionError as error:
        return [(at, str(error))]
    return []


@functools.cache
def installed_adapters() -> Mapping[str, Adapter]:
    """Every adapter installed in this Python environment, by name."""
    found: dict[str, Adapter] = {}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        adapter = point.load()
        found[point.name] = adapter
    return found


def adapter_named(name: str) -> Adapter:
    adapters = installed_adapters()
    if name not in adapters:
        known = ", ".join(sorted(adapters)) or "none"
        raise ConfigError(
            f"no adapter named {name!r} is installed (installed: {known}); install the package "
            f"that provides it (it registers an entry point in the {ENTRY_POINT_GROUP!r} group)"
        )
    return adapters[name]
