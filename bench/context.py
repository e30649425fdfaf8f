"""What every scenario is given: the broker, the run's size, and a place for its files.

Shared by the pipe scenarios (bench.pipes) and the ingest and codec scenarios (bench.ingest,
bench.codec), so that all of them use fresh topics on the same broker and keep their subjects'
logs and flow files in one per-run directory.
"""

import itertools
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bus.flows.topics import ensure_topics


@dataclass
class BenchContext:
    bootstrap: str  # the broker
    quick: bool
    # records per pipe run (full 30_000, quick ~3_000); ingest picks its own counts from quick
    events: int
    repeat: int  # repetitions after the warm-up (≥3)
    work_dir: Path  # per-run temp dir: subject logs, flow files
    # One run id for every topic and log of this run: topics of an earlier run on the same
    # broker (--kafka) never collide with this one's.
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    _counter: Iterator[int] = field(default_factory=itertools.count, repr=False)

    def topic(self, label: str) -> str:
        """A fresh unique topic name."""
        return f"bench-{self.run_id}-{next(self._counter)}-{label}"

    async def create_topics(self, *names: str, partitions: int = 6) -> None:
        """Create the topics (replication: as many brokers as there are, up to 3)."""
        await ensure_topics(self.bootstrap, names, partitions)

    def log(self, name: str) -> Path:
        """A fresh log file path for a subject."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        return self.work_dir / f"{next(self._counter):03d}-{name}.log"
