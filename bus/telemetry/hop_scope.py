"""One hop under way: the `Hop` its work fills, its span when traced, and how it ends.

`Telemetry` (`bus.telemetry.hub`) opens them; the runners, the ingest and the replay fill and
end them. When a hop ends, its duration and outcome are set (`failed`, with the error, when an
exception escapes), its error text is redacted, the span gets the hop's attributes and ends,
and the hop goes to `Telemetry.report`.
"""

import time
from collections.abc import Mapping, Sequence
from contextvars import Token
from types import TracebackType
from typing import TYPE_CHECKING, Self

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind
from opentelemetry.util.types import AttributeValue

from bus.events.event import Event
from bus.events.lineage import PARENT_ID, ROOT_ID, root_id_of
from bus.telemetry.context import current_hop
from bus.telemetry.hop import Hop, HopKind
from bus.telemetry.secrets import Redactor
from bus.telemetry.spans import NO_SPAN, StepLabel, StepSpan, TracedSpan, describe, finish
from bus.telemetry.tracing import inject

if TYPE_CHECKING:  # the hub makes scopes: importing it here would be a cycle
    from bus.telemetry.hub import Telemetry

_CREDENTIAL_SHAPES = Redactor()
"""What a scope reported nowhere (the test kit's) hides: credentials known by their shape."""


class HopScope:
    """One hop under way: `hop` to fill, its span (if traced), and how it ends.

    `with scope:` makes the hop current (for log lines and child spans) and ends it on leaving.
    A hop whose end comes later than its work (a mediation record is done when its outputs
    are acknowledged and its offset committed, after the whole batch was sent) uses
    `with scope.active():` around the work, and `scope.end()` once done.
    """

    __slots__ = (
        "_clock",
        "_ended",
        "_hop_token",
        "_incoming",
        "_outgoing",
        "_span",
        "_span_token",
        "_telemetry",
        "hop",
    )

    def __init__(
        self,
        hop: Hop,
        telemetry: "Telemetry | None",
        span: Span | None,
        incoming: Mapping[str, str] | None,
    ) -> None:
        self.hop = hop
        self._telemetry = telemetry
        self._span = span
        self._incoming = incoming
        self._outgoing: Mapping[str, str] | None = None
        self._clock = time.perf_counter()
        self._ended = False
        self._hop_token: Token[Hop | None] | None = None
        self._span_token: Token[otel_context.Context] | None = None

    @classmethod
    def detached(cls, kind: HopKind, flow: str) -> "HopScope":
        """A hop reported nowhere and never traced (the in-memory test kit's)."""
        return cls(Hop(kind, flow, time.time()), None, None, None)

    # -- being current ----------------------------------------------------------------------

    def __enter__(self) -> Self:
        self._activate()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._deactivate()
        self.end(error)

    def active(self) -> "_Active":
        """Current while inside; ends the hop only if an exception escapes (as failed)."""
        return _Active(self)

    def _activate(self) -> None:
        self._hop_token = current_hop.set(self.hop)
        if self._span is not None:
            self._span_token = otel_context.attach(trace.set_span_in_context(self._span))

    def _deactivate(self) -> None:
        if self._span_token is not None:
            otel_context.detach(self._span_token)
            self._span_token = None
        if self._hop_token is not None:
            current_hop.reset(self._hop_token)
            self._hop_token = None

    # -- filling the hop --------------------------------------------------------------------

    def event(self, event: Event) -> None:
        """The event this hop works on."""
        hop = self.hop
        hop.event_id = event.id
        hop.event_type = event.type
        hop.event_time = event.time
        hop.parent_id = event.extensions.get(PARENT_ID)
        hop.root_id = root_id_of(event)

    def event_from_headers(self, headers: Sequence[tuple[str, bytes | None]]) -> None:
        """The event a record's CloudEvents headers name, for a record that cannot be decoded
        (or that is not decoded: a dead letter being replayed)."""
        hop = self.hop
        for name, value in headers:
            if value is None or not name.startswith("ce_"):
                continue
            text = value.decode(errors="replace")
            if name == "ce_id":
                hop.event_id = text
            elif name == "ce_type":
                hop.event_type = text
            elif name == "ce_" + PARENT_ID:
                hop.parent_id = text
            elif name == "ce_" + ROOT_ID:
                hop.root_id = text
        hop.root_id = hop.root_id or hop.event_id

    def carrier(self, incoming: Mapping[str, str] | None = None) -> Mapping[str, str]:
        """The trace headers for records (or requests) this hop writes: its span's context
        when traced, else the incoming ones (`incoming`, or those the hop began with)."""
        if self._span is None:
            if incoming is not None:
                return incoming
            return self._incoming or {}
        if self._outgoing is None:
            self._outgoing = inject(self._span)
        return self._outgoing

    def set(self, name: str, value: AttributeValue) -> None:
        """An attribute of the hop's span (nothing when not traced)."""
        if self._span is not None:
            self._span.set_attribute(name, value)

    def redact(self, text: str) -> str:
        """`text` without the process's secrets: for what the hop writes elsewhere (a dead
        letter's error header)."""
        return self._redactor.redact(text)

    def step(self, label: str) -> StepSpan:
        """One mediation step: `hop.step` is `label` while inside, and, when traced, a child
        span is."""
        return self.span(
            label, SpanKind.INTERNAL, {"bus.flow": self.hop.flow, "bus.step": label}, step=label
        )

    def span(
        self,
        name: str,
        kind: SpanKind,
        attributes: Mapping[str, AttributeValue] | None = None,
        *,
        step: str | None = None,
    ) -> StepSpan:
        """A child span of the hop's span, when traced; `hop.step` is `step` while inside, if
        given. Use it in `with`."""
        telemetry = self._telemetry
        if self._span is None or telemetry is None:
            return NO_SPAN if step is None else StepLabel(self.hop, step)
        parent = trace.set_span_in_context(self._span)
        return TracedSpan(
            telemetry.tracing.start_span(name, kind, parent=parent, attributes=attributes),
            self.hop,
            step,
            telemetry.redactor,
        )

    @property
    def traced(self) -> bool:
        return self._span is not None

    @property
    def _redactor(self) -> Redactor:
        return _CREDENTIAL_SHAPES if self._telemetry is None else self._telemetry.redactor

    # -- ending -----------------------------------------------------------------------------

    def end(self, error: BaseException | None = None) -> None:
        """End the hop (once; later calls do nothing): failed if `error` is given."""
        if self._ended:
            return
        self._ended = True
        hop = self.hop
        hop.duration = time.perf_counter() - self._clock
        if error is not None:
            hop.outcome = "failed"
            hop.error = describe(error)
        if hop.error is not None:  # it goes to the journey topic and the span
            hop.error = self._redactor.redact(hop.error)
        if self._span is not None:
            finish(self._span, hop, error, self._redactor)
        if self._telemetry is not None:
            self._telemetry.report(hop)


class _Active:
    __slots__ = ("_scope",)

    def __init__(self, scope: HopScope) -> None:
        self._scope = scope

    def __enter__(self) -> HopScope:
        self._scope._activate()
        return self._scope

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._scope._deactivate()
        if error is not None:
            self._scope.end(error)
