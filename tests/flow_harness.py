"""Running flow files against the test broker inside the test process, and reading topics."""

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord

from bus.events.catalog import SchemaCatalog
from bus.events.codec import EventCodec
from bus.events.event import Event
from bus.flows.loading import load_flow_files
from bus.flows.runtime import run_flows
from bus.flows.validation import validate_flows

ROOT = Path(__file__).resolve().parents[1]
CATALOG = SchemaCatalog.load(ROOT / "schemas")


def customer_webhook(name: str, topic: str) -> str:
    """A flow file's `inbound:` section: a REST webhook at /hooks/customers whose JSON body
    (id, email, name, address, at) becomes a CustomerChanged event on `topic`."""
    return f"""
inbound:
  - name: {name}
    rest: {{path: /hooks/customers}}
    event:
      type: com.acme.crm.CustomerChanged
      key: body.id
      map:
        customerId: body.id
        change: '"UPDATED"'
        email: body.email
        name: body.name
        address: body.address
        changedAt: body.at
    topic: {topic}
"""


def write_flow(folder: Path, text: str) -> Path:
    path = folder / "flow.yaml"
    path.write_text(text)
    return path


@contextlib.asynccontextmanager
async def running_flows(
    path: Path, bootstrap_servers: str, shutdown_grace: float = 30.0
) -> AsyncIterator[asyncio.Event]:
    """The flows of `path` run while inside; leaving stops them gracefully and waits."""
    flows = load_flow_files([path])
    assert validate_flows(flows, CATALOG) == []
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_flows(
            flows,
            CATALOG,
            bootstrap_servers=bootstrap_servers,
            shutdown_grace=shutdown_grace,
            stop=stop,
        )
    )
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, shutdown_grace + 30)


async def read_records(
    bootstrap_servers: str, topic: str, count: int, within: float = 60.0
) -> list[ConsumerRecord]:
    """The first `count` records of a topic (all partitions), as a read_committed reader sees
    them; fails after `within` seconds saying how many came."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap_servers,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await consumer.start()
    records: list[ConsumerRecord] = []
    try:
        async with asyncio.timeout(within):
            while len(records) < count:
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    records.extend(batch)
    except TimeoutError as timeout:
        raise AssertionError(f"{topic}: {len(records)} of {count} records came") from timeout
    finally:
        await consumer.stop()
    return records


async def read_all(bootstrap_servers: str, topic: str, quiet: float = 3.0) -> list[ConsumerRecord]:
    """Everything in a topic, read until nothing more comes for `quiet` seconds."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap_servers,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await consumer.start()
    records: list[ConsumerRecord] = []
    try:
        while batches := await consumer.getmany(timeout_ms=int(quiet * 1000)):
            for batch in batches.values():
                records.extend(batch)
    finally:
        await consumer.stop()
    return records


async def decode(records: list[ConsumerRecord]) -> list[Event]:
    codec = EventCodec(CATALOG)
    return [
        (await codec.decode(record.key, record.value, record.headers)).event for record in records
    ]


def headers_of(record: ConsumerRecord) -> Mapping[str, Any]:
    return {name: value.decode() for name, value in record.headers}


def _start_bus_run(flow: Path, log: Path, environ: Mapping[str, str]) -> "subprocess.Popen[bytes]":
    return subprocess.Popen(
        [sys.executable, "-m", "bus", "run", str(flow), "--shutdown-grace", "10"],
        env={**os.environ, "BUS_SCHEMAS_DIR": str(ROOT / "schemas"), **environ},
        cwd="/",  # files a flow names are found next to it, not in the current directory
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )


@contextlib.asynccontextmanager
async def bus_run_process(
    flow: Path, log: Path, *, secrets: Sequence[str] = (), **environ: str
) -> AsyncIterator[None]:
    """`bus run FLOW` in a process of its own while inside; leaving sends SIGTERM and checks
    that it stopped cleanly, having committed its work, with none of `secrets` in its log."""
    process = _start_bus_run(flow, log, environ)
    try:
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(process.wait, 60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        text = await asyncio.to_thread(log.read_text)
        assert code == 0, text
        assert "stopped: in-flight work finished and committed" in text, text
        for secret in secrets:
            assert secret not in text
