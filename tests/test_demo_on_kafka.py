"""The `make run` demo end to end, on a broker of its own (the demo's topic names are fixed, so
it must not share the session broker with other tests): the launcher starts the demo systems and
`bus run examples/flows/*.yaml`, drives a fixed load with every poison kind, drains and stops.

The checks recompute everything from the demo systems' raw ledgers, the inputs the driver
recorded and the dead-letter topics read back from Kafka, never from the summary's numbers
(which are then compared with the recomputation).
"""

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import psutil
import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient
from demo.systems.gateway import CURRENCIES, DECLINE_ABOVE

from bus.flows.processor import output_event_id
from bus.kafka_topics import topic_partitions
from bus.local_kafka import LocalKafka
from tests.conftest import free_ports, start_broker

ROOT = Path(__file__).resolve().parents[1]
EVENTS = 80  # inputs 8, 16, 24, 32 and 50 are poison: every kind, the blocked customer twice
# Runs stopped by a signal get a cap too, so that a test whose signal never comes still ends.
EVENTS_CAP = "3000"
# Each test starts a broker (up to 90 s on a loaded machine) and runs the demo.
TIMEOUT = 240


@pytest.fixture
def demo_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    broker = asyncio.run(start_broker(tmp_path_factory, "demo-kafka"))
    try:
        yield broker
    finally:
        broker.stop()


def demo_command(bootstrap: str, summary: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "demo",
        "--kafka",
        bootstrap,
        "--free-ports",
        "--view",
        "plain",
        "--summary-json",
        str(summary),
        "--drain-timeout",
        "30",
        *extra,
    ]


def demo_env(home: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "examples"), "BUS_HOME": str(home)}


@pytest.mark.timeout(TIMEOUT)
async def test_every_event_is_delivered_as_often_as_expected_and_poison_is_dead_lettered(
    demo_broker: LocalKafka, tmp_path: Path
) -> None:
    summary_file = tmp_path / "summary.json"
    command = demo_command(
        demo_broker.bootstrap_servers, summary_file, "--events", str(EVENTS), "--rate", "12"
    )
    done = await asyncio.to_thread(
        subprocess.run,
        [*command, "--seed", "8"],
        env=demo_env(tmp_path / "home"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "lost: 0" in done.stdout, output
    record = json.loads(summary_file.read_text())
    run = record["run_id"]
    inputs = record["inputs"]
    crm, erp, gateway = (record["ledgers"][name] for name in ("crm", "erp", "gateway"))
    streams = {stream["name"]: stream for stream in record["summary"]["streams"]}

    # The driver's inputs: all answered, the CRM's accepted, the forgery refused at the door.
    assert len(inputs) == EVENTS
    kinds = Counter(item["kind"] for item in inputs)
    assert kinds["blocked-customer"] == 2
    assert kinds["bad-currency-order"] == kinds["raw-record"] == kinds["forged-webhook"] == 1
    for item in inputs:
        assert run in item["id"]
        if item["kind"] == "forged-webhook":
            assert item["status"] == 401, item
        elif item["kind"] == "raw-record":
            assert item["detail"].startswith("orders.placed.v1["), item
        else:
            assert item["status"] == 202, item
            assert item["event_id"], item

    # The CRM recorded exactly the changes and orders the driver made, with the bus's ids.
    sent_changes = Counter(
        (item["id"], item["event_id"]) for item in inputs if item["kind"].endswith("customer")
    )
    crm_changes = Counter(
        (customer_id, change["event_id"])
        for customer_id, customer in crm["customers"].items()
        for change in customer["changes"]
    )
    assert crm_changes == sent_changes
    sent_orders = {
        item["id"]: item["event_id"] for item in inputs if item["kind"].endswith("order")
    }
    assert {oid: order["event_id"] for oid, order in crm["orders"].items()} == sent_orders
    assert "forged" not in json.dumps(crm)

    # Customer changes: each one that reaches the ERP is one upsert under the id of the
    # request customer-upserts made of the CRM's event, none lost; blocked ones rejected once
    # each; repeated keys (the ERP does not dedupe) counted.
    upsert_duplicates = rejected = 0
    successful_keys: dict[str, set[str]] = {}
    for customer_id, customer in crm["customers"].items():
        reaching = {
            output_event_id("customer-upserts", change["event_id"], 0): change
            for change in customer["changes"]
            if change["status"] == 202 and change["action"] != "deleted" and change["country"]
        }
        blocked = {k for k, c in reaching.items() if c["email"].endswith("@blocked.example")}
        calls = erp["upserts"].get(customer_id, [])
        taken = [call["idempotency_key"] for call in calls if call["outcome"] != "REJECTED"]
        refused = [call["idempotency_key"] for call in calls if call["outcome"] == "REJECTED"]
        assert set(taken) == set(reaching) - blocked, (customer_id, customer, calls)
        assert sorted(refused) == sorted(blocked), (customer_id, calls)
        upsert_duplicates += len(taken) - len(set(taken))
        rejected += len(refused)
        successful_keys[customer_id] = set(taken)
    assert set(erp["upserts"]) <= set(crm["customers"])
    assert rejected == 2
    upserts = streams["customer upserts"]
    assert upserts["duplicates"] == upsert_duplicates
    assert upserts["delivered"] == upserts["expected"] == sum(map(len, successful_keys.values()))

    # Each successful upsert: one distinct account link at the CRM.
    link_duplicates = 0
    for customer_id, keys in successful_keys.items():
        links = crm["account_links"].get(customer_id, [])
        assert len({link["idempotency_key"] for link in links}) == len(keys), customer_id
        link_duplicates += len(links) - len({link["idempotency_key"] for link in links})
    assert set(crm["account_links"]) <= {c for c, keys in successful_keys.items() if keys}
    assert streams["account links"]["duplicates"] == link_duplicates

    # Orders: one payment each (declined above 900), XXX none; then one invoice per captured
    # payment, one payment failure per declined one; replays answered by the gateway counted.
    captured = declined = replays = invoice_repeats = 0
    for order_id, order in crm["orders"].items():
        payment = gateway["payments"].get(order_id)
        if order["currency"] not in CURRENCIES:
            assert payment is None, order_id
            continue
        assert payment is not None, order_id
        replays += payment["replays"]
        failures = crm["payment_failures"].get(order_id, [])
        invoice = erp["invoices"].get(order_id)
        if Decimal(order["total"]) > DECLINE_ABOVE:
            assert payment["status"] == "declined", (order_id, order, payment)
            assert invoice is None
            assert len({failure["idempotency_key"] for failure in failures}) == 1, order_id
            declined += 1
        else:
            assert payment["status"] == "captured", (order_id, order, payment)
            assert invoice is not None, order_id
            assert len(set(invoice["idempotency_keys"])) == 1, invoice
            assert failures == []
            invoice_repeats += invoice["calls"] - 1
            captured += 1
    assert set(gateway["payments"]) <= set(crm["orders"])
    assert captured > 0
    assert declined > 0
    assert streams["payments"]["deduplicated"] == replays
    assert streams["invoices"]["deduplicated"] == invoice_repeats
    assert streams["invoices"]["delivered"] == captured
    assert streams["payment failures"]["delivered"] == declined

    # The poison in the right dead-letter topics, for the right reasons; nothing else there.
    letters = await dead_letters(demo_broker.bootstrap_servers)
    raw_keys = sorted(item["id"] for item in inputs if item["kind"] == "raw-record")
    upsert_letters = letters.pop("erp-upsert-eu.dlq", []) + letters.pop("erp-upsert-world.dlq", [])
    assert len(upsert_letters) == 2
    for letter in upsert_letters:
        assert reason(letter, "step") == "call"
        assert "CustomerRejected" in reason(letter, "error")
        assert "blocked.example" in reason(letter, "error")
    [currency_letter] = letters.pop("payment-gateway.dlq")
    assert reason(currency_letter, "step") == "call"
    assert "422" in reason(currency_letter, "error")
    for topic in ("payment-requests.dlq", "order-lines.dlq"):
        raw_letters = letters.pop(topic)
        assert sorted(letter.key.decode() for letter in raw_letters) == raw_keys
        assert all(reason(letter, "step") == "decode" for letter in raw_letters)
    assert {topic: records for topic, records in letters.items() if records} == {}

    # The summary agrees, and everything the launcher started is gone.
    assert record["summary"]["lost"] == 0
    assert record["summary"]["drained"] is True
    assert record["summary"]["refused"] == {"forged-webhook 401": 1}
    assert all(stream["delivered"] == stream["expected"] for stream in streams.values())
    assert set(record["pids"]) == {"systems", "bus"}  # the broker was the test's
    assert_gone(record["pids"].values())
    assert "stopped: in-flight work finished and committed" in record["bus_stopped"]


@pytest.mark.timeout(TIMEOUT)
def test_ctrl_c_stops_the_load_drains_and_accounts_for_everything(
    demo_broker: LocalKafka, tmp_path: Path
) -> None:
    summary_file = tmp_path / "summary.json"
    log = tmp_path / "demo.out"
    command = demo_command(
        demo_broker.bootstrap_servers, summary_file, "--rate", "10", "--events", EVENTS_CAP
    )
    with running_demo(command, demo_env(tmp_path / "home"), log) as demo:
        admin = admin_url(log, demo, within=45)
        until_delivered(admin, at_least=10, within=30)
        demo.send_signal(signal.SIGINT)
        code = demo.wait(60)
    text = log.read_text()
    assert code == 0, text
    assert "drained: every expected delivery is made or in a DLQ" in text, text
    assert "lost: 0" in text, text
    record = json.loads(summary_file.read_text())
    summary = record["summary"]
    assert summary["lost"] == 0
    assert summary["pending"] == 0
    assert summary["drained"] is True
    assert sum(stream["delivered"] for stream in summary["streams"]) >= 10
    # From the ledgers: every accepted order in a known currency was paid, once.
    ledgers = record["ledgers"]
    orders = ledgers["crm"]["orders"]
    paid = {o for o, order in orders.items() if order["currency"] in CURRENCIES}
    assert all(orders[o]["status"] == 202 for o in paid)
    assert set(ledgers["gateway"]["payments"]) == paid
    assert_gone(record["pids"].values())


@pytest.mark.timeout(TIMEOUT)
def test_the_readme_tour_fixes_the_cause_and_replays_the_dead_letters(
    demo_broker: LocalKafka, tmp_path: Path
) -> None:
    """The README's tour: the ERP refuses a customer (dead letter); its team takes the domain
    off the deny list; `bus dlq replay ... --all` sends the letters back and they get through."""
    summary_file = tmp_path / "summary.json"
    log = tmp_path / "demo.out"
    [erp_port] = free_ports(1)
    bootstrap = demo_broker.bootstrap_servers
    command = demo_command(
        bootstrap, summary_file, "--rate", "20", "--events", EVENTS_CAP, "--erp-port", str(erp_port)
    )
    with running_demo(command, demo_env(tmp_path / "home"), log) as demo:
        admin = admin_url(log, demo, within=45)
        until_dead_lettered(admin, ("erp-upsert-eu", "erp-upsert-world"), within=30)
        fixed = urllib.request.Request(
            f"http://127.0.0.1:{erp_port}/_demo/deny-list/blocked.example", method="DELETE"
        )
        with urllib.request.urlopen(fixed, timeout=5) as answer:  # noqa: S310
            assert json.load(answer) == {"deny_list": []}
        for flow in ("erp-upsert-eu", "erp-upsert-world"):
            replayed = subprocess.run(
                [sys.executable, "-m", "bus", "dlq", "replay", flow, "--all"],
                env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap},
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert replayed.returncode == 0, replayed.stderr
        demo.send_signal(signal.SIGINT)
        code = demo.wait(60)
    text = log.read_text()
    assert code == 0, text
    record = json.loads(summary_file.read_text())
    assert record["summary"]["lost"] == 0, text
    [upserts] = [s for s in record["summary"]["streams"] if s["name"] == "customer upserts"]
    assert upserts["replayed"] >= 1, text
    # The ERP's own record: a customer it refused, then took under the same idempotency key.
    calls = [c for c in record["ledgers"]["erp"]["upserts"].values()]
    assert any(
        {call["idempotency_key"] for call in c if call["outcome"] == "REJECTED"}
        & {call["idempotency_key"] for call in c if call["outcome"] != "REJECTED"}
        for c in calls
    )
    assert_gone(record["pids"].values())


def until_dead_lettered(admin: str, items: tuple[str, ...], within: float) -> None:
    """Until one of `items` has dead-lettered a record."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{admin}/flows", timeout=5) as response:  # noqa: S310 -- http://127.0.0.1 only
            found = json.load(response)["items"]
        if any(i["counters"]["dead_lettered"] for i in found if i["name"] in items):
            return
        time.sleep(0.5)
    raise AssertionError(f"none of {items} dead-lettered a record within {within} s")


@contextmanager
def running_demo(
    command: list[str], env: dict[str, str], log: Path
) -> Iterator["subprocess.Popen[bytes]"]:
    """The launcher, its output in `log`, running until the block ends (then killed with its
    process group if need be: its children die with it)."""
    with log.open("wb") as output:
        demo = subprocess.Popen(
            command,
            env=env,
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # as in a terminal: a signal goes to the launcher only
        )
    try:
        yield demo
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()


def admin_url(log: Path, demo: "subprocess.Popen[bytes]", within: float) -> str:
    """The admin API's URL, from the line the launcher prints once everything is up."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        found = re.search(r"admin (http://127\.0\.0\.1:\d+)/healthz", log.read_text())
        if found:
            return found.group(1)
        assert demo.poll() is None, log.read_text()
        time.sleep(0.2)
    raise AssertionError(f"no admin URL within {within} s:\n{log.read_text()}")


def until_delivered(admin: str, at_least: int, within: float) -> None:
    """Until the outbound deliveries have delivered `at_least` events in all."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{admin}/flows", timeout=5) as response:  # noqa: S310 -- http://127.0.0.1 only
            items = json.load(response)["items"]
        if sum(item["counters"]["out"] for item in items if item["kind"] == "outbound") >= at_least:
            return
        time.sleep(0.5)
    raise AssertionError(f"fewer than {at_least} deliveries within {within} s")


async def dead_letters(bootstrap: str) -> dict[str, list[ConsumerRecord]]:
    """Every record of every *.dlq topic of the broker."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topics = [topic for topic in await admin.list_topics() if topic.endswith(".dlq")]
    finally:
        await admin.close()
    partitions = [tp for topic in topics for tp in await topic_partitions(bootstrap, topic)]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    found: dict[str, list[ConsumerRecord]] = {topic: [] for topic in topics}
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        async with asyncio.timeout(30):
            while any([await consumer.position(tp) < end for tp, end in ends.items()]):
                for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                    found[tp.topic].extend(records)
    finally:
        await consumer.stop()
    return found


def reason(letter: ConsumerRecord, field: str) -> str:
    headers: dict[str, bytes] = dict(letter.headers)
    return headers[f"bus_dlq_{field}"].decode()


def assert_gone(pids: Any) -> None:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            continue
    assert alive == [], f"still running: {alive}"
