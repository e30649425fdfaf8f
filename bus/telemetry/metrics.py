"""The Prometheus metrics of a `bus run` process, served as text at the admin API's /metrics.

Each `BusMetrics` has its own registry (never prometheus_client's global one), so several can
live in one process, as they do in tests. Durations are in seconds; counters end in `_total`.

Per item, from each hop as it ends (`observe`); `flow` is the item's name and `kind` one of
inbound, mediation, outbound, replay (a replay hop counts under the flow of the dead letter):

- `bus_events_in_total{flow,kind}`: events the item took in (records consumed, requests taken).
- `bus_events_out_total{flow,kind}`: events it passed on: stored (inbound), written
  (mediation outputs, replayed letters), delivered (outbound: one per successful call, its
  reply included); dead letters are counted apart.
- `bus_events_failed_total{flow,kind}`: hops that failed, whether the event went to the
  dead-letter topic or its work will be redone.
- `bus_events_dead_lettered_total{flow,kind,step}`: events sent to the dead-letter topic, by the
  step where they failed ("none" when the hop named none).
- `bus_retries_total{flow,kind}`: calls made again after a failed one (attempts - 1 per hop).
- `bus_processing_duration_seconds{flow,kind}`: histogram of the hops' own durations.
- `bus_end_to_end_latency_seconds{flow,kind}`: histogram of the time from the event's `ce_time`
  to the end of the hop that finished it (a mediation that processed it, an outbound delivery
  that delivered it); this includes the time it waited in Kafka.

Per call, as the adapters report them:

- `bus_outbound_calls_total{flow,status}`: calls to external systems by HTTP status, "none"
  when no answer came (timeout, refused connection).
- `bus_outbound_call_duration_seconds{flow}`: histogram of those calls' durations.
- `bus_inbound_requests_total{route,method,status}`: requests the inbound servers answered.
- `bus_inbound_request_duration_seconds{route,method}`: histogram of their durations.
- `bus_journey_records_dropped_total`: journey records lost because the recorder could not keep
  up (its buffer was full) or could not write them.

From the `StatusBoard`, read at scrape time (no background task; `kind` is the item's kind):

- `bus_consumer_lag_records{flow,kind,topic,partition}`: records between the member's fetch
  position and the end of each assigned partition.
- `bus_assigned_partitions{flow,kind}`: partitions assigned to the item's consumer.
- `bus_circuit_breaker_state{flow,kind,state}`: 1 for the breaker's current state (closed,
  open, half-open), 0 for the others.
- `bus_in_flight_events{flow,kind}`: records fetched and not yet done.
- `bus_item_state{flow,kind,state}`: 1 for the item's current state (starting, running,
  restarting, stopped), 0 for the others.
- `bus_item_restarts_total{flow,kind}`: times the item failed and started again.
- `bus_item_state_age_seconds{flow,kind}`: seconds since the item entered its current state.

A registry made here also carries prometheus_client's standard process, platform and garbage
collector metrics (memory, CPU, open files); a registry passed in is the caller's to furnish.
"""

import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import accumulate

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client import metrics as client_metrics
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from bus.resilience.circuit_breaker import BreakerState
from bus.telemetry.hop import Hop, HopKind
from bus.telemetry.status import ItemState, ItemStatus, StatusBoard

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)
"""From a millisecond (a filter step) to ten minutes (an event that waited out an outage)."""

_PASSED_ON = frozenset(("accepted", "delivered"))
_FAILED = frozenset(("failed", "dead-lettered"))
_FINISHED = frozenset(("processed", "delivered"))
_HOP_KINDS: tuple[HopKind, ...] = ("inbound", "mediation", "outbound", "replay")
_ITEM_LABELS = ("flow", "kind")


class BusMetrics:
    """The metrics of one process. Usage::

    metrics = BusMetrics(board)
    metrics.observe(hop)                          # when each hop ends
    metrics.outbound_call("erp-eu", 503, 0.42)    # after each outbound call
    body, content_type = metrics.exposition()     # for GET /metrics
    """

    def __init__(self, board: StatusBoard, registry: CollectorRegistry | None = None) -> None:
        self._board = board
        if registry is None:
            registry = CollectorRegistry()
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
        self.registry = registry
        # Labelled series per item, in plain numbers read at scrape time (`_ItemCollector`).
        self._items: dict[HopKind, dict[str, _ItemSeries]] = {kind: {} for kind in _HOP_KINDS}
        registry.register(_ItemCollector(self._items))
        self._outbound_calls = Counter(
            "bus_outbound_calls",
            "Calls to external systems, by HTTP status (none: no answer).",
            ("flow", "status"),
            registry=registry,
        )
        self._outbound_duration = Histogram(
            "bus_outbound_call_duration_seconds",
            "Duration of calls to external systems.",
            ("flow",),
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )
        self._inbound_requests = Counter(
            "bus_inbound_requests",
            "Requests the inbound servers answered.",
            ("route", "method", "status"),
            registry=registry,
        )
        self._inbound_duration = Histogram(
            "bus_inbound_request_duration_seconds",
            "Duration of inbound requests.",
            ("route", "method"),
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )
        self._journeys_dropped = Counter(
            "bus_journey_records_dropped",
            "Journey records lost: the recorder's buffer was full or the write failed.",
            registry=registry,
        )
        registry.register(_BoardCollector(board))
        # Labelled children, made once per label values: `.labels()` is a locked dict lookup
        # with string checks, too dear for every call.
        self._calls: dict[tuple[str, int | None], _CallSeries] = {}
        self._requests: dict[tuple[str, str, int], _CallSeries] = {}

    def observe(self, hop: Hop) -> None:
        """Count a hop that ended, and update its item's counters on the board."""
        series = self._items[hop.kind].get(hop.flow)
        if series is None:
            series = self._item_series(hop.kind, hop.flow)
        outcome = hop.outcome
        # What the item passed on: the outputs it wrote; an inbound endpoint's event stored,
        # an outbound delivery's call that succeeded (its reply, if any, is part of that).
        written = 1 if outcome in _PASSED_ON else len(hop.outputs)
        retries = hop.attempts - 1
        failed = outcome in _FAILED
        dead = outcome == "dead-lettered"
        if dead:
            written = 0  # a dead-lettered hop's outputs are its dead letters
            step = hop.step or "none"
            series.dead_lettered[step] = series.dead_lettered.get(step, 0) + 1
        series.events_in += 1
        if failed:
            series.failed += 1
        if written:
            series.events_out += written
        if retries > 0:
            series.retries += retries
        series.processing.observe(hop.duration)
        end_to_end = series.end_to_end
        event_time = hop.event_time
        if end_to_end is not None and event_time is not None and outcome in _FINISHED:
            # Clocks of other hosts may run ahead of ours: a negative latency means "none".
            end_to_end.observe(max(0.0, hop.started + hop.duration - event_time.timestamp()))
        status = series.status
        if status is not None:
            counters = status.counters
            counters.in_ += 1
            counters.out += written
            counters.failed += failed
            counters.dead_lettered += dead
            if retries > 0:
                counters.retried += retries

    def outbound_call(self, flow: str, status: int | None, seconds: float) -> None:
        """Count one call to an external system; `status` None: no answer came."""
        key = (flow, status)
        series = self._calls.get(key)
        if series is None:
            series = self._calls[key] = _CallSeries(
                self._outbound_calls.labels(flow, "none" if status is None else str(status)),
                self._outbound_duration.labels(flow),
            )
        series.count.inc()
        series.duration.observe(seconds)

    def inbound_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one request an inbound server answered."""
        key = (route, method, status)
        series = self._requests.get(key)
        if series is None:
            series = self._requests[key] = _CallSeries(
                self._inbound_requests.labels(route, method, str(status)),
                self._inbound_duration.labels(route, method),
            )
        series.count.inc()
        series.duration.observe(seconds)

    def journey_dropped(self) -> None:
        self._journeys_dropped.inc()

    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text body of every metric, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def _item_series(self, kind: HopKind, flow: str) -> "_ItemSeries":
        finishes = kind in ("mediation", "outbound")
        series = _ItemSeries(
            processing=_Buckets(),
            end_to_end=_Buckets() if finishes else None,
            status=None if kind == "replay" else self._board.item(flow, kind),
        )
        self._items[kind][flow] = series
        return series


class _Buckets:
    """A histogram's counts per LATENCY_BUCKETS bound (and +Inf) and its sum."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        # The first bound >= amount: Prometheus buckets are "less than or equal".
        self.counts[bisect_left(LATENCY_BUCKETS, amount)] += 1
        self.sum += amount

    def cumulative(self) -> list[tuple[str, float]]:
        bounds = [*map(floatToGoString, LATENCY_BUCKETS), "+Inf"]
        return list(zip(bounds, accumulate(self.counts), strict=True))


@dataclass(slots=True)
class _ItemSeries:
    """One item's numbers, and its status on the board (None for replays).

    Plain numbers, not prometheus_client children: those take a lock on every increment and
    observation, about 4 µs a record for what every hop reports; here every hop ends on the
    event loop's thread, which also serves the scrapes, so nothing is read half-written."""

    processing: _Buckets
    end_to_end: _Buckets | None  # only kinds whose hops finish an event
    status: ItemStatus | None
    events_in: int = 0
    events_out: int = 0
    failed: int = 0
    retries: int = 0
    dead_lettered: dict[str, int] = field(default_factory=dict)  # by step, as they come
    created: float = field(default_factory=time.time)


class _ItemCollector(Collector):
    """The per-item counters and histograms, as prometheus_client would write its own."""

    def __init__(self, items: dict[HopKind, dict[str, _ItemSeries]]) -> None:
        self._items = items

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        (events_in, events_out, failed, dead, retries, processing, end_to_end) = families = (
            self._families()
        )
        for kind, flows in self._items.items():
            for flow, series in flows.items():
                labels = (flow, kind)
                # As prometheus_client's own series: none when PROMETHEUS_DISABLE_CREATED_SERIES.
                created = series.created if client_metrics._use_created else None
                events_in.add_metric(labels, series.events_in, created=created)
                events_out.add_metric(labels, series.events_out, created=created)
                failed.add_metric(labels, series.failed, created=created)
                retries.add_metric(labels, series.retries, created=created)
                for step, count in series.dead_lettered.items():
                    dead.add_metric((*labels, step), count, created=created)
                _add_histogram(processing, labels, series.processing, created)
                if series.end_to_end is not None:
                    _add_histogram(end_to_end, labels, series.end_to_end, created)
        return families

    @staticmethod
    def _families() -> tuple[
        CounterMetricFamily,
        CounterMetricFamily,
        CounterMetricFamily,
        CounterMetricFamily,
        CounterMetricFamily,
        HistogramMetricFamily,
        HistogramMetricFamily,
    ]:
        return (
            CounterMetricFamily("bus_events_in", "Events an item took in.", labels=_ITEM_LABELS),
            CounterMetricFamily(
                "bus_events_out", "Events an item wrote, dead letters apart.", labels=_ITEM_LABELS
            ),
            CounterMetricFamily(
                "bus_events_failed",
                "Hops that failed: dead-lettered, or to be redone.",
                labels=_ITEM_LABELS,
            ),
            CounterMetricFamily(
                "bus_events_dead_lettered",
                "Events sent to the dead-letter topic, by the step where they failed.",
                labels=(*_ITEM_LABELS, "step"),
            ),
            CounterMetricFamily(
                "bus_retries", "Calls made again after a failed one.", labels=_ITEM_LABELS
            ),
            HistogramMetricFamily(
                "bus_processing_duration_seconds",
                "Duration of an item's work on one event.",
                labels=_ITEM_LABELS,
            ),
            HistogramMetricFamily(
                "bus_end_to_end_latency_seconds",
                "From an event's ce_time to the end of the hop that finished it.",
                labels=_ITEM_LABELS,
            ),
        )


def _add_histogram(
    family: HistogramMetricFamily,
    labels: tuple[str, str],
    buckets: _Buckets,
    created: float | None,
) -> None:
    family.add_metric(list(labels), buckets.cumulative(), buckets.sum)
    if created is None:
        return
    named = dict(zip(_ITEM_LABELS, labels, strict=True))
    family.add_sample(f"{family.name}_created", named, created)


@dataclass(frozen=True, slots=True)
class _CallSeries:
    count: Counter
    duration: Histogram


@dataclass(slots=True)
class _BoardFamilies:
    lag: GaugeMetricFamily
    assigned: GaugeMetricFamily
    breaker: GaugeMetricFamily
    in_flight: GaugeMetricFamily
    state: GaugeMetricFamily
    restarts: CounterMetricFamily
    state_age: GaugeMetricFamily

    @classmethod
    def empty(cls) -> "_BoardFamilies":
        return cls(
            lag=GaugeMetricFamily(
                "bus_consumer_lag_records",
                "Records between the fetch position and the end of an assigned partition.",
                labels=(*_ITEM_LABELS, "topic", "partition"),
            ),
            assigned=GaugeMetricFamily(
                "bus_assigned_partitions",
                "Partitions assigned to the item's consumer.",
                labels=_ITEM_LABELS,
            ),
            breaker=GaugeMetricFamily(
                "bus_circuit_breaker_state",
                "1 for the circuit breaker's current state, 0 for the others.",
                labels=(*_ITEM_LABELS, "state"),
            ),
            in_flight=GaugeMetricFamily(
                "bus_in_flight_events", "Records fetched and not yet done.", labels=_ITEM_LABELS
            ),
            state=GaugeMetricFamily(
                "bus_item_state",
                "1 for the item's current state, 0 for the others.",
                labels=(*_ITEM_LABELS, "state"),
            ),
            restarts=CounterMetricFamily(
                "bus_item_restarts",
                "Times the item failed and started again.",
                labels=_ITEM_LABELS,
            ),
            state_age=GaugeMetricFamily(
                "bus_item_state_age_seconds",
                "Seconds since the item entered its current state.",
                labels=_ITEM_LABELS,
            ),
        )

    def __iter__(self) -> Iterator[Metric]:
        yield self.lag
        yield self.assigned
        yield self.breaker
        yield self.in_flight
        yield self.state
        yield self.restarts
        yield self.state_age


class _BoardCollector(Collector):
    """Reads the board when scraped: gauges of what each item is doing now."""

    def __init__(self, board: StatusBoard) -> None:
        self._board = board

    def describe(self) -> Iterable[Metric]:
        # Lets the registry refuse another collector of the same names, without a scrape.
        return _BoardFamilies.empty()

    def collect(self) -> Iterable[Metric]:
        families = _BoardFamilies.empty()
        now = time.time()
        for item in self._board:
            labels = (item.name, item.kind)
            for partition, records in item.lag().items():
                families.lag.add_metric(
                    (*labels, partition.topic, str(partition.partition)), records
                )
            assigned = item.assigned
            if assigned is not None:
                families.assigned.add_metric(labels, assigned)
            breaker = item.breaker_state
            if breaker is not None:
                for state in BreakerState:
                    families.breaker.add_metric((*labels, state.value), float(state is breaker))
            if item.in_flight is not None:
                families.in_flight.add_metric(labels, item.in_flight())
            for item_state in ItemState:
                families.state.add_metric(
                    (*labels, item_state.value), float(item_state is item.state)
                )
            families.restarts.add_metric(labels, item.restarts)
            families.state_age.add_metric(labels, max(0.0, now - item.since))
        return families
