"""Resilience of outbound calls, written once for every adapter: one mechanism a module.

- `retry`: `RetryPolicy` (from the flow file's `retry` block) and `call_with_retries`, which
  retries what `classify` calls `Transient` and raises `RetriesExhaustedError` in the end.
- `circuit_breaker`: `CircuitBreaker` (from `circuit_breaker`), which the delivery loop asks
  before each call and pauses on while the external system is down.
- `rate_limit`: `RateLimiter` (from `rate_limit: 50/s`), awaited before each call.
- `clock`: the `Clock` they all take, and `FakeClock` for tests that must not wait.

None of them knows HTTP or SOAP: the adapter says what a failure means (`classify`) and when the
server asked to be called again (`Transient(retry_after=...)`).
"""

from bus.resilience.circuit_breaker import BreakerState, CircuitBreaker, breaker_from
from bus.resilience.clock import SYSTEM_CLOCK, Clock, FakeClock, SystemClock
from bus.resilience.rate_limit import RateLimiter, limiter_from
from bus.resilience.retry import (
    Permanent,
    RetriesExhaustedError,
    RetryPolicy,
    Transient,
    Verdict,
    call_with_retries,
    policy_from,
)

__all__ = [
    "SYSTEM_CLOCK",
    "BreakerState",
    "CircuitBreaker",
    "Clock",
    "FakeClock",
    "Permanent",
    "RateLimiter",
    "RetriesExhaustedError",
    "RetryPolicy",
    "SystemClock",
    "Transient",
    "Verdict",
    "breaker_from",
    "call_with_retries",
    "limiter_from",
    "policy_from",
]
