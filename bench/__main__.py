"""`make bench`: throughput, latency and memory of bus against the hand-written limits and
FastStream, on one broker, in one run, with the ratios between them.

    python -m bench [--quick] [--only NAME ...] [--out FILE.json] [--events N]
                    [--repeat N] [--kafka BOOTSTRAP]

Starts a broker of its own on free ports (unless --kafka or KAFKA_BOOTSTRAP_SERVERS), runs the
scenarios in order (each: a warm-up and --repeat measured repetitions), writes the JSON and the
same table as Markdown next to it (results.md), and prints the table. A scenario that fails is
recorded with its error and the others still run; the exit status is then 1.

--quick: 3,000 records per pipe run, 2 measured runs per scenario, one warm-up run for all the
pipe scenarios, smaller ingest counts, no soak; under 2 minutes with the broker's start. Its
numbers check the harness; a pipe run of 3,000 records is mostly its first second.
"""

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.context import BenchContext
from bench.measure import ROOT, ScenarioResult
from bench.pipes import PIPES, pipe_scenario, soak
from bench.report import ratios, run_info, table
from bus.config import BusSettings
from bus.local_kafka import KafkaDistribution, LocalKafka
from bus.processes import free_ports

SCENARIOS = [
    *PIPES,
    "raw-ingest",
    "bus-ingest",
    "e2e-latency",
    "codec",
    "soak",
]
FULL_EVENTS, QUICK_EVENTS = 30_000, 3_000
# Quick mode measures 2 runs per scenario, not 3: with 3 it took over its 2 minutes (each run
# starts a subject process: ~2 s for bus before the first record) - stated in the JSON.
FULL_REPEAT, QUICK_REPEAT = 3, 2
SOAK_S, SOAK_LOAD = 600.0, 0.7  # 10 minutes at 70% of bus-mediation's median
WARM_UP_FULL = "one discarded run before each scenario's measured runs"
WARM_UP_QUICK = "one discarded run before the first pipe scenario only (each run is a new process)"
# Internal topics with one partition: the broker starts and the first group joins faster; the
# data path (6-partition topics, acks=all) is what it would be without.
BROKER_OVERRIDES = {
    "offsets.topic.num.partitions": "1",
    "transaction.state.log.num.partitions": "1",
    "auto.create.topics.enable": "false",
}


async def scenario(
    ctx: BenchContext, name: str, done: dict[str, ScenarioResult], soak_s: float
) -> ScenarioResult:
    if name in PIPES:
        # Quick mode: one warm-up run before the first pipe scenario only (see pipe_scenario).
        warm_up = not ctx.quick or not any(done_name in PIPES for done_name in done)
        return await pipe_scenario(ctx, name, warm_up=warm_up)
    if name in ("raw-ingest", "bus-ingest", "e2e-latency"):
        from bench import ingest  # noqa: PLC0415 -- helper PEER's module; only when asked for

        result: ScenarioResult = await getattr(ingest, name.replace("-", "_"))(ctx)
        return result
    if name == "codec":
        from bench.codec import codec  # noqa: PLC0415

        return await codec(ctx)
    if name == "soak":
        if "bus-mediation" not in done:  # --only soak: measure what 70% is of first
            done["bus-mediation"] = await pipe_scenario(ctx, "bus-mediation")
        rate = SOAK_LOAD * done["bus-mediation"].summary()["rate_median"]
        return await soak(ctx, rate, soak_s)
    raise ValueError(f"unknown scenario {name!r}")


def scenario_timeout(name: str, quick: bool, soak_s: float) -> float:
    """A bound on one scenario; each bounds its own waits, this catches what they miss."""
    if name == "soak":
        return soak_s + 900.0
    return 300.0 if quick else 1200.0


async def measure(ctx: BenchContext, names: Sequence[str], soak_s: float) -> dict[str, Any]:
    results: dict[str, ScenarioResult] = {}
    failures: dict[str, str] = {}
    for name in names:
        started = time.perf_counter()
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        try:
            async with asyncio.timeout(scenario_timeout(name, ctx.quick, soak_s)):
                results[name] = await scenario(ctx, name, results, soak_s)
        except Exception as error:  # recorded; the other scenarios still run
            failures[name] = f"{error}\n{traceback.format_exc(limit=5)}"
            print(f"bench: {name} FAILED: {error}", file=sys.stderr, flush=True)
            continue
        summary = results[name].summary()
        print(
            f"bench: {name}: {summary['rate_median']:,.0f} {summary['unit']} "
            f"({time.perf_counter() - started:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    # In SCENARIOS order, with bus-mediation too when the soak measured it for its rate.
    scenarios = {name: results[name].summary() for name in SCENARIOS if name in results}
    values, targets = ratios(scenarios)
    return {"scenarios": scenarios, "ratios": values, "targets": targets, "failures": failures}


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts, no soak (< 2 min)")
    parser.add_argument(
        "--only",
        action="append",
        choices=SCENARIOS,
        metavar="NAME",
        help=f"run only this scenario (repeatable): {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="the JSON (the table goes beside it as .md) [default: bench/results.json; with "
        "--quick or --only, bench/results-partial.json, so the full run's file stays]",
    )
    parser.add_argument(
        "--events", type=int, help=f"records per pipe run ({FULL_EVENTS:,}; quick {QUICK_EVENTS:,})"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        help=f"measured runs per scenario ({FULL_REPEAT}; quick {QUICK_REPEAT})",
    )
    parser.add_argument(
        "--kafka", help="an existing broker (default: KAFKA_BOOTSTRAP_SERVERS, else one of its own)"
    )
    parser.add_argument("--soak-seconds", type=float, default=SOAK_S, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def start_broker(state_dir: Path) -> LocalKafka:
    cache = BusSettings().kafka_cache_dir
    client, controller = free_ports(2)
    broker = LocalKafka(
        state_dir=state_dir,
        distribution=KafkaDistribution.pinned(cache if cache.is_absolute() else ROOT / cache),
        client_port=client,
        controller_port=controller,
        overrides=BROKER_OVERRIDES,
        heap="1g",
        die_with_parent=True,
    )
    asyncio.run(broker.start(ready_within=120.0))
    return broker


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse(argv)
    quick = arguments.quick
    names = [name for name in SCENARIOS if name in (arguments.only or SCENARIOS)]
    skipped = {}
    if quick and "soak" in names:
        names.remove("soak")
        skipped["soak"] = "full mode only"
    work_dir = Path(tempfile.mkdtemp(prefix="bench-"))
    print(f"bench: subjects' flow files and logs in {work_dir / 'subjects'}", file=sys.stderr)
    bootstrap = arguments.kafka or os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    broker = None if bootstrap else start_broker(work_dir / "kafka")
    try:
        ctx = BenchContext(
            bootstrap=bootstrap or broker.bootstrap_servers,  # type: ignore[union-attr]
            quick=quick,
            events=arguments.events or (QUICK_EVENTS if quick else FULL_EVENTS),
            repeat=arguments.repeat or (QUICK_REPEAT if quick else FULL_REPEAT),
            work_dir=work_dir / "subjects",
        )
        measured = asyncio.run(measure(ctx, names, arguments.soak_seconds))
    finally:
        if broker is not None:
            broker.stop()
            shutil.rmtree(work_dir / "kafka", ignore_errors=True)  # gigabytes of records
    report = {
        "run": run_info(
            quick=quick,
            kafka_version=broker.distribution.version if broker else f"external ({bootstrap})",
            events=ctx.events,
            repeat=ctx.repeat,
            warm_up=WARM_UP_QUICK if quick else WARM_UP_FULL,
            note=f"{ctx.events:,} records per pipe run, {ctx.repeat} measured runs per scenario; "
            f"warm-up: {WARM_UP_QUICK if quick else WARM_UP_FULL}.",
        ),
        **measured,
        "skipped": skipped,
    }
    if arguments.out is None:
        partial = quick or arguments.only
        arguments.out = ROOT / "bench" / ("results-partial.json" if partial else "results.json")
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(report, indent=2) + "\n")
    text = table(report)
    arguments.out.with_suffix(".md").write_text(text)
    print(text)
    if measured["failures"]:
        print(
            f"bench: failed: {', '.join(measured['failures'])}; subject logs in {ctx.work_dir}",
            file=sys.stderr,
        )
        return 1
    shutil.rmtree(work_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
