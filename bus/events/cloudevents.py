"""CloudEvents 1.0 attributes as Kafka headers: the binary content mode of the Kafka binding.

Every attribute but `data` is a header named `ce_<attribute>` with a UTF-8 value; the data's media
type is the `content-type` header. W3C trace context travels beside them as `traceparent` and
`tracestate`, which are not CloudEvents attributes.
"""

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from bus.errors import BadHeaderError, InvalidAttributesError

SPEC_VERSION = "1.0"
AVRO_CONTENT_TYPE = "application/avro"
_PREFIX = "ce_"
_REQUIRED = ("ce_specversion", "ce_id", "ce_source", "ce_type")
_CORE = frozenset({"specversion", "id", "source", "type", "time", "subject"})
_EXTENSION_NAME = re.compile(r"[a-z0-9]{1,20}")
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")
Headers = Sequence[tuple[str, bytes | None]]


@dataclass(frozen=True, slots=True)
class Attributes:
    id: str
    source: str
    type: str
    time: datetime | None
    subject: str | None
    content_type: str | None
    extensions: Mapping[str, str]


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with milliseconds, e.g. 2026-11-24T01:40:06.123Z."""
    if moment.tzinfo is None:
        raise InvalidAttributesError(
            f"time {moment.isoformat()} has no time zone; give an aware datetime (e.g. UTC)"
        )
    # isoformat, then the offset (always +00:00 here) as Z: twice as fast as strftime, and this
    # runs for every record a flow writes.
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def parse_time(text: str) -> datetime:
    """An RFC 3339 timestamp (`T`/`Z` in either case, any offset) as an aware datetime."""
    if not _RFC3339.fullmatch(text):
        raise BadHeaderError(
            f"ce_time {text!r} is not an RFC 3339 timestamp like 2026-11-24T01:40:06.123Z"
        )
    try:
        return datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
    except ValueError as error:  # e.g. a 30th of February, or a leap second (23:59:60)
        raise BadHeaderError(f"ce_time {text!r} is not a valid time: {error}") from error


def to_headers(
    attributes: Attributes, trace: Mapping[str, str] | None = None
) -> list[tuple[str, bytes]]:
    if not attributes.id or not attributes.source or not attributes.type:
        raise InvalidAttributesError(
            "CloudEvents id, source and type must not be empty "
            f"(id={attributes.id!r}, source={attributes.source!r}, type={attributes.type!r})"
        )
    headers = [
        ("ce_specversion", SPEC_VERSION.encode()),
        ("ce_id", attributes.id.encode()),
        ("ce_source", attributes.source.encode()),
        ("ce_type", attributes.type.encode()),
    ]
    if attributes.time is not None:
        headers.append(("ce_time", format_time(attributes.time).encode()))
    if attributes.subject is not None:
        headers.append(("ce_subject", attributes.subject.encode()))
    for name, value in attributes.extensions.items():
        if name not in _VALID_EXTENSIONS and (name in _CORE or not _valid_extension(name)):
            raise InvalidAttributesError(
                f"CloudEvents extension name {name!r} must be 1-20 lowercase letters or digits "
                "and not a core attribute"
            )
        if not isinstance(value, str):
            raise InvalidAttributesError(
                f"CloudEvents extension {name!r} must be text, not {type(value).__name__}"
            )
        headers.append((_PREFIX + name, value.encode()))
    if attributes.content_type is not None:
        headers.append(("content-type", attributes.content_type.encode()))
    for name, value in (trace or {}).items():
        headers.append((name, value.encode()))
    return headers


_VALID_EXTENSIONS: set[str] = set()
"""Extension names seen valid: the same few (parentid, rootid) are checked on every record."""


def _valid_extension(name: str) -> bool:
    if _EXTENSION_NAME.fullmatch(name) is None:
        return False
    if len(_VALID_EXTENSIONS) < 1024:  # names come from records: keep the memory bounded
        _VALID_EXTENSIONS.add(name)
    return True


def from_headers(headers: Headers) -> tuple[Attributes, dict[str, str]]:
    """The CloudEvents attributes and the trace context headers of a record."""
    text: dict[str, str] = {}
    for name, raw in headers:
        if raw is None:  # Kafka allows a header without a value
            if name.startswith(_PREFIX) or name == "content-type":
                raise BadHeaderError(f"header {name!r} has no value")
            continue
        try:
            text[name] = raw.decode()
        except UnicodeDecodeError as error:
            raise BadHeaderError(
                f"header {name!r} is not valid UTF-8 (found {raw[:40]!r}); "
                "the CloudEvents Kafka binding requires UTF-8 header values"
            ) from error
    missing = [name for name in _REQUIRED if not text.get(name)]
    if missing:
        found = ", ".join(sorted(text)) or "none"
        raise BadHeaderError(
            f"not a CloudEvents record: missing header(s) {', '.join(missing)} "
            f"(found: {found}); bus events carry ce_specversion, ce_id, ce_source and ce_type"
        )
    if text["ce_specversion"] != SPEC_VERSION:
        raise BadHeaderError(
            f"ce_specversion is {text['ce_specversion']!r}, expected {SPEC_VERSION!r}"
        )
    time = parse_time(text["ce_time"]) if "ce_time" in text else None
    extensions = {
        name[len(_PREFIX) :]: value
        for name, value in text.items()
        if name.startswith(_PREFIX) and name[len(_PREFIX) :] not in _CORE
    }
    attributes = Attributes(
        id=text["ce_id"],
        source=text["ce_source"],
        type=text["ce_type"],
        time=time,
        subject=text.get("ce_subject"),
        content_type=text.get("content-type"),
        extensions=extensions,
    )
    trace: dict[str, str] = {
        name: text[name] for name in ("traceparent", "tracestate") if name in text
    }
    return attributes, trace
