"""Event journeys on the real broker: hops recorded by JourneyRecorder, a journey read back by
any of its event ids as a tree, the `bus trace` timeline and its JSON, sampling, the bounded
buffer, the flush on stop and the journey topic's settings."""

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.partitioner import DefaultPartitioner
from click.testing import CliRunner

from bus.cli import _BusGroup
from bus.errors import JourneyTopicMissingError, KafkaUnavailableError
from bus.flows.model import JourneySettings
from bus.telemetry import journeys
from bus.telemetry.hop import Hop, Output
from bus.telemetry.journey_record import encode, sampled
from bus.telemetry.journeys import Journey, JourneyRecorder, read_journey, render_journey
from bus.telemetry.trace_command import trace
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_795_000_000.0  # 2026-11-18T11:06:40Z

# One journey: a CRM webhook, routed to two ERPs; the EU call succeeds, the US one is refused,
# dead-lettered, replayed five minutes later and then delivered. The first mediation attempt
# fails (nothing committed) and is redone.
CRM, EU, US = "crm.customer-changed.v1", "erp.eu.customer-upsert.v1", "erp.us.customer-upsert.v1"
REPLIES, US_DLQ = "erp.customer-upserted.v1", "erp-us.dlq"
CHANGED, EU_UPSERT, US_UPSERT = "evt-changed-1", "evt-eu-upsert-1", "evt-us-upsert-1"
EU_REPLY, US_REPLY = "evt-eu-reply-1", "evt-us-reply-1"
REFUSED = "PermanentDeliveryError: 422 from http://erp-us/customers: customerId unknown"


def the_journey() -> list[Hop]:
    def hop(kind: Any, flow: str, after: float, **fields: Any) -> Hop:
        return Hop(kind, flow, T0 + after, root_id=CHANGED, **fields)

    return [
        hop(
            "inbound",
            "crm-webhook",
            0.0,
            event_id=CHANGED,
            event_type="com.acme.crm.CustomerChanged",
            topic=CRM,
            partition=0,
            offset=12,
            outcome="accepted",
            duration=0.004,
        ),
        hop(
            "mediation",
            "customer-router",
            0.010,
            event_id=CHANGED,
            topic=CRM,
            partition=0,
            offset=12,
            step="produce",
            outcome="failed",
            error="KafkaTimeoutError: no acknowledgement within 30 s",
            duration=0.002,
        ),
        hop(
            "mediation",
            "customer-router",
            0.020,
            event_id=CHANGED,
            topic=CRM,
            partition=0,
            offset=12,
            outcome="processed",
            outputs=[Output(EU_UPSERT, EU, 2, 5), Output(US_UPSERT, US, 1, 7)],
            duration=0.003,
        ),
        hop(
            "outbound",
            "erp-eu",
            0.050,
            event_id=EU_UPSERT,
            parent_id=CHANGED,
            topic=EU,
            partition=2,
            offset=5,
            outcome="delivered",
            status=200,
            outputs=[Output(EU_REPLY, REPLIES, 0, 3)],
            duration=0.120,
        ),
        hop(
            "outbound",
            "erp-us",
            0.060,
            event_id=US_UPSERT,
            parent_id=CHANGED,
            topic=US,
            partition=1,
            offset=7,
            step="call",
            outcome="dead-lettered",
            error=REFUSED,
            attempts=3,
            status=422,
            outputs=[Output(US_UPSERT, US_DLQ, 0, 4)],
            duration=0.250,
        ),
        hop(
            "replay",
            "erp-us",
            300.0,
            event_id=US_UPSERT,
            topic=US_DLQ,
            partition=0,
            offset=4,
            outcome="replayed",
            outputs=[Output(US_UPSERT, US, 1, 9)],
            duration=0.010,
        ),
        hop(
            "outbound",
            "erp-us",
            300.2,
            event_id=US_UPSERT,
            parent_id=CHANGED,
            topic=US,
            partition=1,
            offset=9,
            outcome="delivered",
            status=200,
            outputs=[Output(US_REPLY, REPLIES, 1, 8)],
            duration=0.080,
        ),
    ]


def another_journey(root: str) -> list[Hop]:
    """Two hops of another journey: never part of the one above."""
    return [
        Hop("inbound", "crm-webhook", T0 + 1, event_id=root, root_id=root, topic=CRM),
        Hop("mediation", "customer-router", T0 + 2, event_id=root, root_id=root, topic=CRM),
    ]


def shape(journey: Journey) -> list[Any]:
    """The tree as nested (kind flow outcome event, pending events, children) tuples."""

    def node(hop: Any) -> tuple[Any, ...]:
        pending = [output["event_id"] for output in hop.pending]
        label = f"{hop.kind} {hop.flow} {hop.outcome} {hop.event_id}"
        return (label, pending, [node(child) for child in hop.children])

    return [node(hop) for hop in journey.roots]


EXPECTED = [
    (
        f"inbound crm-webhook accepted {CHANGED}",
        [],
        [
            (f"mediation customer-router failed {CHANGED}", [], []),
            (
                f"mediation customer-router processed {CHANGED}",
                [],
                [
                    (f"outbound erp-eu delivered {EU_UPSERT}", [EU_REPLY], []),
                    (
                        f"outbound erp-us dead-lettered {US_UPSERT}",
                        [],
                        [
                            (
                                f"replay erp-us replayed {US_UPSERT}",
                                [],
                                [(f"outbound erp-us delivered {US_UPSERT}", [US_REPLY], [])],
                            )
                        ],
                    ),
                ],
            ),
        ],
    )
]


async def records_in(bootstrap_servers: str, topic: str) -> list[Any]:
    """Every record in the topic up to its current end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(journeys.PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records: list[Any] = []
        async with asyncio.timeout(30):
            while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    records.extend(batch)
        return records
    finally:
        await consumer.stop()


async def record_all(
    bootstrap_servers: str, settings: JourneySettings, hops: list[Hop], **options: Any
) -> JourneyRecorder:
    recorder = JourneyRecorder(bootstrap_servers, settings, **options)
    await recorder.start()
    for hop in hops:
        recorder.record(hop)
    async with asyncio.timeout(journeys.FLUSH_WITHIN + journeys.CLOSE_WITHIN + 5):
        await recorder.stop()
    return recorder


@pytest.fixture(scope="module")
async def journey_topic(bootstrap_servers: str) -> str:
    """A journey topic holding the journey above among two others, written out of order (as
    several processes would) by one recorder."""
    topic = f"test-journeys.{int(time.time() * 1000)}"
    hops = [
        *another_journey("evt-other-1"),
        *reversed(the_journey()),  # the tree is in time order whatever order hops come in
        *another_journey("evt-other-2"),
    ]
    drops: list[None] = []
    settings = JourneySettings(topic=topic)
    await record_all(bootstrap_servers, settings, hops, on_drop=lambda: drops.append(None))
    assert drops == []
    return topic


@pytest.mark.parametrize(
    "event_id",
    [CHANGED, EU_UPSERT, US_UPSERT, US_REPLY],
    ids=["root", "child", "replayed-child", "grandchild"],
)
async def test_a_journey_reads_back_whole_from_any_of_its_event_ids(
    bootstrap_servers: str, journey_topic: str, event_id: str
) -> None:
    journey = await read_journey(bootstrap_servers, journey_topic, event_id)
    assert journey is not None
    assert journey.root_id == CHANGED
    assert shape(journey) == EXPECTED  # the other journeys' hops are not in it
    assert journey.summary() == {
        "hops": 7,
        "dead_lettered": 1,
        "failed": 1,
        "pending_outputs": 2,
        "first": "2026-11-18T11:06:40.000Z",
        "last": "2026-11-18T11:11:40.280Z",
    }


async def test_an_unknown_event_has_no_journey(bootstrap_servers: str, journey_topic: str) -> None:
    assert await read_journey(bootstrap_servers, journey_topic, "evt-never-seen") is None
    # A prefix of a known id is not that id.
    assert await read_journey(bootstrap_servers, journey_topic, "evt-changed") is None


def home_partition(topic: str, root_id: str) -> int:
    """The partition Kafka's default partitioner gives a journey's key."""
    partitions = [TopicPartition(topic, n) for n in range(journeys.PARTITIONS)]
    chosen: TopicPartition = DefaultPartitioner()(root_id.encode(), partitions, partitions)
    return chosen.partition


async def test_a_journey_sits_in_the_partition_its_root_id_hashes_to(
    bootstrap_servers: str, journey_topic: str
) -> None:
    # Where read_journey looks first for a root id: where the recorder's producer put it.
    records = await records_in(bootstrap_servers, journey_topic)
    held = {record.partition for record in records if record.key == CHANGED.encode()}
    assert held == {home_partition(journey_topic, CHANGED)}


async def test_a_root_id_outside_its_keys_partition_is_found_by_the_full_scan(
    bootstrap_servers: str,
    topic_name: Callable[[str], str],
    create_topics: Callable[..., Awaitable[None]],
) -> None:
    # As after partitions were added to the journey topic: the key now hashes elsewhere.
    topic, root = topic_name("journeys"), "evt-moved-root"
    await create_topics(topic, partitions=journeys.PARTITIONS)
    elsewhere = (home_partition(topic, root) + 1) % journeys.PARTITIONS
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers)
    await producer.start()
    try:
        for hop in another_journey(root):
            await producer.send_and_wait(topic, encode(hop), key=root.encode(), partition=elsewhere)
    finally:
        await producer.stop()
    journey = await read_journey(bootstrap_servers, topic, root)
    assert journey is not None
    assert (journey.root_id, journey.summary()["hops"]) == (root, 2)


async def test_a_missing_topic_and_an_absent_kafka_are_told_apart(bootstrap_servers: str) -> None:
    with pytest.raises(JourneyTopicMissingError):
        await read_journey(bootstrap_servers, "no-such-journeys", CHANGED)
    nowhere = f"127.0.0.1:{free_port()}"
    with pytest.raises(KafkaUnavailableError) as unavailable:
        await read_journey(nowhere, "bus.journeys", CHANGED)
    assert f"cannot read the journey topic 'bus.journeys' at {nowhere}" in str(unavailable.value)


async def test_since_reads_only_records_written_from_then_on(
    bootstrap_servers: str, journey_topic: str
) -> None:
    now = datetime.now(UTC)
    earlier = await read_journey(
        bootstrap_servers, journey_topic, US_REPLY, since=now - timedelta(hours=1)
    )
    assert earlier is not None
    assert shape(earlier) == EXPECTED
    later = now + timedelta(hours=1)
    assert await read_journey(bootstrap_servers, journey_topic, US_REPLY, since=later) is None


async def test_the_timeline_shows_every_hop_in_order_and_the_replay_command(
    bootstrap_servers: str, journey_topic: str
) -> None:
    journey = await read_journey(bootstrap_servers, journey_topic, EU_REPLY)
    assert journey is not None
    text = render_journey(journey)
    assert "\x1b[" not in text  # no colour unless asked for
    expected_lines = [
        f"journey of root event {CHANGED}",
        "7 hop(s) from 2026-11-18T11:06:40.000Z to 2026-11-18T11:11:40.280Z; 1 dead-lettered, "
        "1 failed, 2 output(s) not consumed yet",
        f"+0.000s  inbound crm-webhook  accepted  → {CRM}[0]@12  4.0 ms  event {CHANGED} "
        "(com.acme.crm.CustomerChanged)",
        f"+0.010s  ├─ mediation customer-router  failed  {CRM}[0]@12  2.0 ms  event {CHANGED}",
        "error at produce: KafkaTimeoutError: no acknowledgement within 30 s",
        f"+0.020s  └─ mediation customer-router  processed  {CRM}[0]@12  3.0 ms  2 output(s)  "
        f"event {CHANGED}",
        f"+0.050s     ├─ outbound erp-eu  delivered  {EU}[2]@5  120.0 ms  attempts 1, status 200"
        f"  event {EU_UPSERT}",
        f"└─ … {REPLIES}[0]@3  event {EU_REPLY}: not consumed yet",
        f"+0.060s     └─ outbound erp-us  dead-lettered  {US}[1]@7  250.0 ms  attempts 3, "
        f"status 422  event {US_UPSERT}",
        f"error at call: {REFUSED}",
        "replay: bus dlq replay erp-us --partition 0 --offset 4",
        f"0:05:00.000        └─ replay erp-us  replayed  {US_DLQ}[0]@4 → {US}[1]@9  10.0 ms  "
        f"event {US_UPSERT}",
        f"0:05:00.200           └─ outbound erp-us  delivered  {US}[1]@9  80.0 ms  attempts 1, "
        f"status 200  event {US_UPSERT}",
        f"└─ … {REPLIES}[1]@8  event {US_REPLY}: not consumed yet",
    ]
    lines = text.splitlines()
    found = [next(i for i, line in enumerate(lines) if want in line) for want in expected_lines]
    assert found == sorted(found), text
    assert len(lines) == len(expected_lines) + 1, text  # and a blank line under the header


def test_a_dead_letter_elsewhere_than_flow_dlq_gets_its_topic_in_the_replay_command() -> None:
    refused = Hop(
        "outbound",
        "erp-us",
        T0,
        event_id=US_UPSERT,
        topic=US,
        partition=0,
        offset=1,
        outcome="dead-lettered",
        error=REFUSED,
        outputs=[Output(US_UPSERT, "erp.dead-letters", 2, 41)],
    )
    journey = Journey.from_records(US_UPSERT, [refused.as_record()])
    text = render_journey(journey)
    assert (
        "replay: bus dlq replay erp-us --partition 2 --offset 41 --topic erp.dead-letters" in text
    )
    assert f"dead letter erp.dead-letters[2]@41  event {US_UPSERT}: not replayed yet" in text
    [pending] = journey.as_json()["hops"][0]["pending"]
    assert pending == {
        "event_id": US_UPSERT,
        "topic": "erp.dead-letters",
        "partition": 2,
        "offset": 41,
        "dead_letter": True,
    }


def invoke(*args: str, **env: str | None) -> Any:
    group = _BusGroup(commands=[trace])  # as `bus` runs it: a BusError is one line, exit 1
    return CliRunner().invoke(group, ["trace", *args], env=env)


def test_bus_trace_json(bootstrap_servers: str, journey_topic: str) -> None:
    result = invoke(
        US_UPSERT, "--json", "--topic", journey_topic, KAFKA_BOOTSTRAP_SERVERS=bootstrap_servers
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["root_id"] == CHANGED
    assert document["summary"]["hops"] == 7
    [inbound] = document["hops"]
    assert (inbound["kind"], inbound["event_id"], inbound["offset"]) == ("inbound", CHANGED, 12)
    failed, processed = inbound["children"]
    assert failed["error"] == "KafkaTimeoutError: no acknowledgement within 30 s"
    eu, us = processed["children"]
    assert eu["pending"] == [
        {"event_id": EU_REPLY, "topic": REPLIES, "partition": 0, "offset": 3, "dead_letter": False}
    ]
    assert us["outputs"] == [{"event_id": US_UPSERT, "topic": US_DLQ, "partition": 0, "offset": 4}]
    [replay] = us["children"]
    assert (replay["kind"], replay["topic"], replay["offset"]) == ("replay", US_DLQ, 4)
    [delivered] = replay["children"]
    assert (delivered["outcome"], delivered["offset"], delivered["children"]) == (
        "delivered",
        9,
        [],
    )


def test_bus_trace_prints_the_timeline(bootstrap_servers: str, journey_topic: str) -> None:
    result = invoke(CHANGED, "--topic", journey_topic, KAFKA_BOOTSTRAP_SERVERS=bootstrap_servers)
    assert result.exit_code == 0, result.output
    journey = asyncio.run(read_journey(bootstrap_servers, journey_topic, CHANGED))
    assert journey is not None
    assert result.stdout == render_journey(journey) + "\n"  # colours stripped off a terminal


def test_bus_trace_finds_kafka_and_the_topic_in_flow_files(
    bootstrap_servers: str, journey_topic: str, tmp_path: Path
) -> None:
    flow_file = tmp_path / "observed.yaml"
    flow_file.write_text(
        f"kafka: {{bootstrap_servers: '{bootstrap_servers}'}}\n"
        f"observability: {{journeys: {{topic: {journey_topic}}}}}\n"
    )
    # Nothing listens there: the flow file's Kafka must be the one used.
    nowhere = f"127.0.0.1:{free_port()}"
    result = invoke(
        EU_REPLY,
        "--json",
        str(flow_file),
        KAFKA_BOOTSTRAP_SERVERS=nowhere,
        BUS_SCHEMAS_DIR=str(ROOT / "schemas"),
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["root_id"] == CHANGED


def test_bus_trace_of_an_unknown_event_says_so_and_exits_1(
    bootstrap_servers: str, journey_topic: str
) -> None:
    result = invoke(
        "evt-never-seen", "--topic", journey_topic, KAFKA_BOOTSTRAP_SERVERS=bootstrap_servers
    )
    assert result.exit_code == 1
    assert result.stdout == ""
    assert (
        f"Error: no record of the journey topic {journey_topic!r} names event 'evt-never-seen'; "
        "check the id" in result.stderr
    )


def test_bus_trace_refuses_a_since_that_is_not_a_time() -> None:
    result = invoke(CHANGED, "--since", "yesterday")
    assert result.exit_code == 2
    assert "'yesterday' is not an ISO 8601 time; write e.g. 2026-11-24T11:59:00Z" in result.output


def test_bus_trace_of_a_missing_journey_topic_says_which(bootstrap_servers: str) -> None:
    result = invoke(
        CHANGED, "--topic", "no-such-journeys", KAFKA_BOOTSTRAP_SERVERS=bootstrap_servers
    )
    assert result.exit_code == 1
    assert "Error: the journey topic 'no-such-journeys' does not exist" in result.stderr


async def test_the_journey_topic_is_created_with_the_configured_retention(
    bootstrap_servers: str, topic_name: Callable[[str], str]
) -> None:
    topic = topic_name("journeys")
    settings = JourneySettings(topic=topic, retention=timedelta(hours=3))
    await record_all(bootstrap_servers, settings, [])
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
        [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        await admin.close()
    assert len(described["partitions"]) == journeys.PARTITIONS
    configs = {entry[0]: entry[1] for entry in response.resources[0][4]}
    assert configs["retention.ms"] == str(3 * 3600 * 1000)
    assert configs["cleanup.policy"] == "delete"


def journeys_of(count: int, kinds: tuple[Any, ...]) -> list[Hop]:
    return [
        Hop(kind, "flow", T0, event_id=f"evt-{root}-{kind}", root_id=f"evt-{root}")
        for root in range(count)
        for kind in kinds
    ]


@pytest.mark.parametrize(("ratio", "kept"), [(0.0, 0), (1.0, 60)])
async def test_sampling_none_or_all(
    bootstrap_servers: str, topic_name: Callable[[str], str], ratio: float, kept: int
) -> None:
    settings = JourneySettings(topic=topic_name("journeys"), sample_ratio=ratio)
    await record_all(
        bootstrap_servers, settings, journeys_of(20, ("inbound", "mediation", "outbound"))
    )
    assert len(await records_in(bootstrap_servers, settings.topic)) == kept


async def test_sampling_half_keeps_whole_journeys_the_same_in_every_process(
    bootstrap_servers: str, topic_name: Callable[[str], str]
) -> None:
    settings = JourneySettings(topic=topic_name("journeys"), sample_ratio=0.5)
    # Two processes, each recording its own hops of the same 200 journeys.
    await record_all(bootstrap_servers, settings, journeys_of(200, ("inbound", "mediation")))
    await record_all(bootstrap_servers, settings, journeys_of(200, ("outbound", "replay")))
    hops_per_journey = Counter(r.key for r in await records_in(bootstrap_servers, settings.topic))
    assert set(hops_per_journey.values()) == {4}  # every kept journey has all its hops
    assert 60 <= len(hops_per_journey) <= 140  # about half of the journeys
    assert {key.decode() for key in hops_per_journey} == {
        f"evt-{n}" for n in range(200) if sampled(f"evt-{n}", 0.5)
    }


def test_sampling_decides_the_same_in_another_interpreter() -> None:
    # Another string hash salt: a decision by Python's hash() would differ.
    decided = subprocess.run(
        [sys.executable, "-c", SAMPLE_200],
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    kept = [f"evt-{n}" for n in range(200) if sampled(f"evt-{n}", 0.5)]
    assert json.loads(decided.stdout) == kept


SAMPLE_200 = (
    "import json; from bus.telemetry.journey_record import sampled; "
    "print(json.dumps([f'evt-{n}' for n in range(200) if sampled(f'evt-{n}', 0.5)]))"
)


async def test_a_full_buffer_drops_and_counts_without_waiting(
    monkeypatch: pytest.MonkeyPatch, topic_name: Callable[[str], str]
) -> None:
    monkeypatch.setattr(journeys, "CONNECT_WITHIN", 0.5)
    drops: list[None] = []
    nowhere = f"127.0.0.1:{free_port()}"  # no Kafka there: nothing leaves the buffer
    recorder = JourneyRecorder(
        nowhere,
        JourneySettings(topic=topic_name("journeys")),
        on_drop=lambda: drops.append(None),
        capacity=5,
    )
    async with asyncio.timeout(5):
        await recorder.start()  # does not wait for a Kafka that is not there
    began = time.monotonic()
    for hop in journeys_of(8, ("inbound",)):
        recorder.record(hop)
    assert time.monotonic() - began < 0.5
    assert len(drops) == 3  # at once, as each record found the buffer full
    async with asyncio.timeout(journeys.FLUSH_WITHIN + journeys.CLOSE_WITHIN + 5):
        await recorder.stop()
    assert len(drops) == 8  # the five buffered ones could not be sent either
    recorder.record(journeys_of(1, ("outbound",))[0])
    assert len(drops) == 9  # after stop, nothing is buffered any more


async def test_stop_sends_everything_recorded(
    bootstrap_servers: str, topic_name: Callable[[str], str]
) -> None:
    settings = JourneySettings(topic=topic_name("journeys"))
    hops = journeys_of(250, ("inbound", "mediation"))
    drops: list[None] = []
    await record_all(bootstrap_servers, settings, hops, on_drop=lambda: drops.append(None))
    records = await records_in(bootstrap_servers, settings.topic)
    assert drops == []
    # Readable without bus: keyed by the root id, the hop's record as JSON with its version.
    got = [(record.key.decode(), json.loads(record.value)) for record in records]
    want = [(hop.root_id, {"v": 1, **hop.as_record()}) for hop in hops]
    assert sorted(got, key=by_hop) == sorted(want, key=by_hop)


def by_hop(pair: tuple[Any, dict[str, Any]]) -> tuple[str, str]:
    return pair[0], pair[1]["kind"]
