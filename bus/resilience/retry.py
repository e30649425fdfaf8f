"""Retries of a failed call: how long to wait before each, and the loop that makes them.

The flow file's `retry` block (`bus.flows.model.Retry`) configures a `RetryPolicy`; an outbound
adapter passes its call to `call_with_retries` with a `classify` function that tells a transient
failure (retry it, perhaps when the server said) from a permanent one (retrying cannot help).
"""

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from bus.errors import BusError
from bus.flows import model
from bus.resilience.clock import Sleep

T = TypeVar("T")

RETRY_AFTER_LIMIT = 300.0
"""Longest wait a server's Retry-After gets, in seconds, unless the backoff's `max` is longer.

A server that asks for more than this (Retry-After: 86400) would otherwise hold a delivery
for a day; after the limit we simply try again and get a fresh Retry-After if it still applies.
"""


@dataclass(frozen=True)
class Transient:
    """The call may succeed if tried again; `retry_after` is the server's wish, in seconds."""

    retry_after: float | None = None


@dataclass(frozen=True)
class Permanent:
    """Trying again cannot help (a 400, a SOAP client fault): the error is raised at once."""


Verdict = Transient | Permanent
"""What `classify` says of an error."""


class RetriesExhaustedError(BusError):
    """Every attempt failed with a transient error; the last error is also `__cause__`."""

    def __init__(self, attempts: int, last_error: BaseException) -> None:
        self.attempts = attempts
        self.last_error = last_error
        tries = "attempt" if attempts == 1 else "attempts"
        super().__init__(
            f"gave up after {attempts} {tries}; last error: "
            f"{type(last_error).__name__}: {last_error}"
        )


@dataclass(frozen=True)
class RetryPolicy:
    """How many tries, and how long to wait after each failed one (seconds).

    The wait after failed attempt n is `initial * multiplier ** (n - 1)`, at most `max_delay`,
    then moved at random by up to `jitter` of itself either way (still at most `max_delay`), so
    that callers that failed together do not all come back together. `jitter=1` spreads a wait
    over [0, 2 * wait]; `jitter=0` gives the exact sequence.

    Usage::

        policy = policy_from(outbound.retry)           # or RetryPolicy(attempts=3, ...)
        policy.delay(1)                                # 0.2 +- 20% with the defaults
        policy.delay(2, retry_after=10.0)              # 10.0: the server's wish wins
    """

    attempts: int = 5
    initial: float = 0.2
    max_delay: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.2
    retry_after_limit: float = RETRY_AFTER_LIMIT
    random_source: Callable[[], float] = field(default=random.random, compare=False, repr=False)
    """A number in [0, 1); `random.Random(seed).random` or a stub makes delays predictable."""

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {self.attempts}")
        if not 0 <= self.initial <= self.max_delay:
            raise ValueError(
                f"need 0 <= initial <= max_delay, not {self.initial}, {self.max_delay}"
            )
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be at least 1, not {self.multiplier}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be a share between 0 and 1, not {self.jitter}")

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt `attempt` (1 for the first try).

        A server's Retry-After wins over the backoff, even when shorter or longer than `max_delay`
        (the server knows when it will take calls again), up to the larger of `retry_after_limit`
        and `max_delay`. It is not jittered: the server has already chosen the moment.
        """
        if attempt < 1:
            raise ValueError(f"attempts count from 1, not {attempt}")
        if retry_after is not None:
            return min(max(retry_after, 0.0), max(self.retry_after_limit, self.max_delay))
        try:
            wait = min(self.max_delay, self.initial * self.multiplier ** (attempt - 1))
        except OverflowError:  # a huge attempt number: the cap was reached long ago
            wait = self.max_delay
        spread = self.jitter * (2 * self.random_source() - 1)  # uniform in [-jitter, +jitter)
        return min(self.max_delay, max(0.0, wait * (1 + spread)))


def policy_from(
    retry: model.Retry, random_source: Callable[[], float] = random.random
) -> RetryPolicy:
    """The policy a flow file's `retry` block declares."""
    backoff = retry.backoff
    return RetryPolicy(
        attempts=retry.attempts,
        initial=backoff.initial.total_seconds(),
        max_delay=backoff.max.total_seconds(),
        multiplier=backoff.multiplier,
        jitter=backoff.jitter,
        random_source=random_source,
    )


OnRetry = Callable[[int, BaseException, float], None]
"""Told of each retry before its wait: (failed attempt, its error, seconds to wait)."""


async def call_with_retries(
    operation: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    classify: Callable[[BaseException], Verdict],
    sleep: Sleep = asyncio.sleep,
    on_retry: OnRetry | None = None,
) -> T:
    """Await `operation()` until it succeeds, retrying transient failures as `policy` says.

    A permanent failure is raised as it is, at once. After `policy.attempts` transient failures,
    `RetriesExhaustedError` is raised from the last one. Cancellation (and any other
    BaseException that is not an Exception) passes through untouched: a shutdown is no failure.

    Usage::

        def classify(error: BaseException) -> Verdict:
            if isinstance(error, HttpStatusError) and error.status in (429, 503):
                return Transient(retry_after=error.retry_after)
            return Transient() if isinstance(error, OSError) else Permanent()

        response = await call_with_retries(lambda: session.post(url, json=body), policy, classify)
    """
    attempt = 1
    while True:
        try:
            return await operation()
        except Exception as error:
            verdict = classify(error)
            if isinstance(verdict, Permanent):
                raise
            if attempt >= policy.attempts:
                raise RetriesExhaustedError(attempt, error) from error
            wait = policy.delay(attempt, verdict.retry_after)
            if on_retry is not None:
                on_retry(attempt, error, wait)
        # Sleep outside the except block, so that the caught error is not kept alive (and not
        # shown as context) while waiting.
        await sleep(wait)
        attempt += 1
