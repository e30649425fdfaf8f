"""`set_key`: choose the partition key, and so the ordering unit, of the events from here on."""

from dataclasses import dataclass, replace

from bus.flows.expressions import Expression
from bus.flows.steps.base import Item, StepError, attributes_of


@dataclass(frozen=True)
class SetKey:
    label: str
    key: Expression

    async def apply(self, item: Item) -> list[Item]:
        value = self.key.evaluate(item.event.data, attributes_of(item.event))
        if value is None or isinstance(value, bytes | list | dict):
            raise StepError(
                f"{self.label}: key expression {self.key.source!r} gave {value!r}; a key must "
                "be text or a number"
            )
        return [replace(item, event=replace(item.event, key=str(value)))]
