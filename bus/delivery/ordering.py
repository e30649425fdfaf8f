"""Per-key order with concurrency across keys: one chain of records per (partition, key).

An external system sees the events of one key in the order they were written (an update never
overtakes the create before it, even when the create needs three retries), while events of
other keys go on meanwhile. Each chain is one task that works on its records one at a time, in
offset order, and ends when it runs out; a record of a key with no chain starts a new one.
Records without a key share one chain per partition (their only order is the partition's).

Stopping a partition's chains (revocation, shutdown) starts no further record. A chain waiting
between calls (a backoff, the circuit breaker, the rate limit, a free call slot) is cancelled at
once: nothing of value is lost, its record is simply not done. A chain in the middle of a call
is marked `busy` by its work and gets a grace period to finish it, so that a call that reached
the external system is not thrown away and made again by the next owner.
"""

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Collection
from typing import Generic, TypeVar

from aiokafka import TopicPartition

log = logging.getLogger(__name__)

T = TypeVar("T")


class Chain(Generic[T]):
    """The records of one key of one partition still to work on, the first one under way."""

    __slots__ = ("busy", "key", "partition", "queue", "stopping", "task")

    def __init__(self, partition: TopicPartition, key: bytes | None) -> None:
        self.partition = partition
        self.key = key
        self.queue: deque[T] = deque()
        # Set by the work while interrupting it would waste a call (or its acknowledgement).
        self.busy = False
        # Set when the partition is being given up; the work checks it before waiting again.
        self.stopping = False
        self.task: asyncio.Task[None] | None = None


Work = Callable[[T, Chain[T]], Awaitable[None]]
"""Works on one record of a chain; returning means the chain may go on to the next one."""


class KeyedChains(Generic[T]):
    """Runs `work` on submitted records: in order within a key, concurrently across keys.

    An exception from `work` (other than cancellation) is a failure of the whole delivery, not
    of the record: it is kept in `failure` for the runner to raise, and the chain stops.
    """

    def __init__(self, work: Work[T]) -> None:
        self._work = work
        self._chains: dict[tuple[TopicPartition, bytes | None], Chain[T]] = {}
        self._stopped: set[TopicPartition] = set()
        self.failure: BaseException | None = None

    def accepts(self, partition: TopicPartition) -> bool:
        """False while the partition's chains are stopping: take none of its records then."""
        return partition not in self._stopped

    def submit(self, partition: TopicPartition, key: bytes | None, record: T) -> None:
        """Queue a record behind the earlier ones of its key (records come in offset order)."""
        if partition in self._stopped:
            raise RuntimeError(f"{partition} is stopping; its records are not taken")
        chain = self._chains.get((partition, key))
        if chain is None:
            chain = self._chains[partition, key] = Chain(partition, key)
            chain.task = asyncio.create_task(
                self._run(chain), name=f"delivery {partition.topic}[{partition.partition}]"
            )
        chain.queue.append(record)

    @property
    def running(self) -> int:
        return len(self._chains)

    async def stop(self, partitions: Collection[TopicPartition], grace: float | None) -> None:
        """Stop the chains of `partitions`: cancel those waiting, give those `busy` up to
        `grace` seconds (None: as long as they take) to finish their call, then cancel them.
        Their records not done stay not done. The partitions take no records until `reopen`."""
        self._stopped.update(partitions)
        chains = [chain for chain in self._chains.values() if chain.partition in partitions]
        for chain in chains:
            chain.stopping = True
            if not chain.busy and chain.task is not None:
                chain.task.cancel()
        tasks = [chain.task for chain in chains if chain.task is not None]
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=grace)
        if late:
            log.warning(
                "%d call(s) under way did not finish within %.0f s; cancelled (their records "
                "will be delivered again by the partitions' next owner)",
                len(late),
                grace or 0,
            )
            await _cancel(late)

    def reopen(self, partitions: Collection[TopicPartition]) -> None:
        """The partitions may take records again (assigned anew)."""
        self._stopped.difference_update(partitions)

    async def abort(self) -> None:
        """Cancel every chain at once, busy or not, and wait until they are gone."""
        self._stopped.update(chain.partition for chain in self._chains.values())
        await _cancel([chain.task for chain in self._chains.values() if chain.task is not None])

    async def _run(self, chain: Chain[T]) -> None:
        try:
            while chain.queue and not chain.stopping:
                await self._work(chain.queue[0], chain)
                chain.queue.popleft()
                chain.busy = False
        except Exception as error:
            # Take no more records of the partition: a later record of this key must not be
            # delivered before this one, which the next run will do again.
            self._stopped.add(chain.partition)
            if self.failure is None:
                self.failure = error
            else:
                log.debug("a further failure after the first: %r", error)
        finally:
            # No await between the last look at the queue and this: a record submitted to the
            # chain either was seen by the loop or finds no chain and starts a new one.
            if self._chains.get((chain.partition, chain.key)) is chain:
                del self._chains[chain.partition, chain.key]


async def _cancel(tasks: Collection[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
