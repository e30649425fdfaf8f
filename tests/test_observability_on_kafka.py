"""What an SRE sees of a running `bus run`, end to end on the real broker: the admin API's
health, readiness, flows and metrics after known traffic, and `bus trace` following one event
through inbound REST → mediation → outbound REST, into the DLQ, through its replay (the exact
command `bus trace` prints) and on to its delivery.

Everything is a real process or a real socket: `bus run`, `bus trace` and `bus dlq replay` as
the commands an SRE types, a REST system that refuses one customer until told otherwise.
"""

import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from bus.local_kafka import LocalKafka
from tests.conftest import free_ports
from tests.flow_harness import bus_run_process, customer_webhook, write_flow

ADMIN_KEY = "admin-key-5be1c7d2"
ADMIN_HEADERS = {"X-Admin-Key": ADMIN_KEY}
BUS = Path(sys.executable).with_name("bus")
ADDRESS = {"line1": "1 Main St", "city": "Lyon", "postalCode": "69001", "country": "FR"}


class Erp:
    """An external REST system that refuses (400) the customers in `refused`."""

    def __init__(self) -> None:
        self.refused: set[str] = set()
        self.accepted: list[str] = []
        self.traceparents: list[str] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def customer(self, request: web.Request) -> web.Response:
        customer = request.match_info["id"]
        self.traceparents.append(request.headers.get("traceparent", ""))
        if customer in self.refused:
            return web.json_response({"error": "customer is blocked"}, status=400)
        self.accepted.append(customer)
        return web.json_response({"account": f"acct-{customer}"}, status=200)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_put("/customers/{id}", self.customer)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def erp() -> AsyncIterator[Erp]:
    erp = Erp()
    await erp.start()
    yield erp
    await erp.stop()


class Setup:
    def __init__(self, folder: Path, erp: Erp) -> None:
        run = uuid.uuid4().hex[:8]
        self.inbound, self.mediation, self.outbound = (
            f"sre-{role}-{run}" for role in ("hooks", "upserts", "erp")
        )
        self.http_port, self.admin_port = free_ports(2)
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        # The default journey topic: `bus dlq replay` as `bus trace` prints it records there.
        self.path = write_flow(
            folder,
            f"""
observability:
  tracing: {{exporter: none}}
  logs: {{format: json}}
  admin:
    port: {self.admin_port}
    auth: {{api_key: {{header: X-Admin-Key, keys: ["${{ADMIN_KEY}}"]}}}}
http: {{port: {self.http_port}}}
{customer_webhook(self.inbound, f"sre.changed.{run}")}
mediation:
  - name: {self.mediation}
    from: sre.changed.{run}
    to: sre.upserts.{run}
    steps:
      - transform:
          to: com.acme.erp.CustomerUpsertRequest
          map:
            customerId: event.customerId
            legalName: event.name
            email: event.email
            billingAddress: event.address
            salesRegion: '"EU"'
            requestedAt: attributes.time
outbound:
  - name: {self.outbound}
    from: sre.upserts.{run}
    rest:
      method: PUT
      url: "{erp.url}/customers/{{event.customerId}}"
    map: {{email: event.email, name: event.legalName}}
    retry: {{attempts: 1}}
""",
        )


async def admin_get(setup: Setup, path: str, *, ok: bool = True) -> Any:
    async with (
        aiohttp.ClientSession() as session,
        session.get(setup.admin + path, headers=ADMIN_HEADERS) as response,
    ):
        if ok:
            assert response.status == 200, await response.text()
        if response.content_type == "application/json" or path.startswith(("/flows", "/dlq")):
            return response.status, await response.json()
        return response.status, await response.text()


async def until(check: Any, within: float = 60.0, every: float = 0.2) -> Any:
    """Poll `check()` (async) until it returns something true; return it."""
    async with asyncio.timeout(within):
        while not (found := await check()):  # noqa: ASYNC110 -- other processes: no event to await
            await asyncio.sleep(every)
    return found


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels` (0 when none)."""
    return sum(
        found
        for (sample, sample_labels), found in samples(text).items()
        if sample == name and set(labels.items()) <= sample_labels
    )


def bus_command(*arguments: str, bootstrap: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BUS), *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "ADMIN_KEY": ADMIN_KEY},
        check=False,
    )


async def post_customer(setup: Setup, customer: str) -> str:
    body = {"id": customer, "email": f"{customer}@example.com", "name": customer.title()}
    body |= {"at": "2026-11-24T08:00:00Z", "address": ADDRESS}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"http://127.0.0.1:{setup.http_port}/hooks/customers", json=body) as response,
    ):
        assert response.status == 202, await response.text()
        answer: dict[str, str] = await response.json()
        return answer["id"]


async def trace_lines(event_id: str, bootstrap: str, setup: Setup, expected: str) -> str:
    """`bus trace EVENT_ID` once its output says `expected` (journey records are batched)."""

    last: list[subprocess.CompletedProcess[str]] = []

    async def traced() -> str | None:
        done = await asyncio.to_thread(
            bus_command, "trace", event_id, str(setup.path), bootstrap=bootstrap
        )
        last[:] = [done]
        return done.stdout if done.returncode == 0 and expected in done.stdout else None

    try:
        found: str = await until(traced, within=60.0, every=0.5)
    except TimeoutError:
        raise AssertionError(f"bus trace never said {expected!r}: {last}") from None
    return found


async def test_an_sre_follows_an_event_into_the_dlq_and_out_again(
    kafka_broker: LocalKafka, erp: Erp, tmp_path: Path
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    setup = Setup(tmp_path, erp)
    erp.refused.add("c-blocked")
    log = tmp_path / "bus.log"
    async with bus_run_process(
        setup.path,
        log,
        secrets=(ADMIN_KEY,),
        ADMIN_KEY=ADMIN_KEY,
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
    ):

        async def ready() -> bool:
            try:
                status, _ = await admin_get(setup, "/readyz", ok=False)
            except aiohttp.ClientConnectionError:
                return False
            return bool(status == 200)

        await until(ready, within=90.0)
        _, before = await admin_get(setup, "/metrics")

        # Known traffic: three customers, one of which the ERP refuses.
        ids = {name: await post_customer(setup, name) for name in ("c-1", "c-2", "c-blocked")}

        async def dead_lettered() -> Any:
            _, letters = await admin_get(setup, f"/dlq/{setup.outbound}")
            return letters["letters"] if letters["total"] == 1 else None

        [letter] = await until(dead_lettered)
        await until(lambda: _true(sorted(erp.accepted) == ["c-1", "c-2"]))

        # Metrics moved by exactly the known traffic.
        _, after = await admin_get(setup, "/metrics")
        for name, labels, expected in (
            ("bus_inbound_requests_total", {"method": "POST", "status": "202"}, 3),
            ("bus_events_in_total", {"flow": setup.inbound}, 3),
            ("bus_events_in_total", {"flow": setup.mediation}, 3),
            ("bus_events_out_total", {"flow": setup.mediation}, 3),
            ("bus_events_in_total", {"flow": setup.outbound}, 3),
            ("bus_events_dead_lettered_total", {"flow": setup.outbound, "step": "call"}, 1),
            ("bus_outbound_calls_total", {"flow": setup.outbound, "status": "200"}, 2),
            ("bus_outbound_calls_total", {"flow": setup.outbound, "status": "400"}, 1),
            ("bus_end_to_end_latency_seconds_count", {"flow": setup.outbound}, 2),
        ):
            moved = value(after, name, **labels) - value(before, name, **labels)
            assert moved == expected, (name, labels, moved)

        # /flows: every item running, with its counters.
        _, flows = await admin_get(setup, "/flows")
        items = {item["name"]: item for item in flows["items"]}
        assert {items[name]["state"] for name in (setup.mediation, setup.outbound)} == {"running"}
        assert items[setup.outbound]["counters"]["dead_lettered"] == 1
        assert items[setup.outbound]["dead_letter_topic"] == f"{setup.outbound}.dlq"

        # `bus trace` of the refused event: every hop in order, and how to replay it.
        text = await trace_lines(ids["c-blocked"], bootstrap, setup, "dead-lettered")
        order = [
            text.index(setup.inbound),
            text.index(setup.mediation),
            text.index(setup.outbound),
        ]
        assert order == sorted(order), text
        assert "accepted" in text, text
        assert "processed" in text, text
        replay_command = re.search(r"bus dlq replay \S+ --partition \d+ --offset \d+", text)
        assert replay_command is not None, text
        assert replay_command.group(0) == (
            f"bus dlq replay {setup.outbound} --partition {letter['partition']} "
            f"--offset {letter['offset']}"
        )

        # The SRE fixes the cause, and runs the command `bus trace` printed.
        erp.refused.clear()
        replayed = await asyncio.to_thread(
            bus_command, *shlex.split(replay_command.group(0))[1:], bootstrap=bootstrap
        )
        assert replayed.returncode == 0, replayed.stderr
        assert replayed.stdout.startswith("replayed "), replayed.stdout
        await until(lambda: _true("c-blocked" in erp.accepted))

        # The journey now goes on: the replay, then the delivery.
        text = await trace_lines(ids["c-blocked"], bootstrap, setup, "delivered")
        assert text.index("dead-lettered") < text.index("replayed") < text.index("delivered")
        as_json = await asyncio.to_thread(
            bus_command, "trace", ids["c-blocked"], "--json", str(setup.path), bootstrap=bootstrap
        )
        assert as_json.returncode == 0, as_json.stderr
        journey = json.loads(as_json.stdout)
        assert journey["root_id"] == ids["c-blocked"]
        outcomes = _outcomes(journey["hops"])
        assert outcomes[:3] == ["accepted", "processed", "dead-lettered"], outcomes
        assert outcomes[3:] == ["replayed", "delivered"], outcomes
        assert journey["summary"]["dead_lettered"] == 1
        # A customer delivered at once: three hops, no dead letter.
        delivered = await trace_lines(ids["c-1"], bootstrap, setup, "delivered")
        assert "3 hop(s)" in delivered, delivered
        assert "0 dead-lettered" in delivered, delivered
        assert "bus dlq replay" not in delivered, delivered
    # The log of the process is JSON lines, and the admin key is in none of them (checked by
    # bus_run_process), while the hop fields are there.
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert any(record.get("flow") == setup.outbound for record in records)


def _outcomes(hops: list[dict[str, Any]]) -> list[str]:
    """The outcomes of a journey's hops, parents before children, in time order."""
    ordered: list[dict[str, Any]] = []

    def walk(level: list[dict[str, Any]]) -> None:
        for hop in level:
            ordered.append(hop)
            walk(hop.get("children", []))

    walk(hops)
    return [hop["outcome"] for hop in sorted(ordered, key=lambda hop: hop["started"])]


async def _true(condition: bool) -> bool:
    return condition
