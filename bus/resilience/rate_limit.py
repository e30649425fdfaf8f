"""A rate limit on calls to an external system: `count` calls per `per_seconds` seconds.

The flow file's `rate_limit: 50/s` configures it. Calls are spaced evenly, one every
`per_seconds / count` seconds (GCRA, the "generic cell rate algorithm", which is a token bucket
holding one token): so no window of `per_seconds` ever holds more than `count` calls, which is
what an API that publishes "100 calls a minute" checks. A bucket that allowed bursts of `count`
would let up to `2 * count - 1` calls into one such window. A call after a quiet spell never
waits; only calls that come faster than the rate are held back.
"""

import asyncio

from bus.flows import model
from bus.resilience.clock import SYSTEM_CLOCK, Clock


class RateLimiter:
    """Holds each caller back just long enough to keep to the rate, first come first served.

    Usage::

        limiter = limiter_from(outbound.rate_limit)    # or RateLimiter(count=50, per_seconds=1)
        await limiter.acquire()                        # once before every call
        response = await send(event)
    """

    def __init__(self, count: int, per_seconds: float, clock: Clock = SYSTEM_CLOCK) -> None:
        if count < 1:
            raise ValueError(f"count must be at least 1, not {count}")
        if per_seconds <= 0:
            raise ValueError(f"per_seconds must be positive, not {per_seconds}")
        self.count = count
        self.per_seconds = per_seconds
        self.interval = per_seconds / count
        self._clock = clock
        self._next_free = float("-inf")  # when the next call may go; the past means now
        # Callers take turns through the lock: asyncio.Lock wakes its waiters in arrival order
        # and a newcomer does not overtake them, which makes the limiter fair (FIFO). Only the
        # caller at the front sleeps, so a cancelled waiter simply leaves the queue.
        self._turns = asyncio.Lock()

    async def acquire(self) -> None:
        """Return when the next call may be made (at once when the rate allows it)."""
        async with self._turns:
            wait = self._next_free - self._clock.now()
            if wait > 0:
                await self._clock.sleep(wait)
            # Count from when this call really goes, not from when it was due: a late wake-up
            # must not let the next call come sooner than one interval after this one.
            self._next_free = max(self._next_free, self._clock.now()) + self.interval

    def __repr__(self) -> str:
        return f"RateLimiter(count={self.count}, per_seconds={self.per_seconds})"


def limiter_from(rate: model.RateLimit, clock: Clock = SYSTEM_CLOCK) -> RateLimiter:
    """The limiter a flow file's `rate_limit` (`50/s`, `100/min`, `1000/h`) declares."""
    return RateLimiter(count=rate.count, per_seconds=rate.per_seconds, clock=clock)
