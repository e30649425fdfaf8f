"""Whether the process is ready for work: what /readyz answers.

Three checks, each with a line saying why:
- `kafka`: the cluster answers a metadata request within 2 s. The answer is kept for a second,
  and probes that arrive while one is under way share it, so a load balancer probing every
  replica often does not turn into a flood of connections to the brokers.
- `assigned`: every mediation flow and outbound delivery is running and its consumer holds its
  assignment from the group's last rebalance. A member can rightly hold no partition (the group
  has more members than the topic has partitions): it is ready once the rebalance that gave it
  nothing has completed, which the consumer tells apart from one still under way.
- `breakers`: not every circuit breaker is open (all open: nothing can be delivered anywhere).
"""

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer

from bus.local_kafka.readiness import answers_metadata
from bus.resilience.circuit_breaker import BreakerState
from bus.telemetry.status import ItemState, ItemStatus, StatusBoard

KAFKA_WITHIN = 2.0  # seconds a metadata request may take
KAFKA_CACHE_FOR = 1.0  # seconds an answer stays fresh
_CONSUMING = ("mediation", "outbound")


@dataclass(frozen=True, slots=True)
class Check:
    ok: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "detail": self.detail}


class Readiness:
    def __init__(self, board: StatusBoard, bootstrap_servers: str) -> None:
        self.board = board
        self.bootstrap_servers = bootstrap_servers
        self._answer: bool | None = None
        self._answered_at = 0.0
        self._probe: asyncio.Task[None] | None = None

    async def checks(self) -> dict[str, Check]:
        return {
            "kafka": await self._kafka(),
            "assigned": self._assigned(),
            "breakers": self._breakers(),
        }

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)

    async def _kafka(self) -> Check:
        fresh = time.monotonic() - self._answered_at < KAFKA_CACHE_FOR
        if self._answer is None or not fresh:
            if self._probe is None:
                self._probe = asyncio.create_task(self._ask_kafka())
            # Shielded: a prober that hangs up must not cancel the answer the others wait for.
            await asyncio.shield(self._probe)
        if self._answer:
            return Check(True, f"{self.bootstrap_servers} answers metadata requests")
        return Check(
            False,
            f"{self.bootstrap_servers} did not answer a metadata request within "
            f"{KAFKA_WITHIN:.0f} s",
        )

    async def _ask_kafka(self) -> None:
        try:
            async with asyncio.timeout(KAFKA_WITHIN):
                answer = await answers_metadata(self.bootstrap_servers, within=KAFKA_WITHIN)
        except TimeoutError:
            answer = False
        finally:
            self._probe = None
        self._answer, self._answered_at = answer, time.monotonic()

    def _assigned(self) -> Check:
        items = [item for item in self.board if item.kind in _CONSUMING]
        waiting = [why for item in items if (why := _not_assigned(item)) is not None]
        if waiting:
            return Check(False, "; ".join(waiting))
        return Check(True, f"all {len(items)} consuming item(s) run with their partitions")

    def _breakers(self) -> Check:
        breakers = {item.name: item.breaker_state for item in self.board if item.breaker}
        opened = sorted(name for name, state in breakers.items() if state is BreakerState.OPEN)
        if breakers and len(opened) == len(breakers):
            return Check(False, f"every circuit breaker is open: {', '.join(opened)}")
        return Check(True, f"{len(opened)} of {len(breakers)} circuit breaker(s) open")


def _not_assigned(item: ItemStatus) -> str | None:
    """Why `item` is not ready to consume, or None when it is."""
    if item.state is not ItemState.RUNNING:
        return f"{item.name} is {item.state.value} (for {_age(item.since)})"
    if item.consumer is None:
        return f"{item.name} has no consumer yet"
    if _rebalancing(item.consumer):
        return f"{item.name} waits for its partitions (its group is rebalancing)"
    return None


def _rebalancing(consumer: AIOKafkaConsumer) -> bool:
    """True until the group's rebalance has handed this member its partitions, even none.

    `assignment()` is empty both while joining and after a rebalance that gave nothing; only
    the subscription state tells them apart (no public accessor; status.py reads it too).
    """
    return bool(consumer._subscription.reassignment_in_progress)


def _age(since: float) -> str:
    return f"{max(0.0, time.time() - since):.0f} s"
