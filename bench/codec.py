"""The codec scenario: bus's EventCodec against bare fastavro on the same events.

Four loops over the bench's CustomerChanged records (bench.workload), in a process of their own:
- bus encode: `EventCodec.encode(event)` → KafkaRecord (schema lookup, field check, single-object
  prefix, Avro body, CloudEvents headers);
- bus decode: `EventCodec.decode(key, value, headers)` → DecodedEvent (headers parsed, framing
  read, writer schema found by fingerprint, Avro body, Event built);
- fastavro encode: the prefix and `schemaless_writer` with the parsed schema, nothing else;
- fastavro decode: `schemaless_reader` past the prefix, nothing else.
The difference is what bus's codec costs over the Avro work itself: the overheads are bus's time
per event over fastavro's (1.0 = no overhead).

    python -m bench.codec --events N --repeat R

prints one JSON line: every repetition's four rates (events per CPU second) and CPU seconds,
after a warm-up pass; the process's peak RSS and fast paths (read from /proc/self, since it
exits when done).
"""

import argparse
import asyncio
import contextlib
import io
import json
import os
import resource
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastavro import schemaless_reader, schemaless_writer

from bench.context import BenchContext
from bench.measure import Run, ScenarioResult, Subject, fast_paths, peak_rss_mb, python
from bench.workload import (
    CATALOG,
    INPUT_PREFIX_LENGTH,
    INPUT_SCHEMA,
    INPUT_TYPE,
    PARTITIONS,
    encoded_records,
)
from bus.events.codec import EventCodec, KafkaRecord
from bus.events.event import Event
from bus.events.framing import single_object

LOOPS = ("bus_encode", "bus_decode", "fastavro_encode", "fastavro_decode")
WARM_UP_EVENTS = 1_000
MIN_EVENTS = 10_000  # fewer make loops of a few ms: too short to time reliably
FINISH_WITHIN_S = 300.0


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def loops(records: list[KafkaRecord]) -> dict[str, Callable[[], Awaitable[None]]]:
    """The four loops, each over every record (or its decoded event)."""
    codec = EventCodec(CATALOG)
    events: list[Event] = [(await codec.decode(r.key, r.value, r.headers)).event for r in records]
    data = [dict(event.data) for event in events]
    prefix = single_object(CATALOG.current(INPUT_TYPE).fingerprint)

    async def bus_encode() -> None:
        for event in events:
            await codec.encode(event)

    async def bus_decode() -> None:
        for record in records:
            await codec.decode(record.key, record.value, record.headers)

    async def fastavro_encode() -> None:
        for fields in data:
            out = io.BytesIO()
            out.write(prefix)
            schemaless_writer(out, INPUT_SCHEMA, fields)
            out.getvalue()

    async def fastavro_decode() -> None:
        for record in records:
            schemaless_reader(io.BytesIO(record.value[INPUT_PREFIX_LENGTH:]), INPUT_SCHEMA, None)

    return {
        "bus_encode": bus_encode,
        "bus_decode": bus_decode,
        "fastavro_encode": fastavro_encode,
        "fastavro_decode": fastavro_decode,
    }


async def measure(events: int, repeat: int) -> dict[str, Any]:
    records = await encoded_records(events)
    warm = await loops(records[:WARM_UP_EVENTS])
    for loop in warm.values():
        await loop()
    timed = await loops(records)
    runs = []
    for _ in range(repeat):  # the four interleaved, so drift hits each alike
        run: dict[str, float] = {}
        cpu = cpu_seconds()
        for name, loop in timed.items():
            # CPU time of this (single-threaded) process, not wall time: on a shared machine
            # the wall clock also counts the time other processes had the CPU.
            started = time.process_time()
            await loop()
            run[name] = round(events / (time.process_time() - started), 1)
        run["cpu_s"] = round(cpu_seconds() - cpu, 3)
        runs.append(run)
    return {
        "events": events,
        "repeat": repeat,
        "message_bytes": round(sum(len(r.value) for r in records) / len(records)),
        "runs": runs,
        "peak_rss_mb": round(peak_rss_mb(os.getpid()), 1),
        "fast_paths": fast_paths(os.getpid()),
    }


async def codec(ctx: BenchContext) -> ScenarioResult:
    """Run `python -m bench.codec` as the subject and turn its JSON into the scenario's result."""
    events = max(ctx.events, MIN_EVENTS)
    subject = Subject(
        [python(), "-m", "bench.codec", "--events", str(events), "--repeat", str(ctx.repeat)],
        log=ctx.log("codec"),
    )
    async with subject:
        assert subject.process is not None  # noqa: S101 -- started by the async with
        with contextlib.suppress(subprocess.TimeoutExpired):  # overran: stopped just below
            await asyncio.to_thread(subject.process.wait, FINISH_WITHIN_S)
        code = await subject.stop()
    output = [line for line in subject.log_tail(5).splitlines() if line.startswith("{")]
    if code != 0 or not output:
        raise RuntimeError(
            f"codec: the subject exited {code} without its JSON:\n{subject.log_tail()}"
        )
    report = json.loads(output[-1])
    runs = [
        Run(
            # One number per repetition: events/s through bus's encode and decode, one each.
            rate=round(1 / (1 / run["bus_encode"] + 1 / run["bus_decode"]), 1),
            cpu_s=run["cpu_s"],
            peak_rss_mb=report["peak_rss_mb"],
            messages=report["events"],
            extra={name: run[name] for name in LOOPS},
        )
        for run in report["runs"]
    ]
    medians = {name: statistics.median(run[name] for run in report["runs"]) for name in LOOPS}
    return ScenarioResult(
        name="codec",
        description="bus EventCodec encode+decode vs bare fastavro schemaless_writer/reader",
        runs=runs,
        message_bytes=report["message_bytes"],
        partitions=PARTITIONS,
        fast_paths=report["fast_paths"],
        unit="events/s",
        extra={
            **{f"{name}_rate": round(rate, 1) for name, rate in medians.items()},
            # bus's time per event over fastavro's: 1.0 means the codec adds nothing.
            "encode_overhead": round(medians["fastavro_encode"] / medians["bus_encode"], 3),
            "decode_overhead": round(medians["fastavro_decode"] / medians["bus_decode"], 3),
            "events": report["events"],
            "warm_up_events": WARM_UP_EVENTS,
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()
    print(json.dumps(asyncio.run(measure(options.events, options.repeat))), flush=True)


if __name__ == "__main__":
    main()
