"""Retry, circuit breaker and rate limit: deterministic, on a fake clock, without Kafka."""

import asyncio
import random
from collections.abc import Callable, Iterator

import pytest

from bus.errors import BusError, PermanentDeliveryError, TransientDeliveryError
from bus.flows import model
from bus.resilience import (
    BreakerState,
    CircuitBreaker,
    FakeClock,
    Permanent,
    RateLimiter,
    RetriesExhaustedError,
    RetryPolicy,
    SystemClock,
    Transient,
    Verdict,
    breaker_from,
    call_with_retries,
    limiter_from,
    policy_from,
)
from bus.resilience.guarded_lookup import GuardedLookup


def draws(*values: float) -> Callable[[], float]:
    """A random source that returns `values` in turn."""
    remaining: Iterator[float] = iter(values)
    return lambda: next(remaining)


async def settle() -> None:
    """Let every ready task run until it blocks (a few turns of the event loop)."""
    for _ in range(10):
        await asyncio.sleep(0)


# -- retry: delays ----------------------------------------------------------------------------


def test_backoff_without_jitter_grows_by_the_multiplier_up_to_max() -> None:
    policy = RetryPolicy(attempts=10, initial=0.2, max_delay=30.0, multiplier=2.0, jitter=0.0)

    delays = [policy.delay(attempt) for attempt in range(1, 11)]

    assert delays == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 30.0])


def test_backoff_with_a_multiplier_of_one_is_constant() -> None:
    policy = RetryPolicy(initial=1.0, max_delay=5.0, multiplier=1.0, jitter=0.0)

    assert [policy.delay(attempt) for attempt in (1, 2, 3)] == [1.0, 1.0, 1.0]


def test_jitter_moves_each_wait_by_up_to_its_share_either_way() -> None:
    # The random source's 0, 0.5 and 0.75 mean -20%, no change and +10% with jitter 0.2.
    policy = RetryPolicy(initial=1.0, max_delay=30.0, jitter=0.2, random_source=draws(0, 0.5, 0.75))

    assert [policy.delay(1), policy.delay(2), policy.delay(3)] == pytest.approx([0.8, 2.0, 4.4])


def test_jitter_never_exceeds_max_nor_goes_below_zero() -> None:
    full = RetryPolicy(initial=1.0, max_delay=30.0, jitter=1.0, random_source=draws(0.0))
    capped = RetryPolicy(initial=1.0, max_delay=30.0, jitter=0.5, random_source=draws(0.999))

    assert full.delay(1) == 0.0
    assert capped.delay(10) == 30.0


def test_seeded_jitter_stays_within_its_bounds_and_repeats() -> None:
    def sequence(seed: int) -> list[float]:
        seeded = random.Random(seed)  # noqa: S311 -- jitter, not a secret
        policy = RetryPolicy(attempts=8, jitter=0.2, random_source=seeded.random)
        return [policy.delay(attempt) for attempt in range(1, 9)]

    for attempt, delay in enumerate(sequence(7), start=1):
        base = min(30.0, 0.2 * 2.0 ** (attempt - 1))
        assert base * 0.8 <= delay <= min(30.0, base * 1.2)
    assert sequence(7) == sequence(7)
    assert sequence(7) != sequence(8)


def test_a_huge_attempt_number_waits_max() -> None:
    policy = RetryPolicy(jitter=0.0)

    assert policy.delay(100_000) == 30.0


def test_retry_after_wins_over_the_backoff_without_jitter() -> None:
    policy = RetryPolicy(initial=0.2, max_delay=30.0, jitter=0.5, random_source=draws())

    assert policy.delay(1, retry_after=10.0) == 10.0
    assert policy.delay(5, retry_after=0.0) == 0.0  # "now" is a valid answer too
    assert policy.delay(1, retry_after=-3.0) == 0.0


def test_retry_after_may_exceed_max_up_to_the_limit() -> None:
    policy = RetryPolicy(max_delay=30.0, retry_after_limit=300.0)
    patient = RetryPolicy(max_delay=600.0, retry_after_limit=300.0)

    assert policy.delay(1, retry_after=120.0) == 120.0
    assert policy.delay(1, retry_after=86_400.0) == 300.0
    assert patient.delay(1, retry_after=86_400.0) == 600.0  # the user's own max is longer


def test_invalid_policies_and_attempts_are_refused() -> None:
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError, match="initial"):
        RetryPolicy(initial=5.0, max_delay=1.0)
    with pytest.raises(ValueError, match="multiplier"):
        RetryPolicy(multiplier=0.5)
    with pytest.raises(ValueError, match="jitter"):
        RetryPolicy(jitter=1.5)
    with pytest.raises(ValueError, match="count from 1"):
        RetryPolicy().delay(0)


def test_policy_from_the_flow_files_retry_block() -> None:
    defaults = policy_from(model.Retry())
    declared = policy_from(
        model.Retry.model_validate(
            {
                "attempts": 3,
                "backoff": {"initial": "1s", "max": "2m", "multiplier": 3, "jitter": 0},
            }
        )
    )

    assert defaults == RetryPolicy(
        attempts=5, initial=0.2, max_delay=30.0, multiplier=2.0, jitter=0.2
    )
    assert declared == RetryPolicy(
        attempts=3, initial=1.0, max_delay=120.0, multiplier=3.0, jitter=0.0
    )
    assert [declared.delay(attempt) for attempt in (1, 2, 3)] == [1.0, 3.0, 9.0]


# -- retry: the loop --------------------------------------------------------------------------


class Flaky:
    """An operation that raises the given errors in turn, then returns "done"."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def transient_unless_value_error(error: BaseException) -> Verdict:
    return Permanent() if isinstance(error, ValueError) else Transient()


async def test_transient_failures_are_retried_after_the_backoff() -> None:
    clock = FakeClock()
    operation = Flaky(ConnectionError("reset"), TimeoutError("slow"))
    notices: list[tuple[int, str, float]] = []
    policy = RetryPolicy(attempts=5, initial=0.2, jitter=0.0)

    result = await call_with_retries(
        operation,
        policy,
        transient_unless_value_error,
        sleep=clock.sleep,
        on_retry=lambda attempt, error, wait: notices.append((attempt, str(error), wait)),
    )

    assert result == "done"
    assert operation.calls == 3
    assert clock.sleeps == pytest.approx([0.2, 0.4])
    assert [(attempt, error) for attempt, error, _ in notices] == [(1, "reset"), (2, "slow")]
    assert [wait for _, _, wait in notices] == pytest.approx([0.2, 0.4])


async def test_the_servers_retry_after_is_honoured() -> None:
    clock = FakeClock()
    operation = Flaky(ConnectionError("429"))

    def classify(error: BaseException) -> Verdict:
        return Transient(retry_after=7.0)

    result = await call_with_retries(
        operation, RetryPolicy(jitter=0.0), classify, sleep=clock.sleep
    )

    assert result == "done"
    assert clock.sleeps == [7.0]


async def test_a_permanent_error_is_raised_at_once() -> None:
    clock = FakeClock()
    refused = ValueError("400 bad request")
    operation = Flaky(refused)

    with pytest.raises(ValueError, match="400") as raised:
        await call_with_retries(
            operation, RetryPolicy(), transient_unless_value_error, sleep=clock.sleep
        )

    assert raised.value is refused
    assert operation.calls == 1
    assert clock.sleeps == []


async def test_exhaustion_says_how_many_attempts_and_chains_the_last_error() -> None:
    clock = FakeClock()
    last = ConnectionError("third")
    operation = Flaky(ConnectionError("first"), ConnectionError("second"), last)

    with pytest.raises(RetriesExhaustedError) as raised:
        await call_with_retries(
            operation,
            RetryPolicy(attempts=3, initial=1.0, jitter=0.0),
            transient_unless_value_error,
            sleep=clock.sleep,
        )

    error = raised.value
    assert isinstance(error, BusError)
    assert error.attempts == 3
    assert error.last_error is last
    assert error.__cause__ is last
    assert str(error) == "gave up after 3 attempts; last error: ConnectionError: third"
    assert operation.calls == 3
    assert clock.sleeps == [1.0, 2.0]


async def test_a_single_attempt_is_never_retried() -> None:
    clock = FakeClock()
    operation = Flaky(ConnectionError("down"))

    with pytest.raises(RetriesExhaustedError, match="after 1 attempt;"):
        await call_with_retries(
            operation, RetryPolicy(attempts=1), transient_unless_value_error, sleep=clock.sleep
        )

    assert clock.sleeps == []


async def test_cancellation_is_not_classified_nor_retried() -> None:
    classified: list[BaseException] = []

    async def cancelled() -> str:
        raise asyncio.CancelledError

    def classify(error: BaseException) -> Verdict:
        classified.append(error)
        return Transient()

    with pytest.raises(asyncio.CancelledError):
        await call_with_retries(cancelled, RetryPolicy(), classify, sleep=FakeClock().sleep)

    assert classified == []


# -- circuit breaker --------------------------------------------------------------------------


def state_of(breaker: CircuitBreaker) -> BreakerState:
    # A call rather than the property inline: mypy would take the state to stay as last
    # asserted, while here time (or a result) changes it between asserts.
    return breaker.state


def open_breaker(clock: FakeClock, failures: int = 3, reset_after: float = 30.0) -> CircuitBreaker:
    breaker = CircuitBreaker(failures=failures, reset_after=reset_after, clock=clock)
    for _ in range(failures):
        breaker.record_failure()
    assert state_of(breaker) is BreakerState.OPEN
    return breaker


def test_breaker_opens_after_consecutive_failures_only() -> None:
    breaker = CircuitBreaker(failures=3, reset_after=30.0, clock=FakeClock())
    changes: list[tuple[BreakerState, BreakerState]] = []
    breaker.add_listener(lambda old, new: changes.append((old, new)))

    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # the run of failures is broken
    breaker.record_failure()
    breaker.record_failure()
    assert state_of(breaker) is BreakerState.CLOSED
    assert breaker.allow()

    breaker.record_failure()
    assert state_of(breaker) is BreakerState.OPEN
    assert not breaker.allow()
    assert changes == [(BreakerState.CLOSED, BreakerState.OPEN)]


def test_breaker_turns_half_open_after_reset_after_and_lets_one_trial_through() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    changes: list[tuple[BreakerState, BreakerState]] = []
    breaker.add_listener(lambda old, new: changes.append((old, new)))

    clock.advance(29.999)
    assert state_of(breaker) is BreakerState.OPEN
    assert not breaker.allow()

    clock.advance(0.001)
    assert state_of(breaker) is BreakerState.HALF_OPEN
    assert breaker.allow()  # this caller is the trial
    assert not breaker.allow()  # and nobody else while it runs
    assert changes == [(BreakerState.OPEN, BreakerState.HALF_OPEN)]


def test_a_successful_trial_closes_the_breaker() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    clock.advance(30.0)
    assert breaker.allow()

    breaker.record_success()

    assert state_of(breaker) is BreakerState.CLOSED
    assert breaker.consecutive_failures == 0
    assert breaker.allow()
    assert breaker.allow()


def test_a_failed_trial_reopens_the_breaker_and_restarts_the_wait() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    changes: list[tuple[BreakerState, BreakerState]] = []
    breaker.add_listener(lambda old, new: changes.append((old, new)))
    clock.advance(45.0)  # well past reset_after: the new wait counts from the trial's failure
    assert breaker.allow()

    breaker.record_failure()

    assert state_of(breaker) is BreakerState.OPEN
    clock.advance(29.0)
    assert state_of(breaker) is BreakerState.OPEN
    clock.advance(1.0)
    assert state_of(breaker) is BreakerState.HALF_OPEN
    assert changes == [
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
    ]


def test_results_that_arrive_while_open_are_ignored() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)

    breaker.record_success()  # a call let through before the breaker opened
    breaker.record_failure()

    assert state_of(breaker) is BreakerState.OPEN
    clock.advance(30.0)  # the late failure did not restart the wait
    assert state_of(breaker) is BreakerState.HALF_OPEN


def test_an_abandoned_trial_frees_the_slot_for_another() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    clock.advance(30.0)
    assert breaker.allow()

    breaker.record_abandoned()

    assert state_of(breaker) is BreakerState.HALF_OPEN
    assert breaker.allow()


def test_breaker_from_the_flow_files_circuit_breaker_block() -> None:
    breaker = breaker_from(model.CircuitBreaker.model_validate({"reset_after": "2m"}))

    assert (breaker.failures, breaker.reset_after) == (5, 120.0)
    assert state_of(breaker) is BreakerState.CLOSED


def test_invalid_breakers_are_refused() -> None:
    with pytest.raises(ValueError, match="failures"):
        CircuitBreaker(failures=0)
    with pytest.raises(ValueError, match="reset_after"):
        CircuitBreaker(reset_after=0)


async def test_wait_until_trial_returns_at_once_when_closed() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(clock=clock)

    await breaker.wait_until_trial()

    assert clock.sleeps == []


async def test_wait_until_trial_sleeps_out_the_rest_of_reset_after() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock, reset_after=30.0)
    clock.advance(10.0)

    await breaker.wait_until_trial()

    assert clock.sleeps == [20.0]
    assert state_of(breaker) is BreakerState.HALF_OPEN
    assert breaker.allow()


async def test_wait_until_trial_waits_for_the_running_trial_then_for_reset_after() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock, reset_after=30.0)
    clock.advance(30.0)
    assert breaker.allow()  # the trial is under way
    waiter = asyncio.create_task(breaker.wait_until_trial())
    await settle()
    assert not waiter.done()

    breaker.record_failure()  # the trial failed: wait another reset_after
    await asyncio.wait_for(waiter, timeout=5)  # the timeout only guards against a hang

    assert clock.sleeps == [30.0]
    assert state_of(breaker) is BreakerState.HALF_OPEN


async def test_a_successful_trial_releases_every_waiter() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    clock.advance(30.0)
    assert breaker.allow()
    waiters = [asyncio.create_task(breaker.wait_until_trial()) for _ in range(3)]
    await settle()
    assert not any(waiter.done() for waiter in waiters)

    breaker.record_success()
    await asyncio.wait_for(asyncio.gather(*waiters), timeout=5)

    assert state_of(breaker) is BreakerState.CLOSED
    assert clock.sleeps == []


async def test_waiters_woken_for_one_trial_take_turns() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    clock.advance(30.0)
    assert breaker.allow()
    waiters = [asyncio.create_task(breaker.wait_until_trial()) for _ in range(2)]
    await settle()

    breaker.record_abandoned()
    await asyncio.wait_for(asyncio.gather(*waiters), timeout=5)

    assert [breaker.allow(), breaker.allow()] == [True, False]


# -- rate limit -------------------------------------------------------------------------------


async def test_acquires_faster_than_the_rate_are_spaced_evenly() -> None:
    clock = FakeClock()
    limiter = RateLimiter(count=5, per_seconds=1, clock=clock)
    times: list[float] = []

    for _ in range(6):
        await limiter.acquire()
        times.append(clock.now())

    assert clock.sleeps == pytest.approx([0.2] * 5)
    assert times == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])


async def test_only_the_rest_of_the_interval_is_waited() -> None:
    clock = FakeClock()
    limiter = RateLimiter(count=10, per_seconds=1, clock=clock)

    await limiter.acquire()
    clock.advance(0.04)
    await limiter.acquire()
    clock.advance(5.0)  # a quiet spell: the next call goes at once
    await limiter.acquire()

    assert clock.sleeps == pytest.approx([0.06])


async def test_concurrent_callers_are_served_first_come_first_served() -> None:
    clock = FakeClock()
    limiter = RateLimiter(count=2, per_seconds=1, clock=clock)
    served: list[tuple[int, float]] = []

    async def caller(number: int) -> None:
        await limiter.acquire()
        served.append((number, clock.now()))

    await asyncio.gather(*(caller(number) for number in range(5)))

    assert [number for number, _ in served] == [0, 1, 2, 3, 4]
    assert [at for _, at in served] == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])
    assert clock.sleeps == pytest.approx([0.5] * 4)


class GatedClock(FakeClock):
    """A fake clock whose sleeps end only when the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await self.gate.wait()
        self.advance(seconds)


async def test_a_cancelled_waiter_gives_up_its_turn_without_using_a_slot() -> None:
    clock = GatedClock()
    limiter = RateLimiter(count=5, per_seconds=1, clock=clock)
    await limiter.acquire()  # t=0; the next slot is at 0.2
    served: list[str] = []

    async def caller(name: str) -> None:
        await limiter.acquire()
        served.append(name)

    first = asyncio.create_task(caller("first"))  # sleeps at the front of the queue
    second = asyncio.create_task(caller("second"))  # waits its turn behind it
    await settle()
    first.cancel()
    await settle()
    clock.gate.set()
    await asyncio.wait_for(second, timeout=5)

    assert first.cancelled()
    assert served == ["second"]
    assert clock.now() == pytest.approx(0.2)  # second took the slot first never used
    assert clock.sleeps == pytest.approx([0.2, 0.2])


def test_limiter_from_the_flow_files_rate_limit() -> None:
    limiter = limiter_from(model.parse_rate_limit("100/min"))

    assert (limiter.count, limiter.per_seconds) == (100, 60)
    assert limiter.interval == pytest.approx(0.6)


def test_invalid_limiters_are_refused() -> None:
    with pytest.raises(ValueError, match="count"):
        RateLimiter(count=0, per_seconds=1)
    with pytest.raises(ValueError, match="per_seconds"):
        RateLimiter(count=1, per_seconds=0)


# -- clocks -----------------------------------------------------------------------------------


async def test_fake_clock_moves_only_forward() -> None:
    clock = FakeClock(start=100.0)

    await clock.sleep(1.5)
    clock.advance(0.5)

    assert clock.now() == 102.0
    assert clock.sleeps == [1.5]
    with pytest.raises(ValueError, match="cannot go back"):
        clock.advance(-1.0)


async def test_system_clock_is_monotonic() -> None:
    clock = SystemClock()
    before = clock.now()

    await clock.sleep(0)

    assert clock.now() >= before


async def test_a_guarded_lookup_counts_its_calls_failures_and_retries_for_the_status_board() -> (
    None
):
    answers: list[Exception | str] = [
        TransientDeliveryError("busy"),
        "ACC-1",
        PermanentDeliveryError("no"),
    ]

    async def lookup(**arguments: object) -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    guarded = GuardedLookup(
        "erp-customer", lookup, RetryPolicy(attempts=3, initial=0.001, max_delay=0.001)
    )
    assert await guarded(CustomerId="c-1") == "ACC-1"
    with pytest.raises(PermanentDeliveryError):
        await guarded(CustomerId="c-2")
    assert guarded.counters.as_dict() == {
        "in": 2,
        "out": 1,
        "failed": 2,
        "dead_lettered": 0,
        "retried": 1,
    }
