"""A circuit breaker: stop calling a system that keeps failing, and probe it now and then.

Closed (calls go through) -> open after `failures` consecutive failures (no calls) -> half-open
once `reset_after` has passed (one trial call) -> closed if the trial succeeds, open again (for
another `reset_after`) if it fails. The flow file's `circuit_breaker` block configures it.

The breaker does not make calls itself: the delivery loop asks it before each call and tells it
how the call went, and pauses (rather than failing events) while it is open.
"""

import asyncio
import enum
from collections.abc import Callable

from bus.flows import model
from bus.resilience.clock import SYSTEM_CLOCK, Clock


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


StateListener = Callable[[BreakerState, BreakerState], None]
"""Told of each change of state: (old state, new state). It must not raise nor block."""


class CircuitBreaker:
    """Counts consecutive failures of one external system and decides whether to call it.

    Usage, in a delivery loop that pauses while the system is down::

        breaker = breaker_from(outbound.circuit_breaker)
        breaker.add_listener(lambda old, new: log.warning("circuit %s -> %s", old, new))

        while not breaker.allow():
            await breaker.wait_until_trial()     # pause consumption; the event is not failed
        try:
            response = await send(event)
        except TransientError:
            breaker.record_failure()
            raise
        except asyncio.CancelledError:
            breaker.record_abandoned()           # says nothing of the system's health
            raise
        breaker.record_success()

    Results are counted as they arrive, whichever call they belong to: while open they are
    ignored (calls let through before it opened say nothing new), and in half-open the first
    result decides. Open turns half-open when the state is next looked at (`state`, `allow()`,
    `wait_until_trial()`), so listeners hear of it then.
    """

    def __init__(
        self, failures: int = 5, reset_after: float = 30.0, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        if failures < 1:
            raise ValueError(f"failures must be at least 1, not {failures}")
        if reset_after <= 0:
            raise ValueError(f"reset_after must be positive, not {reset_after}")
        self.failures = failures
        self.reset_after = reset_after
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._consecutive_failures = 0
        self._opened_at = 0.0
        self._trial_in_flight = False
        self._listeners: list[StateListener] = []
        # Set (and replaced) whenever a trial ends, to wake those waiting for the next trial.
        self._trial_ended = asyncio.Event()

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._seconds_until_trial() <= 0:
            self._move_to(BreakerState.HALF_OPEN)
        return self._state

    @property
    def consecutive_failures(self) -> int:
        """Failures since the last success (or since it last closed)."""
        return self._consecutive_failures

    def add_listener(self, listener: StateListener) -> None:
        self._listeners.append(listener)

    def allow(self) -> bool:
        """Whether to make a call now; in half-open, True makes the caller the one trial."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._trial_in_flight:
            self._trial_in_flight = True
            return True
        return False

    def record_success(self) -> None:
        state = self.state
        if state is BreakerState.OPEN:
            return
        self._consecutive_failures = 0
        if state is BreakerState.HALF_OPEN:
            self._end_trial()
            self._move_to(BreakerState.CLOSED)

    def record_failure(self) -> None:
        state = self.state
        if state is BreakerState.OPEN:
            return
        self._consecutive_failures += 1
        if state is BreakerState.HALF_OPEN or self._consecutive_failures >= self.failures:
            self._opened_at = self._clock.now()  # a failed trial restarts the wait
            self._end_trial()
            self._move_to(BreakerState.OPEN)

    def record_abandoned(self) -> None:
        """A call ended without telling anything (cancelled, or never sent): free the trial."""
        if self._trial_in_flight:
            self._end_trial()

    async def wait_until_trial(self) -> None:
        """Return once a call may be made: closed, or half-open with no trial under way.

        Several waiters may wake for one trial; `allow()` picks one, and the others wait again.
        """
        while True:
            state = self.state
            if state is BreakerState.CLOSED:
                return
            if state is BreakerState.HALF_OPEN:
                if not self._trial_in_flight:
                    return
                await self._trial_ended.wait()
            else:
                await self._clock.sleep(self._seconds_until_trial())

    def _seconds_until_trial(self) -> float:
        return self._opened_at + self.reset_after - self._clock.now()

    def _end_trial(self) -> None:
        self._trial_in_flight = False
        self._trial_ended.set()
        self._trial_ended = asyncio.Event()

    def _move_to(self, new: BreakerState) -> None:
        # Listeners come last, so that one that raises leaves the breaker consistent.
        old, self._state = self._state, new
        if new is BreakerState.CLOSED:
            self._consecutive_failures = 0
        for listener in self._listeners:
            listener(old, new)

    def __repr__(self) -> str:
        return (
            # The stored state: looking at `state` here could change it and call listeners.
            f"CircuitBreaker(state={self._state.value}, failures={self._consecutive_failures}"
            f"/{self.failures}, reset_after={self.reset_after})"
        )


def breaker_from(settings: model.CircuitBreaker, clock: Clock = SYSTEM_CLOCK) -> CircuitBreaker:
    """The breaker a flow file's `circuit_breaker` block declares."""
    return CircuitBreaker(
        failures=settings.failures,
        reset_after=settings.reset_after.total_seconds(),
        clock=clock,
    )
