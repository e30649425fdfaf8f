"""What the delivery runner needs to know about one outbound item, built from the flow file.

The plan holds the live resilience objects (breaker, rate limiter): a runner restarted by its
supervisor with the same plan keeps knowing that the endpoint is down, and keeps to the rate.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from bus.flows import model
from bus.resilience.circuit_breaker import BreakerState, CircuitBreaker, breaker_from
from bus.resilience.clock import SYSTEM_CLOCK, Clock
from bus.resilience.rate_limit import RateLimiter, limiter_from
from bus.resilience.retry import RetryPolicy, policy_from

log = logging.getLogger(__name__)

RECORDS_PER_CALL = 4
"""Records taken per call slot: a hot key's queue does not starve the other keys of work."""
CALL_TIMEOUT_MARGIN_S = 5.0
"""The runner's own limit of a call is the item's `timeout` plus this: a backstop for an adapter
that hangs; the adapter's own timeout, which can say more, normally fires first."""


@dataclass(frozen=True)
class DeliveryPlan:
    """One outbound item, as the runner runs it.

    `max_in_flight` bounds the calls under way at once; the records in hand (under way, waiting
    for their key's earlier records, or waiting for a retry) are bounded by
    `max_records_in_hand`, beyond which consumption pauses.
    """

    name: str
    sources: Sequence[str]
    dead_letter_topic: str
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    breaker: CircuitBreaker | None = None
    limiter: RateLimiter | None = None
    max_in_flight: int = 10
    call_timeout: float | None = None  # seconds; None: the adapter's own timeout only

    def __post_init__(self) -> None:
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {self.max_in_flight}")
        if not self.sources:
            raise ValueError("a delivery needs at least one topic to consume")

    @property
    def group_id(self) -> str:
        """The consumer group, named like a mediation flow's (`bus.<name>`)."""
        return model.consumer_group(self.name)

    @property
    def source(self) -> str:
        """The CloudEvents source of the reply events, like a mediation flow's outputs."""
        return f"/bus/flows/{self.name}"

    @property
    def max_records_in_hand(self) -> int:
        return self.max_in_flight * RECORDS_PER_CALL


def delivery_plan_from(outbound: model.Outbound, *, clock: Clock = SYSTEM_CLOCK) -> DeliveryPlan:
    """The plan of a flow file's outbound item; its breaker logs each change of state."""
    breaker = None
    if outbound.circuit_breaker is not None:
        breaker = breaker_from(outbound.circuit_breaker, clock)
        breaker.add_listener(_BreakerLog(outbound.name))
    limiter = limiter_from(outbound.rate_limit, clock) if outbound.rate_limit else None
    return DeliveryPlan(
        name=outbound.name,
        sources=tuple(outbound.from_),
        dead_letter_topic=outbound.dlq,
        retry=policy_from(outbound.retry),
        breaker=breaker,
        limiter=limiter,
        max_in_flight=outbound.max_in_flight,
        call_timeout=outbound.timeout.total_seconds() + CALL_TIMEOUT_MARGIN_S,
    )


@dataclass(frozen=True)
class _BreakerLog:
    """Says when an endpoint is taken to be down, and when it is called again."""

    name: str

    def __call__(self, old: BreakerState, new: BreakerState) -> None:
        if new is BreakerState.OPEN:
            log.warning(
                "outbound %s: circuit %s -> open: calls and consumption pause; the events wait "
                "(nothing is dead-lettered for an outage)",
                self.name,
                old.value,
            )
        else:
            log.info("outbound %s: circuit %s -> %s", self.name, old.value, new.value)
