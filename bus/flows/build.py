"""From a flow file's mediation block to the runtime's steps, processor and plan."""

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bus.errors import ConfigError
from bus.events.catalog import SchemaCatalog
from bus.events.codec import EventCodec
from bus.flows import model
from bus.flows.expressions import VARIABLES, compile_expression
from bus.flows.processor import FlowProcessor
from bus.flows.runner import FlowPlan
from bus.flows.steps import (
    Enrich,
    Filter,
    Lookup,
    PythonStep,
    Route,
    SetKey,
    Split,
    Step,
    Transform,
    import_function,
)
from bus.flows.steps.split import SPLIT_NEEDS_A_PATH, split_path


@dataclass(frozen=True)
class BuiltFlow:
    plan: FlowPlan
    processor: FlowProcessor


def build_flow(
    flow: model.Mediation,
    catalog: SchemaCatalog,
    codec: EventCodec,
    lookups: Mapping[str, Lookup] | None = None,
) -> BuiltFlow:
    try:
        steps = [
            _step(_Context(f"steps[{index}]", catalog, lookups or {}, flow.variables), step)
            for index, step in enumerate(flow.steps)
        ]
    except ConfigError as error:
        raise ConfigError(
            f"{flow.origin.where('steps')}: mediation flow {flow.name!r}: {error}"
        ) from error
    plan = FlowPlan(
        name=flow.name,
        sources=tuple(flow.from_),
        dead_letter_topic=flow.dlq,
        guarantee=flow.guarantee,
        max_in_flight=flow.max_in_flight,
    )
    processor = FlowProcessor(
        flow=flow.name,
        steps=steps,
        codec=codec,
        to=flow.to,
        dead_letter_topic=flow.dlq,
        decode=flow.decode,
    )
    return BuiltFlow(plan, processor)


def output_topics(flow: model.Mediation) -> set[str]:
    """Every topic a flow may write: its `to`, its routes' topics and its dead-letter topic."""
    topics = {flow.dlq, *([flow.to] if flow.to else [])}
    for step in flow.steps:
        if isinstance(step, model.RouteStep):
            for choice in step.route.routes:
                topics.add(choice.to if isinstance(choice, model.WhenRoute) else choice.otherwise)
    return topics


@dataclass(frozen=True)
class _Context:
    where: str
    catalog: SchemaCatalog
    lookups: Mapping[str, Lookup]
    variables: tuple[str, ...]  # what the flow's expressions see (`Mediation.variables`)


def _step(at: _Context, step: Any) -> Step:
    builder = _BUILDERS.get(type(step))
    if builder is None:
        raise ConfigError(f"{at.where}: unknown step {type(step).__name__}")
    if at.variables != VARIABLES and builder not in _UNDECODED_BUILDERS:
        raise ConfigError(
            f"{at.where}: a flow with `decode: false` can only filter, route and set_key"
        )
    return builder(step, at)


def _filter(step: model.FilterStep, at: _Context) -> Step:
    return Filter(f"{at.where}.filter", compile_expression(step.filter, at.variables))


def _set_key(step: model.SetKeyStep, at: _Context) -> Step:
    return SetKey(f"{at.where}.set_key", compile_expression(step.set_key, at.variables))


def _transform(step: model.TransformStep, at: _Context) -> Step:
    mapping = {name: compile_expression(text) for name, text in step.transform.map.items()}
    return Transform(f"{at.where}.transform", at.catalog.current(step.transform.to), mapping)


def _split(step: model.SplitStep, at: _Context) -> Step:
    fields = split_path(step.split)
    if fields is None:
        raise ConfigError(f"{at.where}.split: {SPLIT_NEEDS_A_PATH.format(step.split)}")
    return Split(f"{at.where}.split", compile_expression(step.split), fields, at.catalog)


def _enrich(step: model.EnrichStep, at: _Context) -> Step:
    arguments = {name: compile_expression(text) for name, text in step.enrich.with_.items()}
    lookup = _lookup(at.where, step.enrich.lookup, at.lookups)
    return Enrich(f"{at.where}.enrich", lookup, arguments, step.enrich.into)


def _python(step: model.PythonStep, at: _Context) -> Step:
    return PythonStep(f"{at.where}.python", import_function(step.python))


def _route(step: model.RouteStep, at: _Context) -> Step:
    whens = [
        (compile_expression(choice.when, at.variables), choice.to)
        for choice in step.route.routes
        if isinstance(choice, model.WhenRoute)
    ]
    otherwise = next(
        (c.otherwise for c in step.route.routes if isinstance(c, model.OtherwiseRoute)), None
    )
    return Route(f"{at.where}.route", whens, otherwise, step.route.mode)


_BUILDERS: dict[type[Any], Callable[[Any, _Context], Step]] = {
    model.FilterStep: _filter,
    model.SetKeyStep: _set_key,
    model.TransformStep: _transform,
    model.SplitStep: _split,
    model.EnrichStep: _enrich,
    model.PythonStep: _python,
    model.RouteStep: _route,
}
_UNDECODED_BUILDERS = (_filter, _set_key, _route)


def _lookup(where: str, name: str, lookups: Mapping[str, Lookup]) -> Lookup:
    if name in lookups:
        return lookups[name]
    if ":" not in name:
        known = ", ".join(sorted(lookups)) or "none yet"
        raise ConfigError(
            f"{where}.enrich: no lookup named {name!r} (known: {known}); name an adapter's "
            "lookup or a Python function as module:function"
        )
    function = import_function(name)

    async def python_lookup(**arguments: Any) -> Any:
        result = function(**arguments)
        return await result if inspect.isawaitable(result) else result

    return python_lookup
