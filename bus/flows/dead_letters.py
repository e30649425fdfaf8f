"""Dead letters: the original record, unchanged, with headers saying why, where from and when.

A reader needs nothing from bus to understand one: every `bus_dlq_*` header is UTF-8 text.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from bus.events.cloudevents import format_time
from bus.events.codec import KafkaRecord

PREFIX = "bus_dlq_"
ATTEMPTS_HEADER = "bus_attempts"  # how often a replayed record was tried before
REPLAYED_HEADER = "bus_replayed_from"  # <dlq topic>[<partition>]@<offset>
_FIELDS = (
    "error_type",
    "error",
    "flow",
    "step",
    "topic",
    "partition",
    "offset",
    "attempts",
    "time",
)
_MAX_MESSAGE = 4000  # a header is no place for a megabyte of exception text


@dataclass(frozen=True, slots=True)
class InputRecord:
    """A record as a flow consumed it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Sequence[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Why a record could not be processed: which flow, which step, what error."""

    error_type: str
    error: str
    flow: str
    step: str
    topic: str
    partition: int
    offset: int
    attempts: int
    time: datetime

    def to_record(self, original: InputRecord) -> KafkaRecord:
        values = {
            "error_type": self.error_type,
            "error": self.error[:_MAX_MESSAGE],
            "flow": self.flow,
            "step": self.step,
            "topic": self.topic,
            "partition": str(self.partition),
            "offset": str(self.offset),
            "attempts": str(self.attempts),
            "time": format_time(self.time),
        }
        kept = [(name, value) for name, value in original.headers if not name.startswith(PREFIX)]
        added = [(PREFIX + name, values[name].encode()) for name in _FIELDS]
        return KafkaRecord(key=original.key, value=original.value, headers=[*kept, *added])

    @classmethod
    def from_headers(cls, headers: Sequence[tuple[str, bytes]]) -> "DeadLetter | None":
        """The reason recorded on a dead-letter record, or None if it carries none."""
        found = {
            name[len(PREFIX) :]: value.decode(errors="replace")
            for name, value in headers
            if name.startswith(PREFIX)
        }
        if set(_FIELDS) - set(found):
            return None
        return cls(
            error_type=found["error_type"],
            error=found["error"],
            flow=found["flow"],
            step=found["step"],
            topic=found["topic"],
            partition=int(found["partition"]),
            offset=int(found["offset"]),
            attempts=int(found["attempts"]),
            time=datetime.fromisoformat(found["time"]),
        )


def original_headers(headers: Sequence[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """The headers the record had before it was dead-lettered (for a replay)."""
    return [(name, value) for name, value in headers if not name.startswith(PREFIX)]


def now() -> datetime:
    return datetime.now(UTC)


def previous_attempts(headers: Sequence[tuple[str, bytes | None]]) -> int:
    """How often a record was tried before (0 unless it was replayed from a DLQ)."""
    for name, value in headers:
        if name == ATTEMPTS_HEADER and value is not None and value.isdigit():
            return int(value)
    return 0
