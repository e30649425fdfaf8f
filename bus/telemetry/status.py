"""What each item of a `bus run` process is doing right now: the admin API's /flows and
/readyz, `bus top` and the gauges of /metrics all read it; the runtime and the runners write it.

Writing is a few attribute updates on the event loop (no lock, no allocation per record), so the
runners can afford it on every record.
"""

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, TopicPartition

from bus.resilience.circuit_breaker import BreakerState, CircuitBreaker

ItemKind = Literal["inbound", "mediation", "outbound", "lookup", "poller"]


class ItemState(StrEnum):
    STARTING = "starting"  # not yet in its consumer group (or its server not yet open)
    RUNNING = "running"
    RESTARTING = "restarting"  # failed; waiting to start again from the last commit
    STOPPED = "stopped"


@dataclass(slots=True)
class Counters:
    """Since the process started. `in_` counts records consumed (or requests accepted)."""

    in_: int = 0
    out: int = 0
    failed: int = 0  # hops that failed (a dead letter, or an attempt that will be retried)
    dead_lettered: int = 0
    retried: int = 0  # further attempts after a failed one

    def as_dict(self) -> dict[str, int]:
        return {
            "in": self.in_,
            "out": self.out,
            "failed": self.failed,
            "dead_lettered": self.dead_lettered,
            "retried": self.retried,
        }


@dataclass(slots=True)
class ItemStatus:
    name: str
    kind: ItemKind
    state: ItemState = ItemState.STARTING
    since: float = field(default_factory=time.time)  # when it entered `state` (epoch seconds)
    last_error: str | None = None
    last_error_at: float | None = None
    restarts: int = 0
    counters: Counters = field(default_factory=Counters)
    consumer: AIOKafkaConsumer | None = None  # while a runner has one
    breaker: CircuitBreaker | None = None
    in_flight: Callable[[], int] | None = None  # records in hand, asked when read
    dead_letter_topic: str | None = None
    paused_ends: dict[TopicPartition, int] = field(default_factory=dict)
    """Log end offsets asked of the broker while the runner's partitions are paused (no fetch
    responses then tell the end): without them the lag would freeze during an outage."""

    def enter(self, state: ItemState, error: BaseException | None = None) -> None:
        if state is not self.state:
            self.state = state
            self.since = time.time()
        if state is ItemState.RESTARTING:
            self.restarts += 1
        if error is not None:
            self.last_error = f"{type(error).__name__}: {error}"
            self.last_error_at = time.time()

    def lag(self) -> dict[TopicPartition, int]:
        """Per assigned partition: records between this member's fetch position and the end of
        the partition, as the last fetch response said (no request to the broker). Records
        fetched but not yet done are `in_flight`, not lag."""
        consumer = self.consumer
        if consumer is None:
            return {}
        lags: dict[TopicPartition, int] = {}
        for partition in consumer.assignment():
            # read_committed: records past the last stable offset cannot be read yet anyway.
            stable = consumer.last_stable_offset(partition)
            end = stable if stable is not None and stable >= 0 else consumer.highwater(partition)
            asked = self.paused_ends.get(partition)
            if asked is not None and (end is None or asked > end):
                end = asked
            fetched = _position(consumer, partition)
            if end is not None and fetched is not None:
                lags[partition] = max(0, end - fetched)
        return lags

    @property
    def assigned(self) -> int | None:
        """Partitions assigned to this member; None without a consumer."""
        return None if self.consumer is None else len(self.consumer.assignment())

    @property
    def breaker_state(self) -> BreakerState | None:
        return None if self.breaker is None else self.breaker.state

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready view of this item."""
        lags = self.lag()
        return {
            "name": self.name,
            "kind": self.kind,
            "state": self.state.value,
            "since": self.since,
            "restarts": self.restarts,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "counters": self.counters.as_dict(),
            "assigned_partitions": self.assigned,
            "lag": sum(lags.values()),
            "lag_by_partition": {f"{tp.topic}[{tp.partition}]": lag for tp, lag in lags.items()},
            "breaker": None if self.breaker is None else self.breaker.state.value,
            "in_flight": self.in_flight() if self.in_flight is not None else None,
            "dead_letter_topic": self.dead_letter_topic,
        }


def _position(consumer: AIOKafkaConsumer, partition: TopicPartition) -> int | None:
    """The consumer's fetch position without awaiting (`position()` may ask the broker)."""
    # No public accessor that does not await: the private state is what position() reads.
    assignment = consumer._subscription.subscription
    if assignment is None or assignment.assignment is None:
        return None
    state = assignment.assignment.state_value(partition)
    if state is None or not state.has_valid_position:
        return None
    position: int = state.position
    return position


class StatusBoard:
    """Every item of the process, by name."""

    def __init__(self) -> None:
        self._items: dict[str, ItemStatus] = {}
        self.started = time.time()

    def item(self, name: str, kind: ItemKind) -> ItemStatus:
        """The item's status, made on first use."""
        status = self._items.get(name)
        if status is None:
            status = self._items[name] = ItemStatus(name, kind)
        return status

    def get(self, name: str) -> ItemStatus | None:
        return self._items.get(name)

    def __iter__(self) -> Iterator[ItemStatus]:
        return iter(self._items.values())

    def snapshot(self) -> list[dict[str, Any]]:
        return [item.snapshot() for item in self._items.values()]
