"""What tracing and event journeys cost a mediation flow, measured on a real broker.

One mediation flow (two filters, a transform to another schema, a route: the example flow of
`make run`) processes the same pre-encoded events under five settings: tracing and journeys
off, journeys on, tracing on (spans exported over OTLP/HTTP to a local receiver that accepts
them), tracing of 10% of the journeys, and tracing with journeys. Each setting runs `--repeat`
times on fresh topics; the table gives the median, min and max events/s between 5% and 100% of
the outputs (so the group join does not count), the CPU seconds of the process, and the ratio
to the first setting run. Ratios are only meaningful between settings of the same run.

    .venv/bin/python -m bench.tracing_overhead [--events 20000] [--repeat 3] [--only SETTING]

`--plain` leaves the observability block out of the flow file, to measure a bus from before it
(PYTHONPATH=<its checkout>) on the same broker (KAFKA_BOOTSTRAP_SERVERS): what "off" costs.

Without KAFKA_BOOTSTRAP_SERVERS it starts a broker of its own on free ports.
"""

import argparse
import asyncio
import contextlib
import json
import os
import resource
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.workload import mediation_block
from bus.config import BusSettings
from bus.events.catalog import SchemaCatalog
from bus.events.codec import EventCodec
from bus.events.event import Event
from bus.events.validation import validated
from bus.flows.loading import load_flow_files
from bus.flows.runtime import run_flows
from bus.flows.topics import ensure_topics
from bus.local_kafka import KafkaDistribution, LocalKafka
from bus.processes import free_ports

ROOT = Path(__file__).resolve().parents[1]
CATALOG = SchemaCatalog.load(ROOT / "schemas")
PARTITIONS = 6
SETTINGS = {
    "off": {"tracing": "none", "journeys": False},
    "journeys": {"tracing": "none", "journeys": True},
    "tracing": {"tracing": "otlp", "journeys": False},
    "tracing 10%": {"tracing": "otlp", "journeys": False, "sample_ratio": 0.1},
    "tracing+journeys": {"tracing": "otlp", "journeys": True},
}
OBSERVABILITY = """
observability:
  tracing: {{exporter: {tracing}, endpoint: "{endpoint}", sample_ratio: {sample_ratio}}}
  journeys: {{enabled: {journeys}, topic: {journey_topic}}}
  logs: {{level: warning}}
"""


def customer(number: int) -> Event:
    schema = CATALOG.current("com.acme.crm.CustomerChanged")
    data = {
        "customerId": f"c-{number}",
        "change": "UPDATED",
        "email": f"customer{number}@example.com",
        "name": f"Customer {number}",
        "phone": "+44 20 7946 0000",
        "status": "ACTIVE",
        "address": {
            "line1": "12 St James's Square",
            "city": "London",
            "postalCode": "SW1Y 4JH",
            "country": "GB" if number % 2 else "US",
        },
        "tags": ["vip", "newsletter"],
        "attributes": {"segment": "enterprise", "owner": "sales-emea"},
        "changedAt": datetime.now(UTC).isoformat(),
    }
    return Event(
        type=schema.full_name, data=validated(schema, data), source="/crm", key=f"c-{number}"
    )


class OtlpReceiver:
    """Accepts OTLP/HTTP trace exports and counts them: the exporter does its real work."""

    def __init__(self) -> None:
        self.requests = 0
        self.bytes = 0

    async def traces(self, request: web.Request) -> web.Response:
        self.requests += 1
        self.bytes += len(await request.read())
        return web.Response(body=b"", content_type="application/x-protobuf")

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/traces", self.traces)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            yield f"http://127.0.0.1:{port}/v1/traces"
        finally:
            await runner.cleanup()


async def produce(
    bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
    await producer.start()
    try:
        for key, value, headers in records:
            await producer.send(topic, value, key=key, headers=headers)
        await producer.flush()
    finally:
        await producer.stop()


async def outputs(consumer: AIOKafkaConsumer, topic: str) -> int:
    partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    ends = await consumer.end_offsets(partitions)
    return sum(ends.values())


async def one_run(
    bootstrap: str,
    setting: str,
    records: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]],
    endpoint: str,
    *,
    plain: bool,
) -> dict[str, float]:
    tag = uuid.uuid4().hex[:8]
    source, output = f"bench.in.{tag}", f"bench.out.{tag}"
    await ensure_topics(bootstrap, [source, output, f"bench-{tag}.dlq"], partitions=PARTITIONS)
    await produce(bootstrap, source, records)
    options = SETTINGS[setting]
    # Both routes to one output: the outputs are counted, not where they went.
    text = mediation_block(name=f"bench-{tag}", source=source, eu_topic=output, us_topic=output)
    if not plain:
        text = (
            OBSERVABILITY.format(
                tracing=options["tracing"],
                endpoint=endpoint,
                journeys=str(options["journeys"]).lower(),
                sample_ratio=options.get("sample_ratio", 1.0),
                journey_topic=f"bench.journeys.{tag}",
            )
            + text
        )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "flow.yaml"
        path.write_text(text)
        flows = load_flow_files([path])
    stop = asyncio.Event()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    task = asyncio.create_task(run_flows(flows, CATALOG, bootstrap_servers=bootstrap, stop=stop))
    total = len(records)
    started: float | None = None
    try:
        async with asyncio.timeout(600):
            while True:
                done = await outputs(consumer, output)
                now = time.perf_counter()
                if started is None and done >= total * 0.05:
                    started, at_start = now, done
                if done >= total:
                    break
                await asyncio.sleep(0.02)
    finally:
        stop.set()
        await task
        await consumer.stop()
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    if started is None:
        raise RuntimeError(f"{setting}: no output within the time limit")
    cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
    return {"events_per_s": (total - at_start) / (now - started), "cpu_s": cpu}


async def measure(
    bootstrap: str, events: int, repeat: int, *, only: list[str], plain: bool
) -> dict[str, object]:
    codec = EventCodec(CATALOG)
    records = []
    for number in range(events):
        record = await codec.encode(customer(number))
        records.append((record.key, record.value, list(record.headers)))
    receiver = OtlpReceiver()
    results: dict[str, list[dict[str, float]]] = {name: [] for name in only}
    async with receiver.running() as endpoint:
        warm_up = records[: min(events, 2000)]
        await one_run(bootstrap, only[0], warm_up, endpoint, plain=plain)
        for _ in range(repeat):
            for setting in only:  # interleaved, so drift hits every setting alike
                run = await one_run(bootstrap, setting, records, endpoint, plain=plain)
                results[setting].append(run)
    base = statistics.median(run["events_per_s"] for run in results[only[0]])
    table = {}
    for setting, runs in results.items():
        rates = [run["events_per_s"] for run in runs]
        table[setting] = {
            "events_per_s_median": round(statistics.median(rates)),
            "events_per_s_min": round(min(rates)),
            "events_per_s_max": round(max(rates)),
            "cpu_s_median": round(statistics.median(run["cpu_s"] for run in runs), 2),
            "ratio": round(statistics.median(rates) / base, 3),  # to the first setting
        }
    return {
        "events": events,
        "repeat": repeat,
        "partitions": PARTITIONS,
        "event_bytes": len(records[0][1]),
        "spans_exported_bytes": receiver.bytes,
        "otlp_requests": receiver.requests,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "settings": table,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--only", action="append", choices=list(SETTINGS), help="Run this setting (repeatable)."
    )
    parser.add_argument(
        "--plain",
        action="store_true",
        help="Leave the observability block out of the flow file: for a bus older than it.",
    )
    arguments = parser.parse_args()
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    broker: LocalKafka | None = None
    if bootstrap is None:
        client, controller = free_ports(2)
        cache = BusSettings().kafka_cache_dir
        broker = LocalKafka(
            state_dir=Path(tempfile.mkdtemp(prefix="bench-kafka-")),
            distribution=KafkaDistribution.pinned(cache if cache.is_absolute() else ROOT / cache),
            client_port=client,
            controller_port=controller,
            heap="1g",
            die_with_parent=True,
        )
        bootstrap = asyncio.run(broker.start(ready_within=120.0)).bootstrap_servers
    try:
        only = arguments.only or list(SETTINGS)
        report = asyncio.run(
            measure(bootstrap, arguments.events, arguments.repeat, only=only, plain=arguments.plain)
        )
    finally:
        if broker is not None:
            broker.stop()
    print(json.dumps(report, indent=2))
    columns = ("events/s (median)", "min", "max", "cpu s", "ratio")
    print(
        f"\n{'setting':<18} {columns[0]:>18} {columns[1]:>8} {columns[2]:>8} "
        + " ".join(f"{column:>7}" for column in columns[3:])
    )
    for setting, row in report["settings"].items():  # type: ignore[attr-defined]
        print(
            f"{setting:<18} {row['events_per_s_median']:>18} {row['events_per_s_min']:>8} "
            f"{row['events_per_s_max']:>8} {row['cpu_s_median']:>7} {row['ratio']:>7}"
        )


if __name__ == "__main__":
    main()
