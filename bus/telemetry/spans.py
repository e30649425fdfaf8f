"""The spans inside a hop (a mediation step, an outbound call), and a hop's own span as it ends.

Every text that leaves for the tracing backend from here goes through the process's `Redactor`:
status descriptions and the exception events' message and stack trace. An error can quote a
secret (an external system echoing a key in its answer, a URL with a password), and spans go
to a collector that is not the process's to protect.
"""

import traceback
from contextvars import Token
from types import TracebackType
from typing import Self

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from bus.telemetry.hop import Hop
from bus.telemetry.secrets import Redactor

_FAILED = ("failed", "dead-lettered")


class StepSpan:
    """A part of a hop, used in `with`: while inside, `hop.step` names it (when it has a label)
    and its span (when traced) is current, so that HTTP calls made there carry it.

    This base is the one used when there is neither: it does nothing."""

    __slots__ = ()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        return None

    def set(self, name: str, value: AttributeValue) -> None:
        """Set an attribute of the span."""

    def fail(self, description: str) -> None:
        """Mark the span as failed (an answer that is an error, without an exception)."""


NO_SPAN = StepSpan()


class StepLabel(StepSpan):
    """`hop.step` is `label` while inside (for log lines), the previous value again after.
    An exception leaving it leaves the label: the hop ends there, and says so."""

    __slots__ = ("_hop", "_label", "_previous")

    def __init__(self, hop: Hop, label: str | None) -> None:
        self._hop = hop
        self._label = label
        self._previous: str | None = None

    def __enter__(self) -> Self:
        if self._label is not None:
            self._previous = self._hop.step
            self._hop.step = self._label
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._label is not None and error is None:
            self._hop.step = self._previous


class TracedSpan(StepLabel):
    """A child span of the hop's span, current while inside, ended on leaving."""

    __slots__ = ("_redactor", "_span", "_token")

    def __init__(self, span: Span, hop: Hop, label: str | None, redactor: Redactor) -> None:
        super().__init__(hop, label)
        self._span = span
        self._redactor = redactor
        self._token: Token[otel_context.Context] | None = None

    def __enter__(self) -> Self:
        super().__enter__()
        self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._token is not None:
            otel_context.detach(self._token)
        if error is not None:
            record_error(self._span, error, self._redactor.redact(describe(error)), self._redactor)
        self._span.end()
        super().__exit__(kind, error, traceback)

    def set(self, name: str, value: AttributeValue) -> None:
        self._span.set_attribute(name, value)

    def fail(self, description: str) -> None:
        self._span.set_status(Status(StatusCode.ERROR, self._redactor.redact(description)))


def finish(span: Span, hop: Hop, error: BaseException | None, redactor: Redactor) -> None:
    """The hop's outcome as its span's attributes and status; then end it. `hop.error` is
    redacted already."""
    attributes: dict[str, AttributeValue] = {"bus.outcome": hop.outcome or "unknown"}
    if hop.event_id is not None:
        attributes["bus.event.id"] = hop.event_id
        attributes["messaging.message.id"] = hop.event_id
    if hop.event_type is not None:
        attributes["bus.event.type"] = hop.event_type
    if hop.root_id is not None:
        attributes["bus.root_id"] = hop.root_id
    if hop.parent_id is not None:
        attributes["bus.parent_id"] = hop.parent_id
    if hop.step is not None:
        attributes["bus.step"] = hop.step
    if hop.kind == "outbound":
        attributes["bus.attempts"] = hop.attempts
        if hop.status is not None:
            attributes["http.response.status_code"] = hop.status
    if hop.outputs:
        attributes["bus.outputs"] = [
            f"{output.topic}[{output.partition}]@{output.offset}" for output in hop.outputs
        ]
    span.set_attributes(attributes)
    if error is not None:
        record_error(span, error, hop.error or redactor.redact(describe(error)), redactor)
    elif hop.outcome in _FAILED:
        # A dead letter: the error was handled, and `hop.error` says "<type>: <message>".
        description = hop.error or "dead-lettered"
        span.set_status(Status(StatusCode.ERROR, description))
        span.set_attribute("error.type", description.partition(":")[0])
    span.end()


def record_error(span: Span, error: BaseException, description: str, redactor: Redactor) -> None:
    """The span failed with `error`: its status (`description`, redacted by the caller) and an
    `exception` event as `Span.record_exception` makes it, but with the message and stack trace
    redacted (that method would record them as they are)."""
    span.set_status(Status(StatusCode.ERROR, description))
    span.set_attribute("error.type", type(error).__qualname__)
    kind = type(error)
    module = kind.__module__
    span.add_event(
        "exception",
        {
            "exception.type": (
                f"{module}.{kind.__qualname__}" if module != "builtins" else kind.__qualname__
            ),
            "exception.message": redactor.redact(str(error)),
            "exception.stacktrace": redactor.redact("".join(traceback.format_exception(error))),
        },
    )


def describe(error: BaseException) -> str:
    """`<type>: <message>`, as a hop's error says it (not redacted)."""
    # A task group's failure says "unhandled errors in a TaskGroup"; the one inside says why.
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
