"""The broker stops and starts again (same ports, same data) while events stream through a
running `bus run`: inbound REST -> mediation -> outbound REST (tests/chaos/pipeline.py).

While the broker is down, the inbound endpoint answers 503 problem+json with Retry-After, within
its storage deadline (it must not hang); once the broker is back, the same process (never
restarted) takes events again, its mediation and delivery consumers resume on their own, and
every event it answered 202 for reaches the sink. This is the fast variant (`make test`); the
long one is tests/chaos/test_broker_restart.py.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bus.errors import PublishError
from bus.events.codec import EventCodec
from bus.events.event import Event
from bus.events.publisher import Publisher
from bus.events.validation import new_event
from bus.inbound.ingest import RETRY_AFTER_S, Ingest, StorageUnavailableError
from bus.local_kafka import LocalKafka
from tests.chaos.pipeline import Pipeline
from tests.chaos.sink import ChaosSink
from tests.conftest import start_broker
from tests.flow_harness import CATALOG, decode, read_all
from tests.test_flows_on_kafka import customer

# The inbound storage deadline (bus.inbound.ingest.Ingest's default) and what a loaded machine
# may add to it before an answer must have come.
DEADLINE_S = 10.0
SLACK_S = 5.0
QUICK_S = 2.0  # an answer this fast did not wait for Kafka
PROBE_SEQ = 1_000_000  # the probes' sequence numbers, apart from the load's


@dataclass
class Probe:
    """What the endpoint answered one request sent while the broker was down."""

    seq: int
    status: int
    seconds: float
    content_type: str
    retry_after: str | None
    body: dict[str, Any] = field(default_factory=dict)


async def probe(session: aiohttp.ClientSession, url: str, seq: int) -> Probe:
    body = {
        "id": "probe",
        "email": f"probe.{seq}@example.com",
        "name": f"seq-{seq}",
        "address": {"line1": "1 Main St", "city": "Berlin", "postalCode": "10115", "country": "DE"},
        "at": "2026-11-24T12:00:00Z",
    }
    started = time.monotonic()
    async with session.post(url, json=body, headers={"Idempotency-Key": f"probe-{seq}"}) as answer:
        content = await answer.json(content_type=None)
        return Probe(
            seq=seq,
            status=answer.status,
            seconds=time.monotonic() - started,
            content_type=answer.content_type,
            retry_after=answer.headers.get("Retry-After"),
            body=content if isinstance(content, dict) else {},
        )


async def probe_while_down(url: str, down_for: float) -> list[Probe]:
    """Probes, two at a time, until `down_for` seconds have passed."""
    answers: list[Probe] = []
    deadline = time.monotonic() + down_for
    timeout = aiohttp.ClientTimeout(total=DEADLINE_S + SLACK_S + 30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        seq = PROBE_SEQ
        while time.monotonic() < deadline:
            answers.extend(
                await asyncio.gather(probe(session, url, seq), probe(session, url, seq + 1))
            )
            seq += 2
            await asyncio.sleep(0.2)
    return answers


async def accepted_at_least(pipeline: Pipeline, count: int, within: float) -> None:
    async with asyncio.timeout(within):
        while True:
            if len(pipeline.load.accepted) >= count:
                return
            await asyncio.sleep(0.1)


async def broker_restart_run(
    broker: LocalKafka,
    folder: Path,
    *,
    events: int,
    rate: float,
    down_for: float,
    concurrency: int = 20,
) -> dict[str, Any]:
    """One bus process, `events` sent at `rate`/s; the broker stopped a fifth of the way in
    for `down_for` seconds. Asserts what must hold and returns the counts."""
    async with (
        ChaosSink() as sink,
        Pipeline(broker.bootstrap_servers, folder, sink, partitions=3, journeys=False) as pipeline,
    ):
        await pipeline.start_bus()
        pipeline.start_load(events, keys=20, rate=rate, concurrency=concurrency)
        await accepted_at_least(pipeline, events // 5, within=120)
        accepted_before = len(pipeline.load.accepted)
        delivered_before = len(pipeline.delivered_seqs())

        stopped = time.monotonic()
        await asyncio.to_thread(broker.stop)
        # A 202 may still be on its way from the moment before the broker went; after that,
        # none can come until the broker is back.
        await asyncio.sleep(1.0)
        accepted_when_down = len(pipeline.load.accepted)
        probes = await probe_while_down(pipeline.url, down_for)
        accepted_while_down = len(pipeline.load.accepted) - accepted_when_down
        await broker.start(ready_within=120)  # the same ports and data directory
        restarted = time.monotonic()

        await pipeline.load_done(within=300)
        await pipeline.wait_delivered(within=240)
        delivered_after_restart = time.monotonic() - restarted
        assert pipeline.bus_running, "the bus process died: " + pipeline.own_log()[-3000:]
        assert pipeline.starts == 1
        assert await pipeline.stop_bus() == 0, pipeline.own_log()[-3000:]
        assert "stopped: in-flight work finished and committed" in pipeline.own_log()
        tally = pipeline.tally()
        delivered = set(pipeline.delivered_seqs())
        dead_letters = await pipeline.dead_letters()

    refused = [p for p in probes if p.status != 202]
    quick = {p.seq for p in refused if p.seconds < QUICK_S}
    stored_probes = {seq for seq in delivered if seq >= PROBE_SEQ}
    counts = {
        **tally,
        "broker_down_s": round(restarted - stopped, 1),
        "accepted_before_stop": accepted_before,
        "accepted_while_stopping": accepted_when_down - accepted_before,
        "delivered_before_stop": delivered_before,
        "accepted_while_down": accepted_while_down,
        "probes_while_down": len(probes),
        "probes_503": sum(p.status == 503 for p in probes),
        "probes_refused_at_once": len(quick),
        # A 503 does not take back a send the producer already holds: it lands once Kafka is
        # back. Only a probe that waited out the deadline can have been such a send.
        "probes_stored_after_503": len(stored_probes),
        "probe_slowest_s": round(max(p.seconds for p in probes), 1),
        "all_delivered_s_after_restart": round(delivered_after_restart, 1),
        "dead_letters": dead_letters,
        "refusals": dict(pipeline.load.refusals),
    }
    assert probes, counts
    for answer in refused:
        assert answer.status == 503, answer
        assert answer.content_type == "application/problem+json", answer
        assert answer.retry_after == str(RETRY_AFTER_S), answer
        assert answer.body["status"] == 503, answer
    assert max(p.seconds for p in probes) < DEADLINE_S + SLACK_S, counts
    assert any(p.status == 503 for p in probes), counts
    assert accepted_while_down == 0, counts  # never a false 202
    # Once a send outlived the deadline, the endpoint refuses at once instead of holding every
    # caller for the deadline, and what it refused at once was never handed to Kafka.
    assert len(quick) >= len(probes) // 2, counts
    assert not quick & stored_probes, counts
    assert tally["lost"] == 0, counts
    assert tally["accepted"] == events, counts
    assert tally["effective_duplicates"] == 0, counts
    assert dead_letters == 0, counts
    return counts


@pytest.mark.timeout(420)
async def test_a_broker_restart_mid_stream_loses_no_accepted_event(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    broker = await start_broker(tmp_path_factory, "kafka-restart")
    try:
        counts = await broker_restart_run(broker, tmp_path, events=200, rate=20, down_for=15)
        print(counts)
    finally:
        if broker.status().running:
            await asyncio.to_thread(broker.stop)


# -- a producer whose sequence numbers Kafka refuses -----------------------------------------
# aiokafka's idempotent producer fails (rather than retries) the batches of a partition that has
# had no leader for longer than its request timeout, as a lone broker's controlled shutdown
# leaves it; the next batch then has a gap in its sequence numbers, which Kafka refuses with
# OutOfOrderSequenceNumber for as long as that producer lives. The broker restart above meets it
# only when the timing is just so; here the gap is made directly in the real client's sequence
# state (the broker is real and refuses it), and what matters is what the bus does next.


def changed(number: int) -> Event:
    return new_event(
        CATALOG, "com.acme.crm.CustomerChanged", customer(number, "DE"), source="/test",
        key=f"c-{number}",
    )  # fmt: skip


def open_a_sequence_gap(producer: Any, topic: str) -> None:
    """What an expired batch leaves behind: sequence numbers the broker never saw."""
    producer._txn_manager.increment_sequence_number(TopicPartition(topic, 0), 5)


async def test_ingest_replaces_a_producer_whose_sequence_numbers_kafka_refuses(
    bootstrap_servers: str,
    topic_name: Callable[[str], str],
    create_topics: Callable[..., Awaitable[None]],
) -> None:
    topic = topic_name("in")
    await create_topics(topic)
    ingest = Ingest(bootstrap_servers, EventCodec(CATALOG), deadline=10)
    await ingest.start()
    try:
        assert await ingest.connected(within=30)
        first, refused, later = changed(1), changed(2), changed(3)
        await ingest.store(topic, first, item="hook")
        open_a_sequence_gap(ingest._producer, topic)
        with pytest.raises(StorageUnavailableError, match="OutOfOrderSequenceNumber"):
            await ingest.store(topic, refused, item="hook")
        # A new producer is being started: 503 until it is, then events are stored again.
        meanwhile: list[str] = []
        async with asyncio.timeout(60):
            while True:
                try:
                    await ingest.store(topic, later, item="hook")
                    break
                except StorageUnavailableError as unavailable:
                    meanwhile.append(str(unavailable))
                    await asyncio.sleep(0.2)
        assert all("not reachable yet" in answer for answer in meanwhile), meanwhile
    finally:
        await ingest.stop()
    stored = [event.id for event in await decode(await read_all(bootstrap_servers, topic))]
    assert stored == [first.id, later.id]


async def test_the_publisher_replaces_a_producer_whose_sequence_numbers_kafka_refuses(
    bootstrap_servers: str,
    topic_name: Callable[[str], str],
    create_topics: Callable[..., Awaitable[None]],
) -> None:
    topic = topic_name("out")
    await create_topics(topic)
    async with Publisher(bootstrap_servers, CATALOG, source="/test", deadline=20) as publisher:
        first, refused, later = changed(1), changed(2), changed(3)
        await publisher.send(topic, first)
        open_a_sequence_gap(publisher._producer, topic)
        with pytest.raises(PublishError, match=r"OutOfOrderSequenceNumber.*not stored"):
            await publisher.send(topic, refused)
        await publisher.send(topic, later)  # the same Publisher, a new producer inside
    stored = [event.id for event in await decode(await read_all(bootstrap_servers, topic))]
    assert stored == [first.id, later.id]


async def create_topic(broker: LocalKafka, topic: str) -> None:
    """A topic on a broker of the test's own (the session's `create_topics` is for its broker)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()


async def test_publish_gives_up_after_its_deadline_while_kafka_is_away(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Without a deadline the idempotent producer would wait out the whole outage."""
    broker = await start_broker(tmp_path_factory, "kafka-publish-deadline")
    try:
        topic = "publish.deadline.v1"
        await create_topic(broker, topic)
        async with Publisher(
            broker.bootstrap_servers, CATALOG, source="/test", deadline=3
        ) as publisher:
            first = changed(1)
            await publisher.send(topic, first)
            await asyncio.to_thread(broker.stop)
            started = time.monotonic()
            timed_out = changed(2)
            with pytest.raises(PublishError, match="within 3 s"):
                await publisher.send(topic, timed_out)
            assert time.monotonic() - started < 3 + SLACK_S
            await broker.start(ready_within=120)
            # The same Publisher works again; sending the timed-out event again keeps it one
            # event (one id), whether or not the first try also landed.
            async with asyncio.timeout(90):
                while True:
                    try:
                        await publisher.send(topic, timed_out)
                        break
                    except PublishError:
                        await asyncio.sleep(0.5)
        ids = {event.id for event in await decode(await read_all(broker.bootstrap_servers, topic))}
        assert ids == {first.id, timed_out.id}
    finally:
        if broker.status().running:
            await asyncio.to_thread(broker.stop)


async def test_stopping_while_kafka_is_away_takes_at_most_the_deadline(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A SIGTERM during an outage: the inbound's and the Publisher's producers still hold an
    unacknowledged send, which the idempotent producer would flush for as long as Kafka is
    away; stopping gives it the deadline, then goes."""
    broker = await start_broker(tmp_path_factory, "kafka-stop-while-away")
    try:
        topic = "stop.while.away.v1"
        await create_topic(broker, topic)
        ingest = Ingest(broker.bootstrap_servers, EventCodec(CATALOG), deadline=2)
        await ingest.start()
        publisher = Publisher(broker.bootstrap_servers, CATALOG, source="/test", deadline=2)
        await publisher.start()
        assert await ingest.connected(within=30)
        await ingest.store(topic, changed(1), item="hook")
        await publisher.send(topic, changed(2))
        await asyncio.to_thread(broker.stop)
        with pytest.raises(StorageUnavailableError):
            await ingest.store(topic, changed(3), item="hook")
        with pytest.raises(PublishError):
            await publisher.send(topic, changed(4))
        for stop in (ingest.stop, publisher.stop):
            started = time.monotonic()
            await asyncio.wait_for(stop(), 2 + SLACK_S + 10)
            assert time.monotonic() - started < 2 + SLACK_S
    finally:
        if broker.status().running:
            await asyncio.to_thread(broker.stop)
