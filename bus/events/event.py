"""The canonical event: CloudEvents attributes around Avro data."""

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


def new_event_id() -> str:
    return str(uuid.uuid4())


def now() -> datetime:
    """The current UTC time at millisecond precision, as ce_time and timestamp-millis keep it."""
    moment = datetime.now(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


@dataclass(frozen=True, slots=True)
class Event:
    """One event: `type` is the full name of the Avro schema that `data` follows.

    `key` is the partition key (events with one key keep their order); `extensions` are further
    CloudEvents attributes, carried as `ce_<name>` headers.
    """

    type: str
    data: Mapping[str, Any]
    source: str = "/bus"
    id: str = field(default_factory=new_event_id)
    time: datetime | None = field(default_factory=now)
    subject: str | None = None
    key: str | None = None
    extensions: Mapping[str, str] = field(default_factory=dict)

    def with_data(self, type: str, data: Mapping[str, Any]) -> "Event":
        """This event with `data` of schema `type` (a transform's): field by field, as
        `dataclasses.replace` costs twice as much, and steps do it for every record."""
        return Event(type, data, self.source, self.id, self.time, self.subject, self.key,
                     self.extensions)  # fmt: skip
