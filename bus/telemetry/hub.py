"""Where a hop becomes a span, a journey record and metric samples.

The runners, the ingest and the servers are given one `Telemetry` and open a hop for each piece
of work on one event::

    with telemetry.consumed("mediation", flow, record, group=group_id) as scope:
        scope.event(decoded.event)                      # who the hop is about
        with scope.step("steps[0]"):                    # a child span per step
            ...
        record = await codec.encode(output, scope.carrier(decoded.trace))
        scope.hop.outcome = "processed"

When the hop ends, its duration and outcome are set (`failed`, with the error, when an exception
escapes; it is re-raised), the span gets the hop's attributes and ends, and the hop goes to
`metrics.observe` and `journeys.record`, neither of which may fail or slow the data path.

Tracing off costs a `Hop` and a context variable per hop: no span object, no attribute dict,
no propagation; `carrier()` passes the incoming trace headers through unchanged.
"""

import logging
import time
from collections.abc import Mapping, Sequence
from contextvars import Token
from types import TracebackType
from typing import Self

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from bus.events.event import Event
from bus.flows.dead_letters import InputRecord
from bus.flows.model import ObservabilitySettings
from bus.telemetry.context import current_hop
from bus.telemetry.hop import Hop, HopKind
from bus.telemetry.journeys import JourneyRecorder
from bus.telemetry.metrics import BusMetrics
from bus.telemetry.status import StatusBoard
from bus.telemetry.tracing import Tracing, extract, inject, kafka_carrier

log = logging.getLogger(__name__)

PARENT_ID = "parentid"
"""CloudEvents extension (`ce_parentid`): the event this one was made from."""
ROOT_ID = "rootid"
"""CloudEvents extension (`ce_rootid`): the first event of the journey. An event written
downstream of another carries its parent's root (or the parent's id if the parent has none);
an event without one is the root of its own journey. Journey records are keyed by it."""

_FAILED = ("failed", "dead-lettered")


def root_id_of(event: Event) -> str:
    """The journey an event belongs to: its `rootid`, else the event itself."""
    return event.extensions.get(ROOT_ID) or event.id


class StepSpan:
    """A span inside a hop (a mediation step, an outbound call), current while inside `with`
    so that HTTP calls made there carry it. This base is the one used when tracing is off:
    it does nothing."""

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


class _TracedSpan(StepSpan):
    __slots__ = ("_span", "_token")

    def __init__(self, span: Span) -> None:
        self._span = span
        self._token: Token[otel_context.Context] | None = None

    def __enter__(self) -> Self:
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
            _record_error(self._span, error, _describe(error))
        self._span.end()

    def set(self, name: str, value: AttributeValue) -> None:
        self._span.set_attribute(name, value)

    def fail(self, description: str) -> None:
        self._span.set_status(Status(StatusCode.ERROR, description))


class HopScope:
    """One hop under way: `hop` to fill, its span (if traced), and how it ends.

    `with scope:` makes the hop current (for log lines and child spans) and ends it on leaving.
    A hop whose end comes later than its work (a mediation record is done when its outputs
    are acknowledged, after the whole batch was sent) uses `with scope.active():` around the
    work, and `scope.end()` once done.
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
        hop.root_id = event.extensions.get(ROOT_ID) or event.id

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

    def step(self, label: str) -> StepSpan:
        """A child span for one mediation step."""
        if self._span is None:
            return NO_SPAN
        return self.span(label, SpanKind.INTERNAL, {"bus.flow": self.hop.flow, "bus.step": label})

    def span(
        self,
        name: str,
        kind: SpanKind,
        attributes: Mapping[str, AttributeValue] | None = None,
    ) -> StepSpan:
        """A child span of the hop's span (NO_SPAN when not traced): use it in `with`."""
        telemetry = self._telemetry
        if self._span is None or telemetry is None:
            return NO_SPAN
        parent = trace.set_span_in_context(self._span)
        return _TracedSpan(
            telemetry.tracing.start_span(name, kind, parent=parent, attributes=attributes)
        )

    @property
    def traced(self) -> bool:
        return self._span is not None

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
            hop.error = _describe(error)
        if self._span is not None:
            _finish(self._span, hop, error)
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


class Telemetry:
    """What the runners, the ingest and the servers of a process are given."""

    def __init__(
        self,
        tracing: Tracing,
        journeys: JourneyRecorder | None,
        metrics: BusMetrics,
        board: StatusBoard,
    ) -> None:
        self.tracing = tracing
        self.journeys = journeys
        self.metrics = metrics
        self.board = board

    @classmethod
    def disabled(cls) -> "Telemetry":
        """No spans, no journeys; counters and metrics on a board and registry of its own."""
        board = StatusBoard()
        return cls(Tracing.disabled(), None, BusMetrics(board), board)

    @classmethod
    def from_settings(cls, settings: ObservabilitySettings, bootstrap_servers: str) -> "Telemetry":
        """What the flow files' `observability` block asks for; `start()` it before use and
        `close()` it after."""
        board = StatusBoard()
        metrics = BusMetrics(board)
        journeys = None
        if settings.journeys.enabled:
            journeys = JourneyRecorder(
                bootstrap_servers, settings.journeys, on_drop=metrics.journey_dropped
            )
        return cls(Tracing.from_settings(settings.tracing), journeys, metrics, board)

    async def start(self) -> None:
        if self.journeys is not None:
            await self.journeys.start()

    async def close(self) -> None:
        """Flush the journey records and the spans still buffered, then stop."""
        if self.journeys is not None:
            await self.journeys.stop()
        self.tracing.shutdown()

    # -- hops -------------------------------------------------------------------------------

    def hop(
        self,
        kind: HopKind,
        flow: str,
        *,
        span_name: str,
        span_kind: SpanKind,
        carrier: Mapping[str, str] | None = None,
        attributes: Mapping[str, AttributeValue] | None = None,
    ) -> HopScope:
        """A hop of `flow`. Its span continues the trace `carrier` names; with no carrier, the
        span current in this task (an inbound request's). `attributes` are for the span:
        callers build them only when `tracing.enabled`."""
        hop = Hop(kind, flow, time.time())
        tracing = self.tracing
        if not tracing.enabled:
            return HopScope(hop, self, None, carrier)
        parent = extract(carrier) if carrier is not None else None
        span = tracing.start_span(span_name, span_kind, parent=parent, attributes=attributes)
        context = span.get_span_context()
        if context.is_valid:
            hop.trace_id = format(context.trace_id, "032x")
            hop.span_id = format(context.span_id, "016x")
        return HopScope(hop, self, span, carrier)

    def consumed(self, kind: HopKind, flow: str, record: InputRecord, *, group: str) -> HopScope:
        """A hop processing a consumed record (mediation, outbound): a CONSUMER span whose
        parent is the record's `traceparent`."""
        if not self.tracing.enabled:  # the hot path: as little as it can be
            hop = Hop(
                kind,
                flow,
                time.time(),
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
            )
            return HopScope(hop, self, None, None)
        carrier = kafka_carrier(record.headers)
        attributes: dict[str, AttributeValue] = {
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": record.topic,
            "messaging.destination.partition.id": str(record.partition),
            "messaging.kafka.offset": record.offset,
            "messaging.consumer.group.name": group,
            "bus.flow": flow,
        }
        if record.key is not None:
            attributes["messaging.kafka.message.key"] = record.key.decode(errors="replace")
        scope = self.hop(
            kind,
            flow,
            span_name=f"process {record.topic}",
            span_kind=SpanKind.CONSUMER,
            carrier=carrier,
            attributes=attributes,
        )
        hop = scope.hop
        hop.topic = record.topic
        hop.partition = record.partition
        hop.offset = record.offset
        return scope

    def producing(
        self, kind: HopKind, flow: str, topic: str, *, carrier: Mapping[str, str] | None = None
    ) -> HopScope:
        """A hop writing one record to `topic` (inbound, replay): a PRODUCER span, child of
        `carrier`'s trace or else of the span current in this task."""
        attributes: dict[str, AttributeValue] | None = None
        if self.tracing.enabled:
            attributes = {
                "messaging.system": "kafka",
                "messaging.operation.type": "send",
                "messaging.operation.name": "send",
                "messaging.destination.name": topic,
                "bus.flow": flow,
            }
        return self.hop(
            kind,
            flow,
            span_name=f"send {topic}",
            span_kind=SpanKind.PRODUCER,
            carrier=carrier,
            attributes=attributes,
        )

    def report(self, hop: Hop) -> None:
        """A hop that ended, to metrics and journeys; their failures never reach the caller."""
        try:
            self.metrics.observe(hop)
        except Exception:
            log.exception("metrics of a %s hop of %s failed", hop.kind, hop.flow)
        if self.journeys is not None:
            try:
                self.journeys.record(hop)
            except Exception:
                log.exception("the journey record of a %s hop of %s failed", hop.kind, hop.flow)


def _finish(span: Span, hop: Hop, error: BaseException | None) -> None:
    """The hop's outcome as the span's attributes and status; then end it."""
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
        _record_error(span, error, hop.error or _describe(error))
    elif hop.outcome in _FAILED:
        # A dead letter: the error was handled, and `hop.error` says "<type>: <message>".
        description = hop.error or "dead-lettered"
        span.set_status(Status(StatusCode.ERROR, description))
        span.set_attribute("error.type", description.partition(":")[0])
    span.end()


def _record_error(span: Span, error: BaseException, description: str) -> None:
    span.set_status(Status(StatusCode.ERROR, description))
    span.set_attribute("error.type", type(error).__qualname__)
    span.record_exception(error)


def _describe(error: BaseException) -> str:
    # A task group's failure says "unhandled errors in a TaskGroup"; the one inside says why.
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
