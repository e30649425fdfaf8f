"""What bus relies on from aiokafka, proven on the pinned broker: these tests decide the pin."""

import asyncio
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition


async def consume(
    consumer: AIOKafkaConsumer, count: int, within: float = 20.0
) -> list[ConsumerRecord]:
    """Exactly `count` records, or fail after `within` seconds saying how many came."""
    records: list[ConsumerRecord] = []
    async with asyncio.timeout(within):
        while len(records) < count:
            batches = await consumer.getmany(timeout_ms=500, max_records=count - len(records))
            for batch in batches.values():
                records.extend(batch)
    return records


async def drain(consumer: AIOKafkaConsumer, quiet_for: float = 2.0) -> list[ConsumerRecord]:
    """Everything the consumer gets until nothing more arrives for `quiet_for` seconds."""
    records: list[ConsumerRecord] = []
    while batches := await consumer.getmany(timeout_ms=int(quiet_for * 1000)):
        for batch in batches.values():
            records.extend(batch)
    return records


async def test_idempotent_produce_then_group_resumes_after_committed_offset(
    bootstrap_servers: str,
    topic_name: Callable[[str], str],
    create_topics: Callable[..., Awaitable[None]],
) -> None:
    topic, group = topic_name("events"), topic_name("group")
    await create_topics(topic)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        for n in range(20):
            await producer.send_and_wait(
                topic,
                value=f"value-{n}".encode(),
                key=f"customer-{n % 3}".encode(),
                headers=[("ce_id", f"id-{n}".encode()), ("ce_type", b"com.acme.Test")],
            )
        # The broker granted a producer id: the idempotent handshake really happened.
        assert producer._txn_manager.producer_id >= 0
    finally:
        await producer.stop()

    first = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap_servers,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await first.start()
    try:
        records = await consume(first, 20)
        assert [r.value for r in records] == [f"value-{n}".encode() for n in range(20)]
        assert records[7].key == b"customer-1"
        assert records[7].headers == (("ce_id", b"id-7"), ("ce_type", b"com.acme.Test"))
        # Work done for the first 12 records only: commit just past the 12th.
        await first.commit({TopicPartition(topic, 0): records[11].offset + 1})
    finally:
        await first.stop()

    second = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap_servers,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await second.start()
    try:
        resumed = await consume(second, 8)
        assert [r.value for r in resumed] == [f"value-{n}".encode() for n in range(12, 20)]
        assert await second.committed(TopicPartition(topic, 0)) == 12
    finally:
        await second.stop()


async def test_transaction_with_offsets_committed_and_aborted_read_committed(
    bootstrap_servers: str,
    topic_name: Callable[[str], str],
    create_topics: Callable[..., Awaitable[None]],
) -> None:
    source, sink, group = topic_name("in"), topic_name("out"), topic_name("group")
    await create_topics(source, sink)
    feeder = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all")
    await feeder.start()
    try:
        for n in range(4):
            await feeder.send_and_wait(source, f"in-{n}".encode(), key=b"k")
    finally:
        await feeder.stop()

    consumer = AIOKafkaConsumer(
        source,
        bootstrap_servers=bootstrap_servers,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers, transactional_id=topic_name("txn")
    )
    await consumer.start()
    await producer.start()
    partition = TopicPartition(source, 0)
    try:
        records = await consume(consumer, 4)
        # Consume-transform-produce of the first two records, committed with their offsets.
        async with producer.transaction():
            for record in records[:2]:
                await producer.send(sink, record.value.replace(b"in", b"out"), key=record.key)
            await producer.send_offsets_to_transaction({partition: records[1].offset + 1}, group)
        # The next two, aborted: neither their outputs nor their offsets may survive.
        await producer.begin_transaction()
        for record in records[2:]:
            await producer.send(sink, b"aborted-" + record.value, key=record.key)
        await producer.send_offsets_to_transaction({partition: records[3].offset + 1}, group)
        await producer.abort_transaction()
        assert await consumer.committed(partition) == 2
    finally:
        await producer.stop()
        await consumer.stop()

    committed_reader = AIOKafkaConsumer(
        sink,
        bootstrap_servers=bootstrap_servers,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    uncommitted_reader = AIOKafkaConsumer(
        sink,
        bootstrap_servers=bootstrap_servers,
        auto_offset_reset="earliest",
        isolation_level="read_uncommitted",
    )
    await committed_reader.start()
    await uncommitted_reader.start()
    try:
        assert [r.value for r in await drain(committed_reader)] == [b"out-0", b"out-1"]
        # The aborted records were written and are visible to a read_uncommitted reader: the
        # read_committed result above is the isolation level at work, not a missing write.
        assert [r.value for r in await drain(uncommitted_reader)] == [
            b"out-0",
            b"out-1",
            b"aborted-in-2",
            b"aborted-in-3",
        ]
    finally:
        await committed_reader.stop()
        await uncommitted_reader.stop()
