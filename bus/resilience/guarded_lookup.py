"""An adapter's lookup with the retries, circuit breaker and rate limit of its `lookups:` item.

What an `enrich` step meets when the lookup's service fails:
- a permanent failure (a SOAP Client fault, a 4xx): the record is dead-lettered at once;
- transient failures that leave the breaker closed: retried with the policy's backoff (honouring
  Retry-After); once the attempts are used up the record is dead-lettered, so one record that
  always fails cannot stall its partition;
- a transient failure while the breaker is open, or one that opens it: an outage. The error is
  raised as transient, which fails the flow's batch: the flow starts again from its last commit
  after a backoff, and nothing is dead-lettered while the service is down.
"""

import asyncio
from dataclasses import dataclass, field
from typing import Any

from bus.errors import PermanentDeliveryError, TransientDeliveryError
from bus.flows.steps.enrich import Lookup
from bus.resilience.circuit_breaker import BreakerState, CircuitBreaker
from bus.resilience.rate_limit import RateLimiter
from bus.resilience.retry import RetryPolicy
from bus.telemetry.status import Counters


@dataclass
class GuardedLookup:
    name: str
    lookup: Lookup
    retry: RetryPolicy
    breaker: CircuitBreaker | None = None
    limiter: RateLimiter | None = None
    counters: Counters = field(default_factory=Counters)
    """The lookup's line on the status board: calls in, answers out, failed and retried tries."""

    async def __call__(self, **arguments: Any) -> Any:
        attempt = 1
        self.counters.in_ += 1
        while True:
            if self.breaker is not None and not self.breaker.allow():
                raise TransientDeliveryError(
                    f"lookup {self.name}: its circuit breaker is open (the service failed "
                    f"{self.breaker.failures} times in a row); the flow waits for it"
                )
            if self.limiter is not None:
                await self.limiter.acquire()
            try:
                result = await self.lookup(**arguments)
            except TransientDeliveryError as error:
                self.counters.failed += 1
                if self._outage():
                    raise
                if attempt >= self.retry.attempts:
                    raise PermanentDeliveryError(
                        f"lookup {self.name}: gave up after {attempt} attempt(s): {error.reason}",
                        status=error.status,
                        excerpt=error.excerpt,
                    ) from error
                await asyncio.sleep(self.retry.delay(attempt, error.retry_after))
                attempt += 1
                self.counters.retried += 1
                continue
            except PermanentDeliveryError:
                self.counters.failed += 1
                if self.breaker is not None:  # the service answered: it is up
                    self.breaker.record_success()
                raise
            except BaseException:
                if self.breaker is not None:
                    self.breaker.record_abandoned()
                raise
            if self.breaker is not None:
                self.breaker.record_success()
            self.counters.out += 1
            return result

    def _outage(self) -> bool:
        """Record a transient failure; whether the breaker is now open (an outage)."""
        if self.breaker is None:
            return False
        self.breaker.record_failure()
        return self.breaker.state is not BreakerState.CLOSED
