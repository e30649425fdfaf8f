"""Issue item 1, the limit for a flow that does not decode: a hand-written aiokafka loop that
passes records through untouched, routed by key as `workload.passthrough_flow` routes them.

    python -m bench.subjects.raw_pipe --bootstrap B --source T --eu T --us T --group G

The loop: getmany (up to 500 records), send every record of the batch without awaiting each
(the producer batches them), gather the acknowledgements, then commit the batch's offsets:
at-least-once, with the producer settings bus uses (acks=all, idempotent, linger 5 ms), so the
comparison is of the loops, not of the guarantees. Runs until SIGTERM, then finishes the batch in
hand, leaves the group and exits 0. Runs on uvloop when it is installed.

`run_pipe` is shared with raw_avro_pipe, which passes its own per-record function.
"""

import argparse
import asyncio
import signal
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata

BATCH = 500

# One output of one input record: (topic, key, value, headers), or None when it is dropped.
Output = tuple[str, bytes | None, bytes, list[tuple[str, bytes]]] | None
Handle = Callable[[ConsumerRecord[bytes, bytes]], Output]


def router(eu: str, us: str) -> Handle:
    """The pass-through: keys ending in 1 or 3 go to the US topic, the rest to the EU one."""

    def handle(record: ConsumerRecord[bytes, bytes]) -> Output:
        key = record.key or b""
        topic = us if key.endswith((b"1", b"3")) else eu
        return topic, record.key, record.value, list(record.headers)

    return handle


async def run_pipe(arguments: argparse.Namespace, handle: Handle) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    consumer = AIOKafkaConsumer(
        arguments.source,
        bootstrap_servers=arguments.bootstrap,
        group_id=arguments.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=arguments.bootstrap, acks="all", enable_idempotence=True, linger_ms=5
    )
    await producer.start()
    await consumer.start()
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=250, max_records=BATCH)
            if not batch:
                continue
            acks: list[Awaitable[object]] = []
            offsets: dict[TopicPartition, OffsetAndMetadata] = {}
            for partition, records in batch.items():
                for record in records:
                    output = handle(record)
                    if output is not None:
                        topic, key, value, headers = output
                        acks.append(await producer.send(topic, value, key=key, headers=headers))
                offsets[partition] = OffsetAndMetadata(records[-1].offset + 1, "")
            await asyncio.gather(*acks)  # every output on the brokers before the commit
            await consumer.commit(offsets)
    finally:
        await consumer.stop()
        await producer.stop()


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for option in ("--bootstrap", "--source", "--eu", "--us", "--group"):
        parser.add_argument(option, required=True)
    return parser.parse_args(argv)


def run(main: Coroutine[Any, Any, None]) -> None:
    """uvloop when installed, else asyncio's loop."""
    try:
        import uvloop  # noqa: PLC0415 -- optional

        uvloop.run(main)
    except ImportError:
        asyncio.run(main)


if __name__ == "__main__":
    arguments = parse()
    run(run_pipe(arguments, router(arguments.eu, arguments.us)))
