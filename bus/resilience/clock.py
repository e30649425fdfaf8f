"""Time as the resilience mechanisms see it: a monotonic `now()` and an awaitable `sleep()`.

They take a `Clock` rather than calling `time` and `asyncio` directly, so that tests (ours and
the adapters') drive time with a `FakeClock` instead of waiting for it.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

Sleep = Callable[[float], Awaitable[None]]
"""`asyncio.sleep`, or anything awaited the same way."""


class Clock(Protocol):
    """Monotonic seconds and a way to wait for them to pass."""

    def now(self) -> float:
        """Seconds on a monotonic scale: only differences mean anything."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return after `seconds` have passed on this clock."""
        ...


class SystemClock:
    """The real clock: `time.monotonic()`, which is also what the asyncio loop sleeps by.

    Usage::

        clock = SystemClock()
        start = clock.now()
        await clock.sleep(0.5)
        assert clock.now() - start >= 0.5
    """

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK = SystemClock()
"""The one real clock, the default of every mechanism here."""


class FakeClock:
    """A clock for tests: it moves only when advanced or slept on, and records every sleep.

    Sleeping moves time forward at once by the time asked, as if the sleeper were the only task
    waiting. That is exact for the code here, where one task at a time sleeps (the rate limiter's
    first waiter, a retry loop, the breaker's pause); it then yields once to the event loop, as a
    real sleep would, so that other tasks get to run in between.

    Usage::

        clock = FakeClock()
        await clock.sleep(1.5)
        clock.advance(0.5)
        assert clock.now() == 2.0 and clock.sleeps == [1.5]
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Let `seconds` pass without anyone sleeping (a call that took time, say)."""
        if seconds < 0:
            raise ValueError(f"a monotonic clock cannot go back ({seconds} seconds)")
        self._now += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self._now += max(seconds, 0.0)
        await asyncio.sleep(0)
