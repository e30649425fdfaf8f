"""The mediation in FastStream (0.7, aiokafka), one message at a time: the peer a Python team
would otherwise write, as FastStream's documentation writes it.

Idioms, each from FastStream's documentation:
- a subscriber with a consumer group and `ack_policy=AckPolicy.NACK_ON_ERROR`: at-least-once
  ("commit offset AFTER the message is processed", Kafka / Acknowledgement). The default,
  ACK_FIRST, is aiokafka's auto-commit: at-most-once. NACK_ON_ERROR commits like ACK on
  success, but leaves a failed message uncommitted and seeks back to it (ACK commits it anyway),
  so it is the policy that keeps bus's guarantee; the happy path, which the bench measures, is
  the same for both: one `consumer.commit()` after each handler returns.
- a custom `decoder=` with fastavro's schemaless_reader (Serialization / Avro), and `NoCast`
  so the decoded record is not re-validated by pydantic (Serialization / Protobuf);
- two publisher objects (`broker.publisher(topic)`) called inside the handler, since a route
  picks one of two topics per message; `publish` waits for the broker's ack (no_confirm=False,
  the default) before the handler returns, so the offset is committed after the output is
  acknowledged. The producer uses acks="all", like the raw loops and bus.
- run as `faststream run` runs an app: uvloop when it is installed, SIGTERM → graceful stop.

The broker's per-message log lines ("Received", "Processed") are logged at DEBUG (`log_level`),
so the subject prints nothing per message.

    python -m bench.subjects.faststream_each --bootstrap B --source T --eu T --us T --group G

`--max-workers N` (default 1) uses FastStream's concurrent subscriber (N consumers in the group,
partitions shared among them, each committing after its own messages): not part of the scenario,
for comparing by hand.
"""

import argparse
import io
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any, cast

import anyio
import fastavro
from aiokafka import ConsumerRecord
from faststream import FastStream, NoCast
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.message import StreamMessage
from faststream.middlewares import AckPolicy

from bench.workload import (
    INPUT_PREFIX_LENGTH,
    INPUT_SCHEMA,
    OUTPUT_PREFIX,
    OUTPUT_SCHEMA,
    mediate,
    output_headers,
)

# Per-message log lines at DEBUG: below the default INFO level, so never printed.
QUIET = logging.DEBUG


def arguments(description: str) -> argparse.Namespace:
    """The raw subjects' command line (bench.subjects.raw_pipe), plus FastStream's worker count."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--eu", required=True)
    parser.add_argument("--us", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--max-workers", type=int, default=1)
    return parser.parse_args()


def decode_value(value: bytes) -> dict[str, Any]:
    """A CustomerChanged from its single-object encoded value (the fingerprint is not checked:
    every record of the bench has the one writer schema)."""
    return fastavro.schemaless_reader(  # type: ignore[return-value]
        io.BytesIO(value[INPUT_PREFIX_LENGTH:]), INPUT_SCHEMA, None
    )


def encode_value(data: dict[str, Any]) -> bytes:
    """A CustomerUpsertRequest in single-object encoding."""
    out = io.BytesIO()
    out.write(OUTPUT_PREFIX)
    fastavro.schemaless_writer(out, OUTPUT_SCHEMA, data)
    return out.getvalue()


def event_time(headers: dict[str, str]) -> datetime:
    """The CloudEvents `time` attribute (what bus's flow maps to requestedAt)."""
    return datetime.fromisoformat(headers["ce_time"])


async def decoder(message: StreamMessage[Any]) -> dict[str, Any]:
    """The subscriber's custom decoder (FastStream's Avro example)."""
    return decode_value(message.body)


def run(app: FastStream) -> None:
    """Run `app` the way `faststream run` does: uvloop when installed, until SIGTERM/SIGINT."""
    backend_options: dict[str, Callable[[], Any]] = {}
    try:
        import uvloop  # noqa: PLC0415 -- optional, as in faststream's CLI

        backend_options["loop_factory"] = uvloop.new_event_loop
    except ImportError:
        pass
    anyio.run(app.run, logging.INFO, None, backend_options=backend_options)


def build(options: argparse.Namespace) -> FastStream:
    broker = KafkaBroker(options.bootstrap, acks="all", log_level=QUIET)
    eu = broker.publisher(options.eu)
    us = broker.publisher(options.us)

    @broker.subscriber(  # type: ignore[untyped-decorator]
        options.source,
        group_id=options.group,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        decoder=decoder,
        max_workers=options.max_workers,
    )
    async def customer_changed(data: NoCast[dict[str, Any]], message: KafkaMessage) -> None:
        result = mediate(data, event_time(message.headers))
        if result is None:
            return  # filtered out: only the commit
        region, upsert = result
        record = cast("ConsumerRecord[bytes, bytes]", message.raw_message)  # one, not a batch
        headers = output_headers(list(record.headers), message.headers["ce_id"])
        await (us if region == "US" else eu).publish(
            encode_value(upsert),
            key=record.key,
            headers={name: value.decode() for name, value in headers},
        )

    return FastStream(broker)


def main() -> None:
    run(build(arguments(__doc__.split("\n\n")[0])))


if __name__ == "__main__":
    main()
