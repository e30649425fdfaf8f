"""`route`: the content-based router; first match or all matches, with `otherwise`."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from bus.flows.expressions import Expression
from bus.flows.steps.base import Item, attributes_of


@dataclass(frozen=True)
class Route:
    label: str
    routes: Sequence[tuple[Expression, str]]  # (when, topic), in order
    otherwise: str | None = None
    mode: Literal["first", "all"] = "first"

    async def apply(self, item: Item) -> list[Item]:
        attributes = attributes_of(item.event)
        chosen: list[str] = []
        for when, topic in self.routes:
            if when.evaluate_predicate(item.event.data, attributes):
                chosen.append(topic)
                if self.mode == "first":
                    break
        if not chosen and self.otherwise is not None:
            chosen.append(self.otherwise)
        # No match and no otherwise: the event goes nowhere, as a router without a default does.
        return [Item(item.event, tuple(chosen))] if chosen else []
