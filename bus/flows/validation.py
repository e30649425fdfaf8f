"""Checks of loaded flows against the schema catalog and the Python path, without connecting.

Loading (`bus.flows.loading`) guarantees the file's shape; this module checks what the shape
cannot: that schemas exist, expressions compile, mappings fit their target schemas, functions'
modules can be found and every event has somewhere to go. Problems come in the loader's form,
`<file>:<line>:<col>: <key path>: <message>`, found through each item's `origin`.
"""

import difflib
import importlib.machinery
import importlib.util
import sys
from collections.abc import Mapping
from typing import Any

from bus.admin.auth_settings import auth_problems
from bus.auth.settings import is_loopback
from bus.events.catalog import SchemaCatalog
from bus.flows.expressions import VARIABLES, ExpressionError, compile_expression
from bus.flows.model import (
    EnrichStep,
    FilterStep,
    FlowFile,
    FlowSet,
    HttpSettings,
    Inbound,
    LookupItem,
    Mediation,
    Origin,
    OtherwiseRoute,
    Outbound,
    PythonStep,
    Route,
    RouteStep,
    SetKeyStep,
    SplitStep,
    TransformStep,
    WhenRoute,
)
from bus.flows.steps.split import SPLIT_NEEDS_A_PATH, split_path
from bus.plugins import ENTRY_POINT_GROUP, Adapter, installed_adapters

SubPath = tuple[str | int, ...]
UNDECODED_STEPS = (FilterStep, RouteStep, SetKeyStep)
"""The steps a flow with `decode: false` may have: those that need no event data."""
_UNDECODED_HINT = " (the flow has `decode: false`: its data is never read; remove that to read it)"


def validate_flows(flows: FlowSet, catalog: SchemaCatalog) -> list[str]:
    """Every problem of every flow, each as `<file>:<line>:<col>: <key path>: <message>`."""
    checker = _Checker(catalog, lookups={item.name for item in flows.lookups})
    for lookup in flows.lookups:
        checker.lookup(lookup)
    for inbound in flows.inbound:
        checker.inbound(inbound)
    for mediation in flows.mediation:
        checker.mediation(mediation)
    for outbound in flows.outbound:
        checker.outbound(outbound)
    for adapter in installed_adapters().values():  # settings outside items (the publish API)
        checker.problems += adapter.check_flows(flows, catalog)
    return checker.problems + _admin_problems(flows) + _open_endpoint_problems(flows)


def _admin_problems(flows: FlowSet) -> list[str]:
    """What `bus run` would refuse in the admin API's settings, located in the file."""
    admin = flows.observability.admin
    if admin is None:
        return []
    file = next(file for file in flows.files if file.observability is not None)
    return [
        file.source.problem(("observability", "admin", *path), message)
        for path, message in auth_problems(admin)
    ]


_INBOUND_EXAMPLE = "auth: {api_key: {header: X-Api-Key, keys: [${API_KEY}]}}"


def _open_endpoint_problems(flows: FlowSet) -> list[str]:
    """Every endpoint of the inbound HTTP server (webhooks, SOAP, the publish API) without
    `auth`, while the server listens on an address that is not a loopback one: anyone on the
    network could publish events through it. The fix is a credential, an explicit
    `auth: {anonymous: true}`, or a loopback `http.host`; omitting auth is never read as
    "anyone", so that an open endpoint is always a decision someone wrote down."""
    http = flows.http or HttpSettings()
    if is_loopback(http.host):
        return []
    problems = []
    for item in flows.inbound:
        config = item.config
        # An item with a `path` is served by the HTTP server (rest webhooks, soap); a rest item
        # that polls calls out instead and takes no calls.
        if not isinstance(config, Mapping) or "path" not in config or "poll" in config:
            continue
        if config.get("auth") is None:
            what = f"inbound item {item.name!r}"
            problems.append(
                item.origin.problem(_open_message(what, http.host), item.adapter, "auth")
            )
    if http.publish is not None and http.publish.auth is None:
        file = next(file for file in flows.files if file.http is not None)
        message = _open_message("the publish API", http.host)
        problems.append(file.source.problem(("http", "publish", "auth"), message))
    return problems


def _open_message(what: str, host: str) -> str:
    return (
        f"missing, while the inbound HTTP server listens on {host} (http.host), which is not a "
        f"loopback address, so anyone on the network could publish events through {what}; "
        f"set auth (e.g. {_INBOUND_EXAMPLE}), or auth: {{anonymous: true}} to let anyone call "
        "on purpose, or http.host: 127.0.0.1"
    )


def flow_file_json_schema() -> dict[str, Any]:
    """The JSON Schema of one flow file, for editors (`bus schema-json` prints it)."""
    schema = FlowFile.model_json_schema(by_alias=True, mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **schema,
        "title": "bus flow file",
        "description": "Inbound adapters, mediation flows and outbound adapters of bus.",
    }


def module_findable(module: str) -> bool:
    """Whether `module` can be imported, found without running any of its code.

    `importlib.util.find_spec("a.b")` imports package `a` to find `b`; the parents' search
    locations are followed by hand instead, so that checking a file never runs user code.
    """
    if module in sys.modules:
        return True
    parts = module.split(".")
    try:
        spec = importlib.util.find_spec(parts[0])
    except (ImportError, ValueError):
        return False
    for depth in range(2, len(parts) + 1):
        if spec is None or spec.submodule_search_locations is None:
            return False
        spec = importlib.machinery.PathFinder.find_spec(
            ".".join(parts[:depth]), list(spec.submodule_search_locations)
        )
    return spec is not None


class _Checker:
    """Collects problems while walking the flows; one method per kind of item or step."""

    def __init__(self, catalog: SchemaCatalog, lookups: set[str]) -> None:
        self.catalog = catalog
        self.lookups = lookups
        self.names = catalog.names()
        self.problems: list[str] = []

    def report(self, origin: Origin, path: SubPath, message: str) -> None:
        self.problems.append(origin.problem(message, *path))

    # -- items ----------------------------------------------------------------------------------

    # An inbound item's expressions read the call (`body`, ...) and a reply's the response:
    # names that only its adapter knows, so the adapter compiles them (check_inbound/outbound).

    def inbound(self, item: Inbound) -> None:
        origin, event = item.origin, item.event
        fields = self.record_fields(origin, ("event", "type"), event.type)
        if fields is not None:
            self.unknown_fields(origin, ("event", "map"), event.map, event.type, fields)
        adapter = self.adapter(item)
        if adapter is not None:
            for at, message in adapter.check_inbound(item, self.catalog):
                self.report(origin, at, message)

    def mediation(self, flow: Mediation) -> None:
        origin = flow.origin
        for index, step in enumerate(flow.steps):
            if not flow.decode and not isinstance(step, UNDECODED_STEPS):
                kind = next(iter(step.model_dump(by_alias=True)))
                self.report(
                    origin,
                    ("steps", index, kind),
                    f"flow {flow.name!r} has `decode: false`, so it never reads the events' data "
                    "and can only filter, route and set_key on `attributes`; remove "
                    f"`decode: false` to {kind}",
                )
                continue
            self.step(origin, ("steps", index), step, flow.variables)
        if flow.to is None and not (flow.steps and isinstance(flow.steps[-1], RouteStep)):
            self.report(
                origin,
                (),
                f"flow {flow.name!r} has no `to` and does not end with a route step, so its "
                "events have nowhere to go; add `to: <topic>` or end the steps with a route",
            )

    def outbound(self, item: Outbound) -> None:
        origin, reply = item.origin, item.reply
        adapter = self.adapter(item)
        if adapter is not None:
            for at, message in adapter.check_outbound(item, self.catalog):
                self.report(origin, at, message)
        if reply is None:
            return
        fields = self.record_fields(origin, ("reply", "type"), reply.type)
        if fields is not None:
            self.unknown_fields(origin, ("reply", "map"), reply.map, reply.type, fields)

    def lookup(self, item: LookupItem) -> None:
        adapter = self.adapter(item)
        if adapter is not None:
            for at, message in adapter.check_lookup(item, self.catalog):
                self.report(item.origin, at, message)

    def adapter(self, item: Inbound | Outbound | LookupItem) -> Adapter | None:
        """The item's adapter; None (after reporting why) if it is not installed."""
        adapter = installed_adapters().get(item.adapter)
        if adapter is None:
            known = ", ".join(sorted(installed_adapters())) or "none"
            self.report(
                item.origin,
                (item.adapter,),
                f"no adapter named {item.adapter!r} is installed (installed: {known}); check the "
                f"spelling, or install the package that provides it (an entry point in the "
                f"{ENTRY_POINT_GROUP!r} group)",
            )
        return adapter

    # -- steps ----------------------------------------------------------------------------------

    def step(
        self, origin: Origin, at: SubPath, step: object, variables: tuple[str, ...] = VARIABLES
    ) -> None:
        if isinstance(step, FilterStep):
            self.expression(origin, (*at, "filter"), step.filter, variables)
        elif isinstance(step, SetKeyStep):
            self.expression(origin, (*at, "set_key"), step.set_key, variables)
        elif isinstance(step, SplitStep):
            self.expression(origin, (*at, "split"), step.split)
            if split_path(step.split) is None:
                self.report(origin, (*at, "split"), SPLIT_NEEDS_A_PATH.format(step.split))
        elif isinstance(step, TransformStep):
            self.transform(origin, (*at, "transform"), step)
        elif isinstance(step, EnrichStep):
            if ":" in step.enrich.lookup:
                self.function(origin, (*at, "enrich", "lookup"), step.enrich.lookup)
            elif step.enrich.lookup not in self.lookups:
                known = ", ".join(sorted(self.lookups)) or "none"
                self.report(
                    origin,
                    (*at, "enrich", "lookup"),
                    f"no lookup named {step.enrich.lookup!r} (declared in `lookups`: {known}); "
                    "declare it under `lookups:` or name a Python function as module:function",
                )
            self.field_map(origin, (*at, "enrich", "with"), step.enrich.with_)
        elif isinstance(step, PythonStep):
            self.function(origin, (*at, "python"), step.python)
        elif isinstance(step, RouteStep):
            self.route(origin, (*at, "route"), step.route, variables)

    def transform(self, origin: Origin, at: SubPath, step: TransformStep) -> None:
        target, mapping = step.transform.to, step.transform.map
        self.field_map(origin, (*at, "map"), mapping)
        fields = self.record_fields(origin, (*at, "to"), target)
        if fields is None:
            return
        self.unknown_fields(origin, (*at, "map"), mapping, target, fields)
        missing = [name for name, required in fields.items() if required and name not in mapping]
        if missing:
            self.report(
                origin,
                (*at, "map"),
                f"does not map {', '.join(missing)}, required by {target} (a field without a "
                "default in the schema must be mapped)",
            )

    def route(
        self, origin: Origin, at: SubPath, route: Route, variables: tuple[str, ...] = VARIABLES
    ) -> None:
        routes = (*at, "routes")
        for index, choice in enumerate(route.routes):
            if isinstance(choice, WhenRoute):
                self.expression(origin, (*routes, index, "when"), choice.when, variables)
        if not any(isinstance(choice, WhenRoute) for choice in route.routes):
            self.report(origin, routes, "a route needs at least one {when: ..., to: ...}")
        otherwise = [
            i for i, choice in enumerate(route.routes) if isinstance(choice, OtherwiseRoute)
        ]
        for index in otherwise[1:]:
            self.report(
                origin, (*routes, index), "a second otherwise; a route has at most one, last"
            )
        if otherwise and otherwise[0] != len(route.routes) - 1:
            self.report(
                origin,
                (*routes, otherwise[0]),
                "otherwise must be the last route (it takes what no `when` chose)",
            )

    # -- the things steps refer to --------------------------------------------------------------

    def expression(
        self, origin: Origin, at: SubPath, source: str, variables: tuple[str, ...] = VARIABLES
    ) -> None:
        try:
            compile_expression(source, variables)
        except ExpressionError as error:
            undecoded = "event" not in variables and "'event'" in error.problem
            self.report(origin, at, str(error) + (_UNDECODED_HINT if undecoded else ""))

    def field_map(self, origin: Origin, at: SubPath, mapping: Mapping[str, str]) -> None:
        for name, source in mapping.items():
            self.expression(origin, (*at, name), source)

    def function(self, origin: Origin, at: SubPath, reference: str) -> None:
        module = reference.partition(":")[0]
        if not module_findable(module):
            self.report(
                origin,
                at,
                f"module {module!r} of {reference} is not found on the Python path; install it, "
                "check its spelling, or run bus where the module is importable",
            )

    def record_fields(self, origin: Origin, at: SubPath, name: str) -> dict[str, bool] | None:
        """The schema's fields (name -> required), or None after reporting why there are none."""
        if name not in self.names:
            self.report(
                origin, at, f"no schema named {name!r} in {self.catalog.root}{self.hint(name)}"
            )
            return None
        schema = self.catalog.current(name).schema
        if not isinstance(schema, dict) or schema.get("type") != "record":
            kind = schema.get("type") if isinstance(schema, dict) else "not a record"
            self.report(origin, at, f"{name} is a {kind}, but an event is a record")
            return None
        return {field["name"]: "default" not in field for field in schema["fields"]}

    def hint(self, name: str) -> str:
        simple = name.rpartition(".")[2]
        close = difflib.get_close_matches(name, self.names, n=3, cutoff=0.8)
        close += [known for known in self.names if known.rpartition(".")[2] == simple]
        close = list(dict.fromkeys(close))[:3]
        if close:
            return f"; did you mean {' or '.join(close)}?"
        return " (bus schemas list shows every schema)"

    def unknown_fields(
        self,
        origin: Origin,
        at: SubPath,
        mapping: Mapping[str, str],
        schema: str,
        fields: Mapping[str, bool],
    ) -> None:
        listed = ", ".join(fields)
        for name in mapping:
            if name not in fields:
                close = difflib.get_close_matches(name, list(fields), n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]}?)" if close else ""
                self.report(
                    origin,
                    (*at, name),
                    f"{schema} has no field {name!r}{hint}; its fields: {listed}",
                )
