"""`transform`: a new event of another schema, each field mapped by an expression."""

from collections.abc import Mapping
from dataclasses import dataclass

from bus.events.catalog import SchemaVersion
from bus.events.validation import validated
from bus.flows.expressions import Expression
from bus.flows.steps.base import Item, attributes_of


@dataclass(frozen=True)
class Transform:
    label: str
    target: SchemaVersion
    mapping: Mapping[str, Expression]  # target field -> expression

    async def apply(self, item: Item) -> list[Item]:
        attributes = attributes_of(item.event)
        # Not copied: `validated` builds the new event's data afresh, so nothing aliases.
        values = {"event": item.event.data, "attributes": attributes}
        data = {
            field: expression.evaluate_in(values, copy=False)
            for field, expression in self.mapping.items()
        }
        # Checked here, so a mapping mistake names the step rather than surfacing at encoding.
        event = item.event.with_data(self.target.full_name, validated(self.target, data))
        return [Item(event, item.destinations)]
