"""Events through the real broker: published by bus, read by bus and by a consumer without bus."""

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from bus.errors import BadHeaderError, EventValidationError
from bus.events.catalog import SchemaCatalog
from bus.events.publisher import Publisher
from bus.events.subscriber import Subscriber
from tests.test_events_codec import CATALOG, ROOT, WHEN, customer

ORDER = {
    "orderId": "o-7",
    "customerId": "c-42",
    "channel": "STORE",
    "lines": [{"sku": "A-1", "quantity": 3, "unitPrice": {"amount": "2.50", "currency": "EUR"}}],
    "total": {"amount": "7.50", "currency": "EUR"},
    "shippingAddress": {"line1": "1 Rue", "city": "Paris", "postalCode": "75001", "country": "FR"},
    "placedAt": "2026-11-24T01:40:06.123Z",
}


async def test_a_consumer_without_bus_decodes_what_bus_published(
    bootstrap_servers: str,
    topic_name: Callable[[str], str],
    create_topics: Callable[..., Awaitable[None]],
) -> None:
    topic = topic_name("orders")
    await create_topics(topic)
    async with Publisher(bootstrap_servers, CATALOG, source="/shop") as publisher:
        event = await publisher.publish(
            topic, "com.acme.orders.OrderPlaced", ORDER, key="c-42", subject="o-7"
        )
    foreign = await asyncio.create_subprocess_exec(
        sys.executable,
        str(Path(__file__).parent / "foreign_consumer.py"),
        bootstrap_servers,
        topic,
        str(ROOT / "schemas" / "history"),
        "1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(foreign.communicate(), 60)
    assert foreign.returncode == 0, stderr.decode()
    received = json.loads(stdout)
    assert received["key"] == "c-42"
    assert received["headers"] == {
        "ce_specversion": "1.0",
        "ce_id": event.id,
        "ce_source": "/shop",
        "ce_type": "com.acme.orders.OrderPlaced",
        "ce_time": received["headers"]["ce_time"],
        "ce_subject": "o-7",
        "content-type": "application/avro",
    }
    assert received["headers"]["ce_time"].endswith("Z")
    assert received["data"]["total"] == {"amount": "7.50", "currency": "EUR"}
    assert received["data"]["lines"][0]["quantity"] == 3
    assert received["data"]["placedAt"] == "2026-11-24 01:40:06.123000+00:00"


async def test_subscriber_reads_commits_and_survives_a_bad_record(
    bootstrap_servers: str,
    topic_name: Callable[[str], str],
    create_topics: Callable[..., Awaitable[None]],
) -> None:
    topic, group = topic_name("customers"), topic_name("group")
    await create_topics(topic)
    async with Publisher(bootstrap_servers, CATALOG, source="/crm") as publisher:
        first = await publisher.publish(
            topic, "com.acme.crm.CustomerChanged", customer(), key="c-42", time=WHEN
        )
        # A foreign record in the topic: not an event at all.
        await publisher._producer.send_and_wait(topic, b'{"not": "avro"}', key=b"c-42")
        second = await publisher.publish(
            topic, "com.acme.crm.CustomerChanged", customer(email="new@example.com"), key="c-42"
        )
        with pytest.raises(EventValidationError):
            await publisher.publish(topic, "com.acme.crm.CustomerChanged", {"customerId": "x"})

    async with Subscriber(bootstrap_servers, CATALOG, [topic], group_id=group) as subscriber:
        received = await anext(subscriber)
        assert received.event == first
        assert received.writer.version == 1
        assert (received.topic, received.partition, received.offset) == (topic, 0, 0)
        await subscriber.commit(received)
        with pytest.raises(BadHeaderError, match=rf"^{topic}\[0\]@1: not a CloudEvents record"):
            await anext(subscriber)
        # The bad record is passed over; the next event follows.
        received = await anext(subscriber)
        assert received.event == second
        assert received.event.data["email"] == "new@example.com"
        assert received.event.data["address"]["country"] == "GB"

    # The group resumes after the last commit: the bad record and the second event again.
    async with Subscriber(bootstrap_servers, CATALOG, [topic], group_id=group) as again:
        with pytest.raises(BadHeaderError):
            await anext(again)
        assert (await anext(again)).event == second


def test_the_repository_schemas_are_all_released() -> None:
    catalog = SchemaCatalog.load(ROOT / "schemas")
    unreleased = [f"{v.full_name} v{v.version}" for v in catalog.unreleased()]
    assert unreleased == [], f"run `bus schemas release` and commit schemas/history: {unreleased}"
    assert len(catalog.names()) == 11
