"""The HTTP scenarios: raw-ingest, bus-ingest and e2e-latency (issue items 7-9).

Each starts one subject (a process of its own) on a free port and drives it with
`bench.http_load` (another process): a warm-up run, then `ctx.repeat` measured runs against the
same subject, its CPU seconds taken over each run. The bodies are the CRM's customer webhooks
(examples/flows/customers.yaml), signed like the CRM signs them.

- raw-ingest: bench.subjects.raw_ingest, POST → send_and_wait → 202: the inbound limit.
- bus-ingest: `bus run` with customers.yaml's webhook endpoint (HMAC signature check, JSON
  parsing, mapping to CustomerChanged, schema validation, Avro encoding, acks=all produce).
- e2e-latency: `bus run` with that endpoint, the bench's mediation (workload.mediation_flow) and
  two outbound REST deliveries (EU and US) to the sink of `http_load e2e`, at a fixed rate below
  saturation; request→delivery p50/p99/max.

A run fails loudly (naming the scenario and the end of the subject's log) when any request is
not answered 202, when the topic did not get every accepted event, or when an accepted event
never reaches the sink.
"""

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.context import BenchContext
from bench.measure import ROOT, Run, ScenarioResult, Subject, python
from bench.workload import PARTITIONS, QUIET, mediation_flow
from bus.flows.model import default_dlq
from bus.processes import free_ports

SECRET = "bench-crm-webhook-secret"  # noqa: S105 -- a bench-only secret, like the demo's
WEBHOOK_PATH = "/hooks/crm/customers"
LISTEN_WITHIN_S = 90.0  # subject start (bus imports a lot) until its port accepts
LOAD_WITHIN_S = 300.0


@dataclass(frozen=True)
class Sizes:
    requests: int  # per measured ingest run
    warm_up: int
    concurrency: int
    e2e_rate: float  # events/s
    e2e_seconds: float  # per measured e2e run
    e2e_warm_up_seconds: float


FULL = Sizes(10_000, 2_000, 64, 1_000.0, 20.0, 5.0)
QUICK = Sizes(1_500, 500, 32, 200.0, 3.0, 2.0)


class ScenarioError(RuntimeError):
    """A scenario's run went wrong: the message names it and ends with the subject's log."""


def sizes(ctx: BenchContext) -> Sizes:
    return QUICK if ctx.quick else FULL


def inbound_block(topic: str) -> str:
    """customers.yaml's webhook endpoint (the demo's CRM webhook), storing into `topic`."""
    return f"""
inbound:
  - name: crm-customer-webhook
    rest:
      path: {WEBHOOK_PATH}
      auth: {{hmac: {{preset: github, secrets: ["{SECRET}"]}}}}
      max_body: 64KiB
    event:
      type: com.acme.crm.CustomerChanged
      key: body.customer.id
      subject: '"customers/" + body.customer.id'
      map:
        customerId: body.customer.id
        change: body.event.replace("customer.", "").upperAscii()
        email: body.customer.email
        name: body.customer.first_name + " " + body.customer.last_name
        phone: body.customer.phone
        address: >-
          has(body.customer.address) ? {{"line1": body.customer.address.line1,
          "city": body.customer.address.city, "postalCode": body.customer.address.postal_code,
          "country": body.customer.address.country}} : null
        tags: body.customer.tags
        changedAt: body.occurred_at
    topic: {topic}
"""


def outbound_block(name: str, source: str, sink_port: int) -> str:
    return f"""
  - name: {name}
    from: {source}
    rest:
      method: PUT
      url: "http://127.0.0.1:{sink_port}/customers/{{event.customerId}}"
    map:
      legalName: event.legalName
      email: event.email
      salesRegion: event.salesRegion
    retry: {{attempts: 5, backoff: {{initial: 100ms, max: 1s}}}}
    timeout: 5s
    max_in_flight: 64
"""


def bus_subject(ctx: BenchContext, label: str, flow_text: str) -> Subject:
    flow = ctx.work_dir / f"{ctx.topic(label)}.yaml"
    flow.write_text(flow_text)
    env = {
        "BUS_SCHEMAS_DIR": str(ROOT / "schemas"),
        "KAFKA_BOOTSTRAP_SERVERS": ctx.bootstrap,
        "BUS_HOME": str(ctx.work_dir / "bus-home"),
    }
    return Subject([python(), "-m", "bus", "run", str(flow)], log=ctx.log(label), env=env)


async def http_load(ctx: BenchContext, scenario: str, *arguments: str) -> dict[str, Any]:
    """Run bench.http_load (its own process) and return its JSON line."""
    log = ctx.log(f"{scenario}-load")
    with log.open("wb") as errors:
        process = await asyncio.create_subprocess_exec(
            python(),
            "-m",
            "bench.http_load",
            *arguments,
            stdout=asyncio.subprocess.PIPE,
            stderr=errors,
            cwd=ROOT,
        )
        try:
            async with asyncio.timeout(LOAD_WITHIN_S):
                stdout, _ = await process.communicate()
        except TimeoutError:
            process.kill()
            await process.wait()
            raise ScenarioError(f"{scenario}: http_load took over {LOAD_WITHIN_S:.0f} s") from None
    if process.returncode != 0:
        raise ScenarioError(f"{scenario}: http_load exited {process.returncode}:\n{_tail(log)}")
    result: dict[str, Any] = json.loads(stdout.decode().strip().splitlines()[-1])
    return result


async def wait_listening(subject: Subject, port: int, scenario: str) -> None:
    """Until the subject's port accepts connections (it exits: fail with its log)."""
    deadline = time.monotonic() + LISTEN_WITHIN_S
    while time.monotonic() < deadline:
        _check(subject, scenario)
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise ScenarioError(
        f"{scenario}: port {port} not listening after {LISTEN_WITHIN_S:.0f} s:\n"
        f"{subject.log_tail()}"
    )


async def stored(ctx: BenchContext, topic: str) -> int:
    """How many records `topic` holds (the sum of its partitions' end offsets)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=ctx.bootstrap)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        return sum((await consumer.end_offsets(partitions)).values())
    finally:
        await consumer.stop()


async def ingest(
    ctx: BenchContext,
    name: str,
    *,
    description: str,
    subject: Subject,
    url: str,
    port: int,
    topic: str,
) -> ScenarioResult:
    """Warm-up and measured fixed-concurrency runs against a started ingest subject."""
    size = sizes(ctx)
    runs: list[Run] = []
    accepted = 0
    body_bytes = 0
    async with subject:
        await wait_listening(subject, port, name)
        for requests in [size.warm_up] + [size.requests] * ctx.repeat:
            before = subject.cpu_seconds()
            load = await http_load(
                ctx,
                name,
                "fixed",
                f"--url={url}",
                f"--concurrency={size.concurrency}",
                f"--requests={requests}",
                f"--hmac-secret={SECRET}",
            )
            cpu = subject.cpu_seconds() - before
            _check(subject, name)
            if load["status"] != {"202": requests}:
                raise ScenarioError(
                    f"{name}: answers {load['status']} {load['errors']}, expected "
                    f"{requests} x 202:\n{subject.log_tail()}"
                )
            accepted += requests
            body_bytes = load["body_bytes"]
            runs.append(
                Run(
                    rate=load["rate"],
                    cpu_s=round(cpu, 3),
                    peak_rss_mb=round(subject.peak_rss_mb(), 1),
                    messages=requests,
                    p50_ms=load["p50_ms"],
                    p99_ms=load["p99_ms"],
                    max_ms=load["max_ms"],
                    extra={"concurrency": size.concurrency, "seconds": load["seconds"]},
                )
            )
        paths = subject.fast_paths()
        code = await subject.stop()
    if code != 0:
        raise ScenarioError(
            f"{name}: the subject exited {code} after SIGTERM:\n{subject.log_tail()}"
        )
    if (count := await stored(ctx, topic)) < accepted:
        raise ScenarioError(f"{name}: {accepted} answered 202 but {topic} holds {count} records")
    return ScenarioResult(
        name=name,
        description=description,
        runs=runs[1:],  # the first was the warm-up
        message_bytes=body_bytes,
        partitions=PARTITIONS,
        fast_paths=paths,
        unit="req/s",
        extra={
            "concurrency": size.concurrency,
            "requests": size.requests,
            "warm_up_runs": 1,
            "message": "the HTTP body (JSON CRM webhook); bus stores it as ~0.3 KB Avro",
        },
    )


async def raw_ingest(ctx: BenchContext) -> ScenarioResult:
    topic = ctx.topic("raw-ingest")
    await ctx.create_topics(topic)
    (port,) = free_ports(1)
    subject = Subject(
        [
            *(python(), "-m", "bench.subjects.raw_ingest", "--bootstrap", ctx.bootstrap),
            *("--topic", topic, "--port", str(port)),
        ],
        log=ctx.log("raw-ingest"),
    )
    return await ingest(
        ctx,
        "raw-ingest",
        description="minimal aiohttp handler: POST → send_and_wait (acks=all, idempotent) → 202",
        subject=subject,
        url=f"http://127.0.0.1:{port}/events",
        port=port,
        topic=topic,
    )


async def bus_ingest(ctx: BenchContext) -> ScenarioResult:
    topic = ctx.topic("bus-ingest")
    await ctx.create_topics(topic)
    (port,) = free_ports(1)
    flow = QUIET + f"\nhttp: {{port: {port}}}\n" + inbound_block(topic)
    return await ingest(
        ctx,
        "bus-ingest",
        description="bus REST inbound: HMAC signature, JSON, mapping to CustomerChanged, "
        "validation, Avro, acks=all → 202",
        subject=bus_subject(ctx, "bus-ingest", flow),
        url=f"http://127.0.0.1:{port}{WEBHOOK_PATH}",
        port=port,
        topic=topic,
    )


async def e2e_latency(ctx: BenchContext) -> ScenarioResult:
    name = "e2e-latency"
    size = sizes(ctx)
    source, eu, us = ctx.topic("e2e-in"), ctx.topic("e2e-out-eu"), ctx.topic("e2e-out-us")
    mediation, out_eu, out_us = ctx.topic("e2e"), ctx.topic("e2e-sink-eu"), ctx.topic("e2e-sink-us")
    await ctx.create_topics(source, eu, us, *map(default_dlq, (mediation, out_eu, out_us)))
    port, sink_port = free_ports(2)
    flow = (
        mediation_flow(name=mediation, source=source, eu_topic=eu, us_topic=us)
        + f"\nhttp: {{port: {port}}}\n"
        + inbound_block(source)
        + "\noutbound:"
        + outbound_block(out_eu, eu, sink_port)
        + outbound_block(out_us, us, sink_port)
    )
    subject = bus_subject(ctx, name, flow)
    url = f"http://127.0.0.1:{port}{WEBHOOK_PATH}"
    runs: list[Run] = []
    async with subject:
        await wait_listening(subject, port, name)
        for seconds in [size.e2e_warm_up_seconds] + [size.e2e_seconds] * ctx.repeat:
            before = subject.cpu_seconds()
            load = await http_load(
                ctx,
                name,
                "e2e",
                f"--url={url}",
                f"--rate={size.e2e_rate:g}",
                f"--seconds={seconds:g}",
                f"--sink-port={sink_port}",
                f"--hmac-secret={SECRET}",
                # Past saturation deliveries lag behind: wait for them rather than call them lost.
                f"--drain-seconds={max(15.0, 2 * seconds):g}",
            )
            cpu = subject.cpu_seconds() - before
            _check(subject, name)
            if load["accepted"] != load["sent"] or load["missing"]:
                raise ScenarioError(
                    f"{name}: sent {load['sent']}, accepted {load['accepted']} "
                    f"({load['status']} {load['errors']}), {load['missing']} never delivered:\n"
                    f"{subject.log_tail()}"
                )
            runs.append(
                Run(
                    rate=load["delivered_rate"],
                    cpu_s=round(cpu, 3),
                    peak_rss_mb=round(subject.peak_rss_mb(), 1),
                    messages=load["delivered"],
                    p50_ms=load["p50_ms"],
                    p99_ms=load["p99_ms"],
                    max_ms=load["max_ms"],
                    extra={
                        key: load[key]
                        for key in (
                            "request",
                            "duplicates",
                            "strays",
                            "sender_late_max_ms",
                            "offered_rate",
                            "body_bytes",
                        )
                    },
                )
            )
        paths = subject.fast_paths()
        code = await subject.stop()
    if code != 0:
        raise ScenarioError(
            f"{name}: the subject exited {code} after SIGTERM:\n{subject.log_tail()}"
        )
    return ScenarioResult(
        name=name,
        description=(
            "bus run: REST inbound → mediation → outbound REST (PUT) to a local sink, at "
            f"{size.e2e_rate:g} events/s; latency from request to delivery"
        ),
        runs=runs[1:],
        message_bytes=runs[-1].extra["body_bytes"],
        partitions=PARTITIONS,
        fast_paths=paths,
        unit="events/s",
        extra={
            "target_rate": size.e2e_rate,
            "seconds_per_run": size.e2e_seconds,
            "warm_up_runs": 1,
        },
    )


def _check(subject: Subject, scenario: str) -> None:
    if not subject.alive():
        code = subject.process.returncode if subject.process else None
        raise ScenarioError(f"{scenario}: the subject exited ({code}):\n{subject.log_tail()}")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
