"""bus.kafka_batches on the real broker: records land where `send` would put them, at the
offsets it reports, in order per key, many records per batch, and nothing else is written."""

from collections import defaultdict
from collections.abc import Awaitable, Callable

from bus.kafka_batches import Write, send_batched
from bus.kafka_clients import durable_producer
from tests.flow_harness import read_records


async def test_batched_records_land_where_send_puts_them_in_order_at_the_reported_offsets(
    bootstrap_servers: str,
    topic_name: Callable[[str], str],
    create_topics: Callable[..., Awaitable[None]],
) -> None:
    batched, sent_one_by_one = topic_name("batched"), topic_name("sent")
    await create_topics(batched, sent_one_by_one, partitions=6)
    keys = [f"k-{number % 37}".encode() for number in range(400)]
    writes = [
        Write(batched, key, f"{key.decode()}#{index}".encode() * 40, [("n", str(index).encode())])
        for index, key in enumerate(keys)
    ]
    # A small max_batch_size: a partition's records span several batches, still in order.
    producer = durable_producer(bootstrap_servers, max_batch_size=16 * 1024)
    await producer.start()
    try:
        places = await send_batched(producer, writes)
        for place in places:
            await place.ack
        expected_partition = {}
        for key in set(keys):
            landed = await producer.send_and_wait(sent_one_by_one, b"x", key=key)
            expected_partition[key] = landed.partition
    finally:
        await producer.stop()

    assert len({id(place.ack) for place in places}) > 6  # several batches per partition
    records = await read_records(bootstrap_servers, batched, len(writes))
    assert len(records) == len(writes)
    at = {(record.partition, record.offset): record for record in records}
    for write, place in zip(writes, places, strict=True):
        assert place.partition == expected_partition[write.key]
        record = at[(place.partition, place.offset)]
        assert (record.key, record.value, list(record.headers)) == (
            write.key, write.value, list(write.headers),
        )  # fmt: skip
    by_key: dict[bytes, list[int]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        by_key[record.key].append(int(dict(record.headers)["n"]))
    assert all(numbers == sorted(numbers) for numbers in by_key.values())


async def test_a_record_bigger_than_a_batch_goes_alone_and_an_empty_list_sends_nothing(
    bootstrap_servers: str,
    topic_name: Callable[[str], str],
    create_topics: Callable[..., Awaitable[None]],
) -> None:
    topic = topic_name("big")
    await create_topics(topic, partitions=1)
    producer = durable_producer(bootstrap_servers, max_batch_size=1024)
    await producer.start()
    try:
        assert await send_batched(producer, []) == []
        places = await send_batched(
            producer, [Write(topic, b"k", b"x" * 5000, []), Write(topic, b"k", b"y", [])]
        )
        for place in places:
            await place.ack
    finally:
        await producer.stop()
    assert [place.offset for place in places] == [0, 1]
    assert places[0].ack is not places[1].ack
