"""Which offsets may be committed when a partition's records finish out of order.

A delivery works on the records of one partition concurrently when their keys differ, so a later
record is often done before an earlier one. Committing an offset tells the group that every
record before it is finished: commit past a record still under way, and a crash loses it. So
the commit point of a partition only moves over records that are done *and* have nothing
unfinished before them ("contiguous done"); a record done ahead of an unfinished one waits, and
is delivered again if the partition changes hands first (at-least-once, never at-most-once).

"Before" means taken earlier: offsets a partition never gave us (transaction markers, aborted
or compacted records) are not waited for.
"""

from collections import deque
from collections.abc import Iterable, Mapping

from aiokafka import TopicPartition


class PartitionOffsets:
    """The records of one partition taken into work, in fetch order, and how far they are done.

    Usage::

        offsets = PartitionOffsets()
        offsets.take(10); offsets.take(11)
        offsets.done(11)         # nothing to commit: 10 is still under way
        offsets.done(10)
        offsets.uncommitted()    # 12, the offset of the next record to read
    """

    __slots__ = ("_committed", "_done", "_last", "_next", "_taken")

    def __init__(self) -> None:
        self._taken: deque[int] = deque()  # taken and not yet passed by the commit point
        self._done: set[int] = set()  # those of them that are done
        self._next: int | None = None  # the commit point: the offset after the last passed
        self._committed: int | None = None
        self._last: int | None = None  # the last offset taken

    def take(self, offset: int) -> None:
        """A record is taken into work; offsets must come in increasing order."""
        if self._last is not None and offset <= self._last:
            raise ValueError(f"offset {offset} taken after {self._last}: records come in order")
        self._last = offset
        self._taken.append(offset)

    def done(self, offset: int) -> None:
        """The record's work is finished (delivered, or its dead letter acknowledged)."""
        if offset not in self._taken:
            raise ValueError(f"offset {offset} is done but was not taken (or done before)")
        self._done.add(offset)
        while self._taken and self._taken[0] in self._done:
            passed = self._taken.popleft()
            self._done.discard(passed)
            self._next = passed + 1

    @property
    def in_progress(self) -> int:
        """Records taken and not done yet."""
        return len(self._taken) - len(self._done)

    def uncommitted(self) -> int | None:
        """The offset to commit, or None when the last commit already says as much."""
        if self._next is None or self._next == self._committed:
            return None
        return self._next

    def committed(self, offset: int) -> None:
        self._committed = offset if self._committed is None else max(self._committed, offset)


class OffsetTracker:
    """`PartitionOffsets` of every partition this member works on.

    Work holds on to the `PartitionOffsets` that `take` returned and reports to it, so a record
    finishing after its partition was forgotten (and perhaps assigned again) cannot move the
    new commit point.
    """

    def __init__(self) -> None:
        self._partitions: dict[TopicPartition, PartitionOffsets] = {}

    def take(self, partition: TopicPartition, offset: int) -> PartitionOffsets:
        offsets = self._partitions.get(partition)
        if offsets is None:
            offsets = self._partitions[partition] = PartitionOffsets()
        offsets.take(offset)
        return offsets

    @property
    def partitions(self) -> set[TopicPartition]:
        return set(self._partitions)

    @property
    def in_progress(self) -> int:
        """Records taken and not done, over all partitions: what backpressure bounds."""
        return sum(offsets.in_progress for offsets in self._partitions.values())

    def to_commit(
        self, partitions: Iterable[TopicPartition] | None = None
    ) -> dict[TopicPartition, int]:
        """The commit points that moved since they were last committed."""
        chosen = self._partitions if partitions is None else set(partitions)
        return {
            partition: offset
            for partition in chosen
            if (offsets := self._partitions.get(partition)) is not None
            and (offset := offsets.uncommitted()) is not None
        }

    def committed(self, offsets: Mapping[TopicPartition, int]) -> None:
        for partition, offset in offsets.items():
            known = self._partitions.get(partition)
            if known is not None:
                known.committed(offset)

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """The partitions were handed over: whatever they still had under way is not ours."""
        for partition in partitions:
            self._partitions.pop(partition, None)
