"""The tree of one journey, from its records: which output each hop consumed, and which outputs
no hop has consumed yet (where the journey waits, or is stuck).

A hop's parent is the hop that wrote the event it worked on, at the position it read it from
(topic, partition, offset). Records from other processes may lack a position, so the match
loosens step by step: the same event at the same position, else on the same topic, else
anywhere; among several writers, the last one before the hop (a replayed letter is consumed
again from where the replay put it, not from where it first was).
"""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bus.flows.model import default_dlq

Output = dict[str, Any]


@dataclass(eq=False, slots=True)
class JourneyHop:
    """One hop record, the hops that consumed what it wrote, and what it wrote that no hop has
    consumed yet."""

    record: dict[str, Any]
    children: list["JourneyHop"] = field(default_factory=list)
    pending: list[Output] = field(default_factory=list)
    parent: "JourneyHop | None" = field(default=None, repr=False)
    written: list[Output] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self.written = list(self.record["outputs"])
        if self.kind == "inbound" and not any(self._is_own_event(o) for o in self.written):
            # An inbound hop's topic is where it wrote its event: that event is its output.
            self.written.append(
                {key: self.record.get(key) for key in ("event_id", "topic", "partition", "offset")}
            )

    def _is_own_event(self, output: Output) -> bool:
        return output.get("event_id") == self.event_id and output.get("topic") == self.topic

    @property
    def kind(self) -> str:
        return str(self.record.get("kind"))

    @property
    def flow(self) -> str:
        return str(self.record.get("flow"))

    @property
    def outcome(self) -> str | None:
        outcome = self.record.get("outcome")
        return None if outcome is None else str(outcome)

    @property
    def event_id(self) -> str | None:
        event_id = self.record.get("event_id")
        return None if event_id is None else str(event_id)

    @property
    def topic(self) -> str | None:
        topic = self.record.get("topic")
        return None if topic is None else str(topic)

    @property
    def started(self) -> float:
        started = self.record.get("started")
        return float(started) if isinstance(started, int | float) else 0.0

    @property
    def ended(self) -> float:
        duration_ms = self.record.get("duration_ms")
        return self.started + (duration_ms / 1000 if isinstance(duration_ms, int | float) else 0)

    @property
    def dead_letter(self) -> Output | None:
        """Where a dead-lettered hop put its letter: the output on `<flow>.dlq`, else its last
        output (a dead-lettered hop writes nothing but its letter, whatever the DLQ is named)."""
        if self.outcome != "dead-lettered" or not self.record["outputs"]:
            return None
        outputs: list[Output] = self.record["outputs"]
        own = default_dlq(self.flow)
        return next((output for output in outputs if output.get("topic") == own), outputs[-1])

    def descends_from(self, other: "JourneyHop") -> bool:
        hop: JourneyHop | None = self
        while hop is not None:
            if hop is other:
                return True
            hop = hop.parent
        return False

    def as_json(self) -> dict[str, Any]:
        letter = self.dead_letter
        return {
            **{key: value for key, value in self.record.items() if key != "v"},
            "children": [child.as_json() for child in self.children],
            "pending": [{**output, "dead_letter": output is letter} for output in self.pending],
        }


@dataclass(slots=True)
class Journey:
    """The hops of one root event and all its descendants, as a tree in time order."""

    root_id: str
    roots: list[JourneyHop]  # hops whose event no hop of the journey wrote (the first ones)

    @classmethod
    def from_records(cls, root_id: str, records: Iterable[dict[str, Any]]) -> "Journey":
        # Stable sort: hops that started at the same instant keep the order they were written.
        hops = sorted((JourneyHop(record) for record in records), key=lambda hop: hop.started)
        written = [(hop, output) for hop in hops for output in hop.written]
        consumed: set[int] = set()
        roots: list[JourneyHop] = []
        for hop in hops:
            found = None if hop.kind == "inbound" else _writer(hop, written)
            if found is None:
                roots.append(hop)
                continue
            parent, output = found
            hop.parent = parent
            parent.children.append(hop)
            consumed.add(id(output))
        for hop, output in written:
            if id(output) not in consumed:
                hop.pending.append(output)
        return cls(root_id, roots)

    def hops(self) -> Iterator[tuple[int, JourneyHop]]:
        """Every hop with its depth, depth first, each hop's children in time order."""
        stack = [(0, hop) for hop in reversed(self.roots)]
        while stack:
            depth, hop = stack.pop()
            yield depth, hop
            stack.extend((depth + 1, child) for child in reversed(hop.children))

    def summary(self) -> dict[str, Any]:
        hops = [hop for _, hop in self.hops()]
        return {
            "hops": len(hops),
            "dead_lettered": sum(hop.outcome == "dead-lettered" for hop in hops),
            "failed": sum(hop.outcome == "failed" for hop in hops),
            "pending_outputs": sum(len(hop.pending) for hop in hops),
            "first": iso_time(min((hop.started for hop in hops), default=0.0)),
            "last": iso_time(max((hop.ended for hop in hops), default=0.0)),
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "root_id": self.root_id,
            "hops": [hop.as_json() for hop in self.roots],
            "summary": self.summary(),
        }


def iso_time(epoch: float) -> str:
    moment = datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")
    return moment.replace("+00:00", "Z")


def _writer(
    hop: JourneyHop, written: list[tuple[JourneyHop, Output]]
) -> tuple[JourneyHop, Output] | None:
    """The hop that wrote what `hop` consumed, and the output it was."""
    if hop.event_id is None:
        return None
    candidates = [
        (writer, output)
        for writer, output in written
        if output.get("event_id") == hop.event_id and not writer.descends_from(hop)
    ]
    for matches in (_same_position, _same_topic, _anywhere):
        chosen = [(writer, output) for writer, output in candidates if matches(output, hop)]
        if chosen:
            before = [pair for pair in chosen if pair[0].started <= hop.started]
            if before:
                return max(before, key=lambda pair: pair[0].started)
            return min(chosen, key=lambda pair: pair[0].started)
    return None


def _same_position(output: Output, hop: JourneyHop) -> bool:
    position = (hop.topic, hop.record.get("partition"), hop.record.get("offset"))
    return (
        None not in position
        and (
            output.get("topic"),
            output.get("partition"),
            output.get("offset"),
        )
        == position
    )


def _same_topic(output: Output, hop: JourneyHop) -> bool:
    return output.get("topic") == hop.topic


def _anywhere(output: Output, hop: JourneyHop) -> bool:
    return True
