"""`python`: the escape hatch, a `module:function` (sync or async) from events to events."""

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from bus.errors import ConfigError
from bus.events.event import Event
from bus.flows.steps.base import Item, StepError


def import_function(reference: str) -> Callable[..., Any]:
    """The callable that `module:function` names; ConfigError saying what is missing."""
    module_name, _, function_name = reference.partition(":")
    if not module_name or not function_name:
        raise ConfigError(f"{reference!r} must name a function as module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(
            f"cannot import module {module_name!r} for {reference!r}: {error}"
        ) from error
    function: Callable[..., Any] | None = getattr(module, function_name, None)
    if not callable(function):
        raise ConfigError(f"module {module_name!r} has no function {function_name!r}")
    return function


@dataclass(frozen=True)
class PythonStep:
    """The function receives an Event and returns an Event, a list of Events, or None (drop)."""

    label: str
    function: Callable[[Event], Any]

    async def apply(self, item: Item) -> list[Item]:
        try:
            result = self.function(item.event)
            if inspect.isawaitable(result):
                result = await result
        except Exception as error:
            raise StepError(f"{self.label}: {_name(self.function)} raised {error!r}") from error
        events = [] if result is None else result if isinstance(result, list) else [result]
        for event in events:
            if not isinstance(event, Event):
                raise StepError(
                    f"{self.label}: {_name(self.function)} must return Event, a list of Events "
                    f"or None; it returned {type(event).__name__}"
                )
        return [replace(item, event=event) for event in events]


def _name(function: Callable[..., Any]) -> str:
    return f"{function.__module__}:{getattr(function, '__qualname__', function)}"
