"""A replicated cluster loses a partition leader mid-stream: no acknowledged event is lost.

Three KRaft nodes (`bus.local_kafka.LocalKafkaCluster`), a topic with three replicas and
min.insync.replicas 2, one busy partition fed through bus's own producer path (the Publisher:
acks=all, idempotent). The node leading that partition is SIGKILLed while sends are under way;
sending goes on while another replica takes over, the node is started again and rejoins the
in-sync replicas. Then the partition is read back from the start: every send that was
acknowledged must be there; sends that failed are counted apart (their outcome is unknown, a
failure does not promise absence).
"""

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from bus.errors import PublishError
from bus.events.publisher import Publisher
from bus.local_kafka import KafkaDistribution, LocalKafkaCluster
from tests.chaos.conftest import ChaosResults
from tests.conftest import TEST_BROKER_OVERRIDES, kafka_cache_dir
from tests.flow_harness import CATALOG
from tests.test_flows_on_kafka import customer

TOPIC = "chaos.replicated.orders.v1"
SENDERS = 8  # concurrent publishers of one partition: several batches in flight at the kill


@dataclass
class Tally:
    acknowledged: list[tuple[str, float]] = field(default_factory=list)  # (event id, when)
    failed: list[tuple[str, float, str]] = field(default_factory=list)  # (id, when, why)

    @property
    def sent(self) -> int:
        return len(self.acknowledged) + len(self.failed)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalKafkaCluster]:
    nodes = LocalKafkaCluster.on_free_ports(
        tmp_path / "cluster",
        KafkaDistribution.pinned(kafka_cache_dir()),
        overrides=TEST_BROKER_OVERRIDES,
        die_with_parent=True,
    )
    await nodes.start(ready_within=180)
    try:
        yield nodes
    finally:
        await asyncio.to_thread(nodes.stop)


async def partition_state(bootstrap_servers: str) -> dict[str, Any]:
    """Partition 0 of TOPIC as the cluster's metadata says: leader, replicas, isr."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        (topic,) = await admin.describe_topics([TOPIC])
    finally:
        await admin.close()
    # A node that has not caught up with the topic's creation yet knows no partition of it.
    partitions = topic["partitions"]
    return dict(partitions[0]) if partitions else {}


async def controller_id(bootstrap_servers: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
    finally:
        await admin.close()
    return int(cluster["controller_id"])


async def wait_for(bootstrap_servers: str, within: float, ok: Any, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + within
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            state = await partition_state(bootstrap_servers)
        except (KafkaError, OSError):  # asked a node that is down or still electing: ask again
            state = {}
        if state and ok(state):
            return state
        await asyncio.sleep(0.5)
    raise AssertionError(f"{what} did not happen within {within:g} s; last state {state}")


async def send_until(publisher: Publisher, tally: Tally, stop: asyncio.Event, start: int) -> None:
    """One sender: publish events one after another until told to stop."""
    number = start
    while not stop.is_set():
        event_id = str(uuid.uuid4())
        try:
            event = await publisher.publish(
                TOPIC, "com.acme.crm.CustomerChanged", customer(number, "DE"),
                key=f"c-{number % 40}", event_id=event_id,
            )  # fmt: skip
        except PublishError as error:
            tally.failed.append((event_id, time.monotonic(), str(error)[:300]))
            await asyncio.sleep(0.2)
        else:
            tally.acknowledged.append((event.id, time.monotonic()))
        number += SENDERS


async def read_back(bootstrap_servers: str, within: float = 120.0) -> Counter[str]:
    """How often each event id (ce_id header) is in the partition, read to its end."""
    consumer = AIOKafkaConsumer(
        TOPIC,
        bootstrap_servers=bootstrap_servers,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await consumer.start()
    ids: Counter[str] = Counter()
    try:
        async with asyncio.timeout(within):
            (partition,) = consumer.assignment()
            end = (await consumer.end_offsets([partition]))[partition]
            while await consumer.position(partition) < end:
                for batch in (await consumer.getmany(timeout_ms=1000)).values():
                    for record in batch:
                        ids.update(v.decode() for k, v in record.headers if k == "ce_id")
    finally:
        await consumer.stop()
    return ids


async def acknowledged_count(tally: Tally, at_least: int, within: float) -> None:
    async with asyncio.timeout(within):
        while True:
            if len(tally.acknowledged) >= at_least:
                return
            await asyncio.sleep(0.1)


@pytest.mark.timeout(900)
async def test_killing_the_partition_leader_loses_no_acknowledged_event(
    cluster: LocalKafkaCluster, chaos_results: ChaosResults
) -> None:
    servers = cluster.bootstrap_servers
    admin = AIOKafkaAdminClient(bootstrap_servers=servers)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(
                    TOPIC,
                    num_partitions=1,
                    replication_factor=3,
                    topic_configs={"min.insync.replicas": "2"},
                )
            ]
        )
    finally:
        await admin.close()
    before = await wait_for(servers, 60, lambda s: len(s["isr"]) == 3, "a full ISR")
    leader = before["leader"]
    controller = await controller_id(servers)

    tally = Tally()
    stop = asyncio.Event()
    async with Publisher(servers, CATALOG, source="/chaos/cluster", linger_ms=5) as publisher:
        senders = [
            asyncio.create_task(send_until(publisher, tally, stop, start))
            for start in range(SENDERS)
        ]
        try:
            await acknowledged_count(tally, 1500, within=180)
            acknowledged_before_kill = len(tally.acknowledged)
            killed_at = time.monotonic()
            cluster.kill(leader)
            after = await wait_for(
                servers, 90, lambda s: s["leader"] not in (leader, -1), "a new leader"
            )
            await acknowledged_count(tally, len(tally.acknowledged) + 1500, within=180)
            await cluster.restart(leader, ready_within=180)
            rejoined = await wait_for(
                servers, 120, lambda s: leader in s["isr"], f"node {leader} back in the ISR"
            )
            await acknowledged_count(tally, len(tally.acknowledged) + 500, within=120)
        finally:
            stop.set()
            await asyncio.gather(*senders)

    first_after_kill = min((at for _, at in tally.acknowledged if at > killed_at), default=None)
    present = await read_back(servers)
    acknowledged = {event_id for event_id, _ in tally.acknowledged}
    lost = acknowledged - set(present)
    duplicates = sum(count - 1 for count in present.values() if count > 1)
    counts = {
        "sent": tally.sent,
        "accepted": len(acknowledged),
        "delivered": len(acknowledged & set(present)),
        "duplicates": duplicates,
        "effective_duplicates": duplicates,
        "lost": len(lost),
        "failed_sends": len(tally.failed),
        "failed_but_stored": len({event_id for event_id, _, _ in tally.failed} & set(present)),
        "acknowledged_before_kill": acknowledged_before_kill,
        "records_in_partition": sum(present.values()),
        "killed_node": leader,
        "killed_node_was_controller": leader == controller,
        "new_leader": after["leader"],
        "isr_after_rejoin": sorted(rejoined["isr"]),
        "seconds_without_ack_after_kill": (
            None if first_after_kill is None else round(first_after_kill - killed_at, 1)
        ),
        "failure_reasons": sorted({why.split(":")[-1].strip() for _, _, why in tally.failed}),
    }
    chaos_results.record("replicated-cluster-leader-killed", **counts)
    print(counts)
    assert not lost, f"{len(lost)} acknowledged events are not in the partition: {sorted(lost)[:5]}"
    assert duplicates == 0, counts
    assert sorted(rejoined["isr"]) == [1, 2, 3]
