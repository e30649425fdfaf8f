"""What an outbound adapter provides to a delivery: one call per event, and how it failed.

The delivery runner (`bus.delivery.runner`) owns everything around the call that REST and SOAP
share: consuming, per-key order, retries, the circuit breaker, the rate limit, the in-flight
bound, dead letters, reply events and commits. An adapter only turns one event into one call.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from bus.events.codec import DecodedEvent


@dataclass(frozen=True)
class Response:
    """What the external system answered, as the reply mapping sees it (`response.status`,
    `response.headers`, `response.body`): headers with lower-case names, body as parsed JSON
    (or SOAP's response message as a mapping), text when it is not JSON, None when empty."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: Any = None

    def as_variable(self) -> dict[str, Any]:
        return {"status": self.status, "headers": dict(self.headers), "body": self.body}


class Delivery(Protocol):
    """One outbound item's call. `call` returns the response of a successful call, or raises
    `TransientDeliveryError` (retried) or `PermanentDeliveryError` (dead-lettered at once).
    It must not retry by itself: the runner does, under the flow's policy."""

    async def call(self, event: DecodedEvent) -> Response: ...

    async def close(self) -> None: ...
