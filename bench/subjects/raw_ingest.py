"""The inbound limit: a minimal aiohttp handler that stores each request body in Kafka and answers
202 once the broker has acknowledged it.

No authentication, no validation, no mapping, no Avro: `POST /events` → `send_and_wait(body)` →
202. The producer gives bus's inbound guarantee (acks=all, idempotent producer), so the
comparison with bus-ingest is between two endpoints that promise the same thing about a 202.
uvloop is used when installed (as `bus run` does), and no access log is written.

    python -m bench.subjects.raw_ingest --bootstrap B --topic T --port P

Runs until SIGTERM or SIGINT, then stops the server and the producer and exits 0.
"""

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiokafka import AIOKafkaProducer

PRODUCER = web.AppKey("producer", AIOKafkaProducer)
TOPIC = web.AppKey("topic", str)


async def store(request: web.Request) -> web.Response:
    body = await request.read()
    await request.app[PRODUCER].send_and_wait(request.app[TOPIC], body)
    return web.Response(status=202)


async def serve(bootstrap: str, topic: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, stop.set)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    app = web.Application()
    app[PRODUCER] = producer
    app[TOPIC] = topic
    app.router.add_post("/events", store)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await stop.wait()
    finally:
        await runner.cleanup()  # stops accepting, lets the requests under way finish
        await producer.stop()


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed, else asyncio's."""
    with contextlib.suppress(ImportError):
        import uvloop  # noqa: PLC0415 -- optional

        factory: Callable[[], Any] = uvloop.new_event_loop
        return factory
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--port", type=int, required=True)
    options = parser.parse_args()
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(serve(options.bootstrap, options.topic, options.port))


if __name__ == "__main__":
    main()
