"""Polling sources: an external collection read every so often, each new item published once.

- `poller`: `Poller`, generic over a fetch function (REST today, SOAP or others later), which
  publishes each page's events and its cursor in one Kafka transaction.
- `cursor_store`: `CursorStore`, the cursors in a compacted Kafka topic (`bus.poll-cursors`).

The REST fetch (`PollingClient`) and its settings (`RestPoll`) are in `adapters.rest.polling`.
"""

from bus.polling.cursor_store import (
    DEFAULT_REMEMBER,
    DEFAULT_TOPIC,
    CursorError,
    CursorState,
    CursorStore,
    SeenItems,
)
from bus.polling.poller import (
    Fetch,
    ItemError,
    ItemMapper,
    Page,
    Poller,
    PollerFencedError,
    PollFailedError,
    Rejected,
)

__all__ = [
    "DEFAULT_REMEMBER",
    "DEFAULT_TOPIC",
    "CursorError",
    "CursorState",
    "CursorStore",
    "Fetch",
    "ItemError",
    "ItemMapper",
    "Page",
    "PollFailedError",
    "Poller",
    "PollerFencedError",
    "Rejected",
    "SeenItems",
]
