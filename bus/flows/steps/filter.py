"""`filter`: keep the events for which a predicate holds."""

from dataclasses import dataclass

from bus.flows.expressions import Expression
from bus.flows.steps.base import Item, attributes_of


@dataclass(frozen=True)
class Filter:
    label: str
    predicate: Expression

    async def apply(self, item: Item) -> list[Item]:
        keep = self.predicate.evaluate_predicate(item.event.data, attributes_of(item.event))
        return [item] if keep else []
