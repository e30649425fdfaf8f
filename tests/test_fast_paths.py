"""Hot-path functions written for speed give exactly what their plain definitions give."""

import uuid
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from bus.events.cloudevents import format_time
from bus.flows.processor import _IDS, output_event_id


@given(st.text(), st.text(), st.integers(min_value=0, max_value=10**6))
def test_output_event_id_is_uuid5(flow: str, input_id: str, position: int) -> None:
    assert output_event_id(flow, input_id, position) == str(
        uuid.uuid5(_IDS, f"{flow}/{input_id}/{position}")
    )


@given(
    st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
    ),
    st.integers(min_value=-14 * 60, max_value=14 * 60),
)
def test_format_time_is_rfc3339_utc_milliseconds(moment: datetime, offset_minutes: int) -> None:
    local = moment.astimezone(timezone(timedelta(minutes=offset_minutes)))
    utc = local.astimezone(UTC)
    expected = (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T{utc.hour:02d}:{utc.minute:02d}:"
        f"{utc.second:02d}.{utc.microsecond // 1000:03d}Z"
    )  # RFC 3339 years have four digits (strftime's %Y writes 999 for the year 999)
    assert format_time(local) == expected
