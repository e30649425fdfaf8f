"""The topic load generator, a process of its own so its work never counts against a subject.

    python -m bench.load --bootstrap B --topic T [--topic T2 ...] --events N [--rate R]

Without --rate it preloads N records (workload.encoded_records: ~1 KB CustomerChanged events
written by bus's codec) into every topic given, as fast as the broker takes them (acks=all,
batched sends); the pipe scenarios then start their subject on a full topic. Several topics in
one call save a process start and N encodings per repetition. With --rate it produces N records
to one topic at R records/s (the soak), in ticks of 10 ms so the load is even.

Prints one JSON line: how many records, how many bytes, how long it took and the achieved rate.
"""

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Sequence

from aiokafka import AIOKafkaProducer

from bench.workload import encoded_records
from bus.events.codec import KafkaRecord

TICK_S = 0.01
# Records encoded for a paced run: cycled, so a 10-minute soak does not encode millions first.
PACED_DISTINCT = 20_000
GATHER_EVERY = 5_000  # sends awaited in chunks: bounded memory, the producer still batches


async def preload(
    producer: AIOKafkaProducer, topics: Sequence[str], records: list[KafkaRecord]
) -> None:
    pending: list[Awaitable[object]] = []
    for topic in topics:
        for record in records:
            pending.append(
                await producer.send(
                    topic, record.value, key=record.key, headers=list(record.headers)
                )
            )
            if len(pending) >= GATHER_EVERY:
                await asyncio.gather(*pending)
                pending.clear()
    await asyncio.gather(*pending)


async def paced(
    producer: AIOKafkaProducer, topic: str, records: list[KafkaRecord], events: int, rate: float
) -> None:
    pending: list[Awaitable[object]] = []
    started = time.perf_counter()
    sent = 0
    while sent < events:
        due = min(events, int((time.perf_counter() - started) * rate) + 1)
        for number in range(sent, due):
            record = records[number % len(records)]
            pending.append(
                await producer.send(
                    topic, record.value, key=record.key, headers=list(record.headers)
                )
            )
        sent = due
        if len(pending) >= GATHER_EVERY:
            await asyncio.gather(*pending)
            pending.clear()
        await asyncio.sleep(TICK_S)
    await asyncio.gather(*pending)


async def main(arguments: argparse.Namespace) -> dict[str, object]:
    distinct = arguments.events if arguments.rate is None else min(arguments.events, PACED_DISTINCT)
    records = await encoded_records(distinct)
    producer = AIOKafkaProducer(
        bootstrap_servers=arguments.bootstrap,
        acks="all",
        linger_ms=5,
        max_batch_size=256 * 1024,
        max_request_size=4 * 1024 * 1024,
    )
    await producer.start()
    started = time.perf_counter()
    try:
        if arguments.rate is None:
            await preload(producer, arguments.topic, records)
        else:
            await paced(producer, arguments.topic[0], records, arguments.events, arguments.rate)
    finally:
        await producer.stop()
    seconds = time.perf_counter() - started
    produced = arguments.events * (len(arguments.topic) if arguments.rate is None else 1)
    return {
        "topics": arguments.topic,
        "records": produced,
        "record_bytes": len(records[0].value),
        "seconds": round(seconds, 3),
        "rate": round(produced / seconds, 1),
    }


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.load", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True, action="append", help="repeatable (preload)")
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--rate", type=float, help="records/s into the first topic (soak)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(parse()))), flush=True)
