"""What every step shares: the item that flows through the steps, and the step protocol."""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from bus.errors import BusError
from bus.events.event import Event


class StepError(BusError):
    """A step could not handle an event; the record goes to the flow's dead-letter topic."""


@dataclass(frozen=True, slots=True)
class Item:
    """An event on its way through a flow's steps, and where a route step sent it."""

    event: Event
    destinations: tuple[str, ...] = ()  # empty: the flow's `to` topic


class Step(Protocol):
    """One mediation step. `label` names it in errors and dead letters, e.g. `steps[2].route`."""

    @property
    def label(self) -> str: ...

    async def apply(self, item: Item) -> list[Item]: ...


def attributes_of(event: Event) -> Mapping[str, Any]:
    """The CloudEvents attributes that expressions see as `attributes`."""
    return {
        "id": event.id,
        "source": event.source,
        "type": event.type,
        "subject": event.subject,
        "time": event.time,
        "key": event.key,
    }
