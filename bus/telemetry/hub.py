"""Where a hop becomes a span, a journey record and metric samples: the process's `Telemetry`.

The runners, the ingest and the servers are given one `Telemetry` and open a hop for each piece
of work on one event (`bus.telemetry.hop_scope`)::

    with telemetry.consumed("mediation", flow, record, group=group_id) as scope:
        scope.event(decoded.event)                      # who the hop is about
        with scope.step("steps[0]"):                    # hop.step, and a child span if traced
            ...
        record = await codec.encode(output, scope.carrier(decoded.trace))
        scope.hop.outcome = "processed"

A hop that ends goes to `report`: to `metrics.observe` and `journeys.record`, neither of which
may fail or slow the data path. The calls and requests the adapters and servers measure go
through `outbound_call` and `inbound_request`, guarded the same way: a broken metric never
changes what the bus does (a breaker's trial, an HTTP answer). The first failure of the metrics
is logged, with its traceback; the others are only counted (`metrics_failures`).

Tracing off costs a `Hop` and a context variable per hop (and a small object per step, which
keeps `hop.step` for log lines): no span object, no attribute dict, no propagation; `carrier()`
passes the incoming trace headers through unchanged.

Errors that leave the process in a hop (its journey record, its span, a dead letter's headers)
are redacted with the process's `redactor`: the secrets the flow files configure and
credentials known by their shape.
"""

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import ParamSpec

from opentelemetry.trace import SpanKind
from opentelemetry.util.types import AttributeValue

from bus.flows.dead_letters import InputRecord
from bus.flows.model import ObservabilitySettings
from bus.telemetry.hop import Hop, HopKind
from bus.telemetry.hop_scope import HopScope
from bus.telemetry.journeys import JourneyRecorder
from bus.telemetry.metrics import BusMetrics
from bus.telemetry.secrets import Redactor
from bus.telemetry.status import StatusBoard
from bus.telemetry.tracing import Tracing, extract, kafka_carrier

# HopScope is what `Telemetry` opens: its users may import both from here.
__all__ = ["HopScope", "Telemetry"]

log = logging.getLogger(__name__)

SPANS_FLUSH_WITHIN = 5.0
"""How long `close()` waits for the spans still buffered to be exported."""

_P = ParamSpec("_P")


class Telemetry:
    """What the runners, the ingest and the servers of a process are given."""

    def __init__(
        self,
        tracing: Tracing,
        journeys: JourneyRecorder | None,
        metrics: BusMetrics,
        board: StatusBoard,
        *,
        redactor: Redactor | None = None,
    ) -> None:
        """`redactor` hides secrets in the errors hops write (default: credentials known by
        their shape only)."""
        self.tracing = tracing
        self.journeys = journeys
        self.metrics = metrics
        self.board = board
        self.redactor = redactor or Redactor()
        self.metrics_failures = 0  # samples lost to a failing metric; the first was logged

    @classmethod
    def disabled(cls) -> "Telemetry":
        """No spans, no journeys; counters and metrics on a board and registry of its own."""
        board = StatusBoard()
        return cls(Tracing.disabled(), None, BusMetrics(board), board)

    @classmethod
    def from_settings(
        cls,
        settings: ObservabilitySettings,
        bootstrap_servers: str,
        *,
        secrets: Iterable[str] = (),
    ) -> "Telemetry":
        """What the flow files' `observability` block asks for, hiding `secrets` (the flow
        files', `bus.telemetry.secrets.secrets_of`) in what hops write; `start()` it before use
        and `close()` it after."""
        board = StatusBoard()
        metrics = BusMetrics(board)
        journeys = None
        if settings.journeys.enabled:
            journeys = JourneyRecorder(
                bootstrap_servers, settings.journeys, on_drop=metrics.journey_dropped
            )
        tracing = Tracing.from_settings(settings.tracing)
        return cls(tracing, journeys, metrics, board, redactor=Redactor(secrets))

    async def start(self) -> None:
        if self.journeys is not None:
            await self.journeys.start()

    async def close(self) -> None:
        """Flush the journey records and the spans still buffered (each within a few seconds),
        then stop."""
        if self.journeys is not None:
            await self.journeys.stop()
        await self.tracing.close(within=SPANS_FLUSH_WITHIN)

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
        self._measure(self.metrics.observe, hop)
        if self.journeys is not None:
            self.journeys.record(hop)  # never raises: it drops and counts what it cannot take

    # -- samples ----------------------------------------------------------------------------

    def outbound_call(self, flow: str, status: int | None, seconds: float) -> None:
        """One call to an external system (`status` None: no answer came)."""
        self._measure(self.metrics.outbound_call, flow, status, seconds)

    def inbound_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """One request an inbound server answered."""
        self._measure(self.metrics.inbound_request, route, method, status, seconds)

    def _measure(self, sample: Callable[_P, None], *args: _P.args, **kwargs: _P.kwargs) -> None:
        """Take a sample; a failure (a bug) is logged the first time and counted after: on
        every hop, a log line each would drown the log."""
        try:
            sample(*args, **kwargs)
        except Exception:
            self.metrics_failures += 1
            if self.metrics_failures == 1:
                log.exception(
                    "metrics failed to take a sample (%s); the data path goes on, and further "
                    "failures are counted, not logged",
                    getattr(sample, "__name__", sample),
                )
