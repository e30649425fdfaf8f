"""One hop of one event through the bus: what its span, its journey record and its metrics say.

A hop is one item's work on one event: an inbound endpoint accepting it, a mediation flow
processing it, an outbound delivery calling for it, a replay sending it back. The code doing
the work fills a `Hop` as it goes; when the hop ends, `bus.telemetry.hub` turns it into a span's
attributes, a journey record and metric samples.
"""

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

HopKind = Literal["inbound", "mediation", "outbound", "replay"]
Outcome = Literal[
    "accepted",  # inbound: stored in Kafka (acks=all), the caller answered
    "processed",  # mediation: outputs written
    "filtered",  # mediation: no output, by a filter step
    "delivered",  # outbound: the external system answered with success
    "dead-lettered",  # any: sent to the item's DLQ, with `error`
    "replayed",  # replay: a dead letter sent back to the topic it came from
    "failed",  # any: an outage or a bug; the work will be redone (nothing committed)
]


@dataclass(slots=True)
class Hop:
    kind: HopKind
    flow: str  # the item's name (inbound, mediation or outbound)
    started: float  # epoch seconds
    event_id: str | None = None  # the event this hop worked on (None: undecodable record)
    parent_id: str | None = None  # the event it came from (ce_parentid), if any
    root_id: str | None = None  # the journey's first event (ce_rootid, else the event's own id)
    event_type: str | None = None
    event_time: datetime | None = None  # ce_time: the end-to-end latency starts there
    topic: str | None = None  # consumed from (inbound: written to)
    partition: int | None = None
    offset: int | None = None
    step: str | None = None  # where it ended: a step label, "call", "reply", "decode"...
    outcome: Outcome | None = None
    error: str | None = None
    attempts: int = 1  # outbound calls made (retries + 1)
    status: int | None = None  # outbound: the last HTTP status
    outputs: list["Output"] = field(default_factory=list)
    duration: float = 0.0  # seconds
    trace_id: str | None = None  # hex, when traced
    span_id: str | None = None

    def as_record(self) -> dict[str, Any]:
        """The journey record: small, JSON, readable without bus."""
        return {
            "kind": self.kind,
            "flow": self.flow,
            "started": self.started,
            "duration_ms": round(self.duration * 1000, 3),
            "event_id": self.event_id,
            "parent_id": self.parent_id,
            "root_id": self.root_id,
            "event_type": self.event_type,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "step": self.step,
            "outcome": self.outcome,
            "error": self.error,
            "attempts": self.attempts,
            "status": self.status,
            "outputs": [output.as_record() for output in self.outputs],
            "trace_id": self.trace_id,
            "span_id": self.span_id,
        }


@dataclass(frozen=True, slots=True)
class Output:
    """An event a hop wrote, and where: a mediation output, a reply, a dead letter."""

    event_id: str | None
    topic: str
    partition: int | None = None
    offset: int | None = None

    def as_record(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
        }
