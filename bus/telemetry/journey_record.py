"""A journey record on the wire: one hop as compact JSON, keyed by its journey's root event id.

Any Kafka consumer can read the journey topic without bus: the key is the root event id (so a
journey's records share one partition, in the order they were written) and the value a JSON
object, the `Hop.as_record()` fields plus `v`, the format version.
"""

import json
import zlib
from typing import Any

from bus.telemetry.hop import Hop

FORMAT_VERSION = 1
_HASH_RANGE = 2**32
_COMPACT = json.JSONEncoder(separators=(",", ":"))  # made once: json.dumps(...) builds one a call


def journey_key(hop: Hop) -> str | None:
    """The root event id the hop's record is keyed by; None for a hop with no event id at all
    (an undecodable record), which belongs to no journey that anyone could ask for."""
    return hop.root_id or hop.event_id


def sampled(root_id: str, ratio: float) -> bool:
    """Whether the journey of `root_id` is recorded. The same answer in every process and on
    every run (CRC-32 of the id, not Python's salted hash), so a journey is kept whole or not
    at all."""
    if ratio >= 1.0:
        return True
    if ratio <= 0.0:
        return False
    return zlib.crc32(root_id.encode()) < ratio * _HASH_RANGE


def encode(hop: Hop) -> bytes:
    return _COMPACT.encode({"v": FORMAT_VERSION, **hop.as_record()}).encode()


def decode(value: bytes | None) -> dict[str, Any] | None:
    """The hop record in `value`; None for anything else (a record of another format version,
    or written there by something that is not bus)."""
    if not value:
        return None
    try:
        record = json.loads(value)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("v") != FORMAT_VERSION:
        return None
    outputs = record.get("outputs")
    record["outputs"] = (
        [o for o in outputs if isinstance(o, dict)] if isinstance(outputs, list) else []
    )
    return record


def names(record: dict[str, Any], event_id: str) -> bool:
    """Whether the record is about `event_id`: the hop worked on it or wrote it."""
    if record.get("event_id") == event_id or record.get("root_id") == event_id:
        return True
    return any(output.get("event_id") == event_id for output in record["outputs"])
