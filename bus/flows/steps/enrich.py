"""`enrich`: merge the result of a lookup (a REST or SOAP call, or Python) into the event."""

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from bus.flows.expressions import Expression
from bus.flows.steps.base import Item, StepError, attributes_of


class Lookup(Protocol):
    """What an adapter (or a Python function) offers to `enrich`: arguments in, a value out."""

    async def __call__(self, **arguments: Any) -> Any: ...


@dataclass(frozen=True)
class Enrich:
    """Puts the lookup's result in field `into`; later steps (a transform) use it, and the
    output must still match its schema."""

    label: str
    lookup: Lookup
    arguments: Mapping[str, Expression]
    into: str

    async def apply(self, item: Item) -> list[Item]:
        attributes = attributes_of(item.event)
        arguments = {
            name: expression.evaluate(item.event.data, attributes)
            for name, expression in self.arguments.items()
        }
        try:
            result = await self.lookup(**arguments)
        except StepError:
            raise
        except Exception as error:
            raise StepError(f"{self.label}: the lookup failed: {error!r}") from error
        data = {**item.event.data, self.into: result}
        return [replace(item, event=replace(item.event, data=data))]
