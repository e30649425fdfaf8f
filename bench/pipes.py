"""The pipe scenarios: a subject process reads a preloaded topic, does its work, writes to two
topics (EU and US), and commits. One `Pipe` per scenario of the issue (items 1-6) and the soak.

Each repetition gets fresh topics (6 partitions: in, out-eu, out-us and the flow's dead-letter
topic) that `bench.load` fills before the subject starts, so the subject's own start and group
join are outside the measurement. Progress is what the subject's consumer group has committed on
the input topic, polled every ~50 ms from this process; the rate and the subject's CPU seconds are
taken between the first poll at or past 5% of the records and the poll that sees all of them (the
first 5% absorb the fetch warm-up and the producers' connects). Then the outputs are checked, so
a subject that commits without producing fails rather than reporting a rate.
"""

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from bench.context import BenchContext
from bench.measure import ROOT, Run, ScenarioResult, Subject, SubjectFailedError, python
from bench.workload import PARTITIONS, mediation_flow, passes, passthrough_flow
from bus.flows.model import consumer_group, default_dlq
from bus.processes import die_with_parent

POLL_S = 0.05
START_WITHIN_S = 90.0  # subject start, group join and first commit (bus imports a lot)
STALL_S = 30.0  # no committed progress for this long: the subject is stuck
LOAD_WITHIN_S = 300.0
FASTSTREAM = version("faststream")
START_FRACTION = 0.05


@dataclass(frozen=True)
class Pipe:
    name: str
    description: str
    module: str | None = None  # a hand-written or FastStream subject: python -m <module>
    flow: Callable[..., str] | None = None  # a bus subject: `bus run` on this flow text
    guarantee: str = "at-least-once"
    mediates: bool = True  # the filters drop records (workload.passes); else all pass
    # The share of ctx.events a run reads: a subject that awaits each record's publish and
    # commit runs tens of times slower; fewer records keep its runs as long as the others'.
    share: float = 1.0
    # Processes of the subject in one consumer group (they share the partitions): scaling out,
    # as docs/flows.md#scaling-out says to. CPU is their sum, peak RSS the largest one's.
    processes: int = 1

    def events(self, ctx: BenchContext) -> int:
        return max(1, int(ctx.events * self.share))

    def expected(self, events: int) -> int:
        return sum(map(passes, range(events))) if self.mediates else events


PIPES = {
    pipe.name: pipe
    for pipe in (
        Pipe(
            "raw-pipe",
            "hand-written aiokafka consume→produce loop passing bytes, routed by key",
            module="bench.subjects.raw_pipe",
            mediates=False,
        ),
        Pipe(
            "raw-avro-pipe",
            "the same loop with bare fastavro decode, hand-written filter/map/route, encode",
            module="bench.subjects.raw_avro_pipe",
        ),
        Pipe(
            "bus-passthrough",
            "bus flow routing on a CloudEvents attribute, value not decoded (decode: false)",
            flow=passthrough_flow,
            mediates=False,
        ),
        Pipe(
            "bus-mediation",
            "bus flow: decode, 2 filters, transform to CustomerUpsertRequest, route, at-least-once",
            flow=mediation_flow,
        ),
        Pipe(
            "bus-mediation-2proc",
            "the bus-mediation flow in two `bus run` processes of one group (3 partitions each)",
            flow=mediation_flow,
            processes=2,
        ),
        Pipe(
            "bus-mediation-eos",
            "the bus-mediation flow with guarantee: exactly-once (Kafka transactions)",
            flow=mediation_flow,
            guarantee="exactly-once",
        ),
        Pipe(
            "faststream-each",
            f"FastStream {FASTSTREAM} per-message subscriber + publisher, ack after the publish",
            module="bench.subjects.faststream_each",
            share=0.1,
        ),
        Pipe(
            "faststream-batch",
            f"FastStream {FASTSTREAM} batch subscriber + batch publisher, ack after the publish",
            module="bench.subjects.faststream_batch",
        ),
    )
}


@dataclass(frozen=True)
class Topics:
    source: str
    eu: str
    us: str
    name: str  # the bus flow's name, also the hand-written subjects' group

    @property
    def dlq(self) -> str:
        return default_dlq(self.name)

    def all(self) -> tuple[str, ...]:
        return (self.source, self.eu, self.us, self.dlq)


def new_topics(ctx: BenchContext, label: str) -> Topics:
    return Topics(
        source=ctx.topic(f"{label}-in"),
        eu=ctx.topic(f"{label}-out-eu"),
        us=ctx.topic(f"{label}-out-us"),
        name=ctx.topic(label),
    )


def command(ctx: BenchContext, pipe: Pipe, topics: Topics) -> tuple[list[str], str, dict[str, str]]:
    """The subject's command line, its consumer group and its environment."""
    if pipe.module is not None:
        group = topics.name
        arguments = ["--bootstrap", ctx.bootstrap, "--source", topics.source]
        arguments += ["--eu", topics.eu, "--us", topics.us, "--group", group]
        return [python(), "-m", pipe.module, *arguments], group, {}
    assert pipe.flow is not None  # noqa: S101 -- a Pipe is one or the other
    options: dict[str, Any] = {"name": topics.name, "source": topics.source}
    options |= {"eu_topic": topics.eu, "us_topic": topics.us}
    if pipe.guarantee != "at-least-once":
        options["guarantee"] = pipe.guarantee
    flow = ctx.work_dir / f"{topics.name}.yaml"
    flow.write_text(pipe.flow(**options))
    env = {
        "BUS_SCHEMAS_DIR": str(ROOT / "schemas"),
        "KAFKA_BOOTSTRAP_SERVERS": ctx.bootstrap,
        "BUS_HOME": str(ctx.work_dir / "bus-home"),
    }
    return [python(), "-m", "bus", "run", str(flow)], consumer_group(topics.name), env


async def preload(
    ctx: BenchContext, topics: list[str], events: int, *, rate: float | None = None
) -> dict[str, Any]:
    """Run bench.load (its own process) and return its JSON line."""
    arguments = ["-m", "bench.load", "--bootstrap", ctx.bootstrap, "--events", str(events)]
    for topic in topics:
        arguments += ["--topic", topic]
    if rate is not None:
        arguments += ["--rate", str(rate)]
    log = ctx.log("load")
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            python(),
            *arguments,
            stdout=asyncio.subprocess.PIPE,
            stderr=out,
            cwd=ROOT,
            preexec_fn=die_with_parent,  # the load must not outlive the harness (the soak: 10 min)
        )
        try:
            async with asyncio.timeout(LOAD_WITHIN_S + (events / rate if rate else 0)):
                stdout, _ = await process.communicate()
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
    if process.returncode != 0:
        raise RuntimeError(f"bench.load exited {process.returncode}:\n{log.read_text()[-3000:]}")
    result: dict[str, Any] = json.loads(stdout.decode().strip().splitlines()[-1])
    return result


@contextlib.asynccontextmanager
async def admin_client(bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


async def committed(admin: AIOKafkaAdminClient, group: str, topic: str) -> int:
    """The records of `topic` the group has committed (0 before its first commit)."""
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    except KafkaError:
        return 0
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset > 0)


async def end_offsets(bootstrap: str, *topics: str) -> dict[str, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for topic in topics for p in range(PARTITIONS)]
        ends = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
    return {topic: sum(end for tp, end in ends.items() if tp.topic == topic) for topic in topics}


async def committed_records(bootstrap: str, *topics: str, within: float = 60.0) -> int:
    """How many records a read_committed consumer sees in `topics` (transaction markers and
    aborted records, which end offsets count, are not records)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for topic in topics for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)  # the last stable offsets
        count = 0
        async with asyncio.timeout(within):
            while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
                batch = await consumer.getmany(timeout_ms=500, max_records=5000)
                count += sum(map(len, batch.values()))
    finally:
        await consumer.stop()
    return count


async def one_run(
    ctx: BenchContext, pipe: Pipe, topics: Topics, events: int
) -> tuple[Run, dict[str, bool]]:
    """One repetition on preloaded `topics`: the Run and the subject's fast paths."""
    argv, group, env = command(ctx, pipe, topics)
    subjects = [Subject(argv, log=ctx.log(pipe.name), env=env) for _ in range(pipe.processes)]
    subject = subjects[0]

    def cpu_seconds() -> float:
        return sum(one.cpu_seconds() for one in subjects)

    try:
        async with admin_client(ctx.bootstrap) as admin, contextlib.AsyncExitStack() as stack:
            for one in subjects:
                await stack.enter_async_context(one)
            progress = Progress(subjects, admin, group, topics.source)
            launched = time.perf_counter()
            start = await progress.reach(events * START_FRACTION, START_WITHIN_S)
            cpu_start = cpu_seconds()
            end = await progress.reach(events, STALL_S, since=start[1])
            cpu = cpu_seconds() - cpu_start
            rss, paths = max(one.peak_rss_mb() for one in subjects), subject.fast_paths()
            stopping = time.perf_counter()
            codes = [await one.stop() for one in subjects]
            stopped = time.perf_counter()
        if any(codes):
            raise SubjectFailedError(f"exited {codes} after SIGTERM")
        outputs = await check_outputs(ctx, pipe, topics, events)
    except Exception as error:
        raise ScenarioError(
            f"{pipe.name}: {error!r}\n--- {subject.log} (tail):\n{subject.log_tail()}"
        ) from error
    done, window = end[1] - start[1], end[0] - start[0]
    run = Run(
        rate=done / window,
        cpu_s=round(cpu, 3),
        peak_rss_mb=round(rss, 1),
        messages=done,
        extra={
            "events": events,
            "outputs": outputs,
            "window_s": round(window, 3),
            "start_s": round(start[0] - launched, 2),  # process start to 5% committed
            "stop_s": round(stopped - stopping, 2),  # SIGTERM to exit
            "cpu_us_per_msg": round(cpu / done * 1e6, 1),
        },
    )
    return run, paths


@dataclass
class Progress:
    """The subject's consumer group's committed offsets on the input topic."""

    subjects: list[Subject]
    admin: AIOKafkaAdminClient
    group: str
    topic: str

    async def committed(self) -> int:
        return await committed(self.admin, self.group, self.topic)

    async def reach(self, target: float, stall: float, since: int = 0) -> tuple[float, int]:
        """Poll until `target` records are committed; (when, how many). Fails if the subject
        exits or nothing moves for `stall` seconds."""
        last_change, last = time.perf_counter(), since
        while True:
            for subject in self.subjects:
                subject.check_alive()
            done = await self.committed()
            now = time.perf_counter()
            if done >= target:
                return now, done
            if done != last:
                last_change, last = now, done
            elif now - last_change > stall:
                raise TimeoutError(
                    f"committed {done} of {target:.0f} records on {self.topic}; "
                    f"no progress for {stall:.0f} s"
                )
            await asyncio.sleep(POLL_S)


async def check_outputs(ctx: BenchContext, pipe: Pipe, topics: Topics, events: int) -> int:
    """The records the subject wrote; raises when fewer than expected or any dead letter."""
    ends = await end_offsets(ctx.bootstrap, topics.eu, topics.us, topics.dlq)
    if pipe.guarantee == "exactly-once":
        outputs = await committed_records(ctx.bootstrap, topics.eu, topics.us)
    else:
        outputs = ends[topics.eu] + ends[topics.us]
    expected = pipe.expected(events)
    if outputs < expected or ends[topics.dlq]:
        raise ScenarioError(
            f"{pipe.name}: {outputs} outputs for {events} inputs (expected ≥ {expected}), "
            f"{ends[topics.dlq]} dead letters"
        )
    return outputs


async def pipe_scenario(ctx: BenchContext, name: str, *, warm_up: bool = True) -> ScenarioResult:
    """A warm-up run (discarded) then ctx.repeat measured runs, each on fresh topics. Every run
    is a fresh subject process, so the warm-up warms the broker (its JIT, the page cache) and
    the OS's file cache, not the subject: quick mode does it once for all pipe scenarios."""
    pipe = PIPES[name]
    runs: list[Topics] = [new_topics(ctx, name) for _ in range(ctx.repeat + warm_up)]
    topics = (topic for run in runs for topic in run.all())
    await ctx.create_topics(*topics, partitions=PARTITIONS)
    events = pipe.events(ctx)
    load = await preload(ctx, [run.source for run in runs], events)
    measured: list[Run] = []
    paths: dict[str, bool] = {}
    for number, run_topics in enumerate(runs):
        run, paths = await one_run(ctx, pipe, run_topics, events)
        if number or not warm_up:
            measured.append(run)
    return ScenarioResult(
        name=name,
        description=pipe.description,
        runs=measured,
        message_bytes=load["record_bytes"],
        partitions=PARTITIONS,
        fast_paths=paths,
        extra={"events": events, "warm_up_runs": int(warm_up), "guarantee": pipe.guarantee},
    )


class ScenarioError(RuntimeError):
    """A scenario did not produce a trustworthy number."""


# --- soak ---------------------------------------------------------------------------------------

RSS_EVERY_S = 10.0
DRAIN_STALL_S = 30.0


async def soak(ctx: BenchContext, rate: float, seconds: float) -> ScenarioResult:
    """bus-mediation fed by bench.load at `rate` records/s for `seconds`; its RSS every 10 s."""
    pipe = PIPES["bus-mediation"]
    topics = new_topics(ctx, "soak")
    await ctx.create_topics(*topics.all(), partitions=PARTITIONS)
    events = int(rate * seconds)
    argv, group, env = command(ctx, pipe, topics)
    subject = Subject(argv, log=ctx.log("soak"), env=env)
    series: list[tuple[float, float]] = []
    try:
        async with admin_client(ctx.bootstrap) as admin, subject:
            progress = Progress([subject], admin, group, topics.source)
            load = asyncio.create_task(preload(ctx, [topics.source], events, rate=rate))
            started, cpu_start = time.perf_counter(), subject.cpu_seconds()
            while not load.done():
                await asyncio.wait({load}, timeout=RSS_EVERY_S)
                subject.check_alive()
                series.append((round(time.perf_counter() - started, 1), round(subject.rss_mb(), 1)))
            loaded = await load  # its error, if it failed
            done_at, done = time.perf_counter(), await progress.committed()
            lag = events - done
            drained = await drain(progress, events)
            cpu, rss, paths = (
                subject.cpu_seconds() - cpu_start,
                subject.peak_rss_mb(),
                subject.fast_paths(),
            )
            code = await subject.stop()
        if code != 0:
            raise SubjectFailedError(f"exited {code} after SIGTERM")
        if not done:
            raise ScenarioError("nothing committed")
    except Exception as error:
        raise ScenarioError(
            f"soak: {error!r}\n--- {subject.log} (tail):\n{subject.log_tail()}"
        ) from error
    values = [mb for _, mb in series]
    first, last = values[0], values[-1]
    run = Run(
        rate=done / (done_at - started),
        cpu_s=round(cpu, 3),
        peak_rss_mb=round(rss, 1),
        messages=done,
    )
    return ScenarioResult(
        name="soak",
        description=f"bus-mediation at {rate:.0f} records/s for {seconds:.0f} s, RSS every 10 s",
        runs=[run],
        message_bytes=loaded["record_bytes"],
        partitions=PARTITIONS,
        fast_paths=paths,
        extra={
            "target_rate": round(rate, 1),
            "seconds": seconds,
            "rss_series_mb": series,
            "rss_first_mb": first,
            "rss_last_mb": last,
            "rss_max_mb": max(values),
            "rss_growth_mb": round(last - first, 1),
            "rss_growth_pct": round((last - first) / first * 100, 2),
            "lag_at_end": lag,
            "drained_within_s": drained,
        },
    )


async def drain(progress: Progress, events: int) -> float | None:
    """Seconds until every record is committed; None if progress stalls for DRAIN_STALL_S."""
    started = time.perf_counter()
    try:
        done_at, _ = await progress.reach(events, DRAIN_STALL_S)
    except TimeoutError:
        return None
    return round(done_at - started, 2)


if __name__ == "__main__":
    sys.exit("run `python -m bench --only NAME` instead")
