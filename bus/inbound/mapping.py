"""An inbound item's `event:` block, compiled: a call's values in, a validated event out.

Shared by every inbound adapter: REST maps `body`, `query`, `headers` and `path`; a SOAP
endpoint or a poller map their own variables. A failure names each event field that could not
be filled or is invalid, so that the adapter can answer 422 (or a SOAP Fault) with them.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bus.errors import BusError, EventValidationError
from bus.events.catalog import SchemaCatalog
from bus.events.event import Event
from bus.events.validation import new_event
from bus.flows.expressions import Expression, ExpressionError, compile_expression
from bus.flows.model import InboundEvent


class MappingError(BusError):
    """The call cannot become an event; `problems` holds (event field path, what is wrong)."""

    def __init__(self, event_type: str, problems: list[tuple[str, str]]) -> None:
        self.event_type = event_type
        self.problems = problems
        listed = "; ".join(f"{field or '<event>'}: {problem}" for field, problem in problems)
        super().__init__(f"the request does not make a valid {event_type}: {listed}")


@dataclass(frozen=True)
class InboundMapping:
    event_type: str
    key: Expression | None
    subject: Expression | None
    fields: Mapping[str, Expression]
    whole: str | None
    """Without `map`, this variable (e.g. `body`) is the event's data as it is."""
    optional: frozenset[str] = frozenset()
    """Event fields with a default: mapped from a bare path that the call lacks, they take it."""

    @classmethod
    def compile(
        cls,
        block: InboundEvent,
        catalog: SchemaCatalog,
        variables: tuple[str, ...],
        *,
        whole: str | None = None,
    ) -> "InboundMapping":
        """Raises ExpressionError for an expression that does not compile."""
        schema = catalog.current(block.type).schema
        fields = schema.get("fields", []) if isinstance(schema, dict) else []

        def compiled(source: str | None) -> Expression | None:
            return None if source is None else compile_expression(source, variables)

        return cls(
            event_type=block.type,
            key=compiled(block.key),
            subject=compiled(block.subject),
            fields={name: compile_expression(src, variables) for name, src in block.map.items()},
            whole=whole,
            optional=frozenset(field["name"] for field in fields if "default" in field),
        )

    def event(
        self,
        catalog: SchemaCatalog,
        values: Mapping[str, Any],
        *,
        event_id: str,
        source: str,
    ) -> Event:
        """The event these values make, or MappingError naming every field at fault."""
        problems: list[tuple[str, str]] = []
        data: Any
        if self.fields:
            data = {}
            for name, expression in self.fields.items():
                try:
                    data[name] = expression.evaluate_in(values)
                except ExpressionError as error:
                    # Webhook payloads leave out what is not set; the event's default says
                    # what that means. A computed value that fails is a fault all the same.
                    if not (expression.is_path and name in self.optional):
                        problems.append((name, str(error)))
        else:
            data = values.get(self.whole or "", {})
            if not isinstance(data, Mapping):
                problems.append(("", f"expected a JSON object, found {type(data).__name__}"))
        data_mapped = not problems
        key = self._text(self.key, values, "key", problems)
        subject = self._text(self.subject, values, "subject", problems)
        if not data_mapped:
            raise MappingError(self.event_type, problems)
        # The data is checked even when the key failed: a null `id` usually breaks both, and
        # the caller should learn about the event field too, not only about `<key>`.
        try:
            event = new_event(
                catalog, self.event_type, data, source=source, key=key, subject=subject,
                event_id=event_id,
            )  # fmt: skip
        except EventValidationError as invalid:
            raise MappingError(self.event_type, problems + invalid.problems) from invalid
        if problems:
            raise MappingError(self.event_type, problems)
        return event

    def key_of(self, values: Mapping[str, Any]) -> str | None:
        """The Kafka key these values give, or None if there is none or it cannot be made (for
        a dead letter, which should keep the key when it can)."""
        problems: list[tuple[str, str]] = []
        key = self._text(self.key, values, "key", problems)
        return None if problems else key

    @staticmethod
    def _text(
        expression: Expression | None,
        values: Mapping[str, Any],
        what: str,
        problems: list[tuple[str, str]],
    ) -> str | None:
        if expression is None:
            return None
        try:
            value = expression.evaluate_in(values)
        except ExpressionError as error:
            problems.append((f"<{what}>", str(error)))
            return None
        if value is None or isinstance(value, bool | dict | list):
            problems.append(
                (f"<{what}>", f"expression {expression.source!r} gave no text or number")
            )
            return None
        return value if isinstance(value, str) else str(value)
