"""`split`: one event per element of an array of records in the event."""

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from bus.events.catalog import SchemaCatalog
from bus.flows.expressions import Expression
from bus.flows.steps.base import Item, StepError, attributes_of

SPLIT_NEEDS_A_PATH = (
    "{!r} must name an array field, e.g. event.lines, so that the elements' schema is known"
)
_FIELD_PATH = re.compile(r"\s*event((?:\.[A-Za-z_][A-Za-z0-9_]*)+)\s*")


def split_path(source: str) -> list[str] | None:
    """The field path a split expression names (`event.order.lines` -> order, lines), or None
    when it is not a plain field path: the elements' schema is read from the path."""
    found = _FIELD_PATH.fullmatch(source)
    return found.group(1).lstrip(".").split(".") if found else None


@dataclass(frozen=True)
class Split:
    """Each element becomes an event of the array's item schema, e.g. `event.lines` of an
    OrderPlaced gives one OrderLine event per line; subject and key stay the parent's."""

    label: str
    elements: Expression
    path: Sequence[str]  # the field path the expression names, to find the item schema
    catalog: SchemaCatalog

    async def apply(self, item: Item) -> list[Item]:
        values = self.elements.evaluate(item.event.data, attributes_of(item.event))
        if not isinstance(values, list):
            raise StepError(f"{self.label}: {self.elements.source!r} gave {values!r}, not a list")
        element_type = self._item_type(item.event.type)
        items = []
        for value in values:
            if not isinstance(value, Mapping):
                raise StepError(
                    f"{self.label}: the elements of {self.elements.source!r} must be records "
                    f"to become events; found {value!r}"
                )
            event = replace(item.event, type=element_type, data=dict(value))
            items.append(replace(item, event=event))
        return items

    def _item_type(self, event_type: str) -> str:
        node: Any = self.catalog.current(event_type).schema
        named: dict[str, Any] = {}
        for step in self.path:
            node = _record(node, named)
            field = next((f for f in node["fields"] if f["name"] == step), None)
            if field is None:
                raise StepError(f"{self.label}: {event_type} has no field {step!r}")
            node = field["type"]
        array = _branch(node, "array", named)
        items = _record(array["items"], named) if array else None
        if items is None:
            raise StepError(
                f"{self.label}: {'.'.join(self.path)} of {event_type} is not an array of records"
            )
        return str(items["name"])


def _record(node: Any, named: dict[str, Any]) -> Any:
    record = _branch(node, "record", named)
    return record if record is not None else {"fields": []}


def _branch(node: Any, kind: str, named: dict[str, Any]) -> Any:
    """`node` (or its non-null union branch) if it is of `kind`, remembering named records."""
    if isinstance(node, str):
        node = named.get(node, node)
    if isinstance(node, list):
        return next((b for b in (_branch(n, kind, named) for n in node) if b is not None), None)
    if isinstance(node, dict) and node.get("type") == kind:
        if kind == "record":
            named.setdefault(node["name"], node)
        return node
    return None
