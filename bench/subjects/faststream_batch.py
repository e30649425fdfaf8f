"""The mediation in FastStream (0.7, aiokafka), a batch at a time: FastStream's batch subscriber
with its batch publisher, at-least-once.

Idioms, from FastStream's documentation (Kafka / Batch Subscriber, Kafka / Publishing in
batches, Kafka / Acknowledgement), as in bench.subjects.faststream_each otherwise:
- `@broker.subscriber(topic, batch=True, max_records=500, ack_policy=AckPolicy.NACK_ON_ERROR)`:
  the handler gets up to 500 records (aiokafka's getmany); the offsets are committed once, after
  the handler returns.
- `broker.publisher(topic, batch=True)` and `publish(*bodies)` with `KafkaResponse(body, key=…)`
  for per-message keys; every publish waits for the broker's ack (acks="all"), and the handler
  gathers them, so the commit follows the acknowledged outputs.

What the batch publisher cannot express, and how this subject deals with it:
- A batch goes to ONE partition (aiokafka's send_batch): published as a whole, the outputs of
  different customers would land on one random partition, and a key's order would be lost
  across handler calls. To keep bus's per-key order (and the raw loops' output layout) the
  handler groups outputs by (topic, partition), choosing the partition as aiokafka's default
  partitioner does for a key, and publishes one batch per group with `partition=`.
- Headers are per batch, not per message: the outputs carry the constant CloudEvents headers
  (specversion, type, source, content-type) but no per-event ce_id, ce_time or ce_subject.
  bus and the other subjects write those; this subject does less work there.
- The producer's `max_batch_size` is raised to 1 MiB (FastStream's default, 16 KiB, overflows
  at ~140 outputs of this workload: BatchBufferOverflowException).

    python -m bench.subjects.faststream_batch --bootstrap B --source T --eu T --us T --group G
"""

import asyncio
from collections import defaultdict
from typing import Any, cast

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from faststream import FastStream, NoCast
from faststream.kafka import KafkaBroker, KafkaResponse
from faststream.kafka.annotations import KafkaMessage
from faststream.message import StreamMessage
from faststream.middlewares import AckPolicy

from bench.subjects.faststream_each import (
    QUIET,
    arguments,
    decode_value,
    encode_value,
    event_time,
    run,
)
from bench.workload import OUTPUT_TYPE, mediate

MAX_RECORDS = 500
MAX_BATCH_BYTES = 2**20
# The headers every output of a batch shares (per-message headers do not exist in a batch).
BATCH_HEADERS = {
    "ce_specversion": "1.0",
    "ce_type": OUTPUT_TYPE,
    "ce_source": "/bench",
    "content-type": "application/avro",
}


async def batch_decoder(message: StreamMessage[Any]) -> list[dict[str, Any]]:
    """The batch subscriber's custom decoder: every value of the batch, with fastavro."""
    values = cast("list[bytes]", message.body)  # a batch's body is the list of its values
    return [decode_value(value) for value in values]


async def partition_counts(bootstrap: str, topics: list[str]) -> dict[str, list[int]]:
    """Each output topic's partitions, for choosing a key's partition as aiokafka would."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        return {topic: sorted(await producer.partitions_for(topic)) for topic in topics}
    finally:
        await producer.stop()


def build(options: Any) -> FastStream:
    broker = KafkaBroker(
        options.bootstrap, acks="all", max_batch_size=MAX_BATCH_BYTES, log_level=QUIET
    )
    publishers = {
        "EU": broker.publisher(options.eu, batch=True),
        "US": broker.publisher(options.us, batch=True),
    }
    topics = {"EU": options.eu, "US": options.us}
    partitions: dict[str, list[int]] = {}
    partitioner = DefaultPartitioner()

    @broker.subscriber(
        options.source,
        batch=True,
        max_records=MAX_RECORDS,
        group_id=options.group,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        decoder=batch_decoder,
    )
    async def customer_changes(batch: NoCast[list[dict[str, Any]]], message: KafkaMessage) -> None:
        groups: defaultdict[tuple[str, int], list[KafkaResponse]] = defaultdict(list)
        for data, record, headers in zip(
            batch, message.raw_message, message.batch_headers, strict=True
        ):
            result = mediate(data, event_time(headers))
            if result is None:
                continue
            region, upsert = result
            every = partitions[topics[region]]
            partition = partitioner(record.key, every, every)
            groups[region, partition].append(KafkaResponse(encode_value(upsert), key=record.key))
        await asyncio.gather(
            *(
                publishers[region].publish(*outputs, partition=partition, headers=BATCH_HEADERS)
                for (region, partition), outputs in groups.items()
            )
        )

    app = FastStream(broker)

    @app.on_startup
    async def learn_partitions() -> None:
        partitions.update(await partition_counts(options.bootstrap, list(topics.values())))

    return app


def main() -> None:
    run(build(arguments(__doc__.split("\n\n")[0])))


if __name__ == "__main__":
    main()
