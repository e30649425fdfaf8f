"""The HTTP load generator of the ingest scenarios: a process of its own, so the endpoint under
test is measured alone. It prints one JSON line.

    python -m bench.http_load fixed --url U --concurrency C --requests N \
        [--header K:V]... [--hmac-secret S] [--body-kind customer]
    python -m bench.http_load e2e --url U --rate R --seconds S --sink-port P \
        [--header K:V]... [--hmac-secret S] [--drain-seconds D]

`fixed`: C connections send N requests back to back (closed loop): the endpoint's throughput
and its latency under that concurrency. `e2e`: requests leave at a fixed rate (open loop, one
task per request, so a slow answer does not delay the next request), and a sink server in this
process plays the outbound REST target: the latency is from a request's departure to its
delivery at the sink (one clock, this process's), correlated by customer id (the last segment
of the sink's path: `/customers/{customerId}`).

Bodies are the CRM's customer webhooks as examples/flows/customers.yaml maps them (the demo's
CRM sends the same shape), every one a customer the mediation keeps (UPDATED, with an address),
with ids unique to this run. With `--hmac-secret` each is signed like the CRM signs
(X-Hub-Signature-256 over the body, an X-GitHub-Delivery id). Requests, bodies and signatures
are made before the clock starts.
"""

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from bench.measure import percentile

BODY_KINDS = ("customer",)
E2E_CONNECTIONS = 256


@dataclass(frozen=True)
class Request:
    customer_id: str
    body: bytes
    headers: dict[str, str]

    def wire(self, url: "Target") -> bytes:
        """The whole HTTP/1.1 request, made once before the clock starts."""
        lines = [f"POST {url.path} HTTP/1.1", f"Host: {url.host}:{url.port}"]
        lines += [f"{name}: {value}" for name, value in self.headers.items()]
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    path: str

    @classmethod
    def of(cls, url: str) -> "Target":
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"an http:// URL is needed, not {url!r}")
        return cls(parts.hostname, parts.port or 80, parts.path or "/")


class Connection:
    """One keep-alive HTTP/1.1 connection. A lean client on purpose: aiohttp's client took more
    CPU per request than the raw-ingest endpoint it measured, and on a 2-core machine the
    generator takes that CPU from the subject. Answers must carry Content-Length (aiohttp's
    server sends it)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.reusable = True

    @classmethod
    async def open(cls, target: Target) -> "Connection":
        reader, writer = await asyncio.open_connection(target.host, target.port)
        return cls(reader, writer)

    async def exchange(self, wire: bytes) -> int:
        """Send one request, read its whole answer, return the status."""
        self.writer.write(wire)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        at = lower.find(b"\r\ncontent-length:")
        if at < 0:
            raise ConnectionError(f"an answer without Content-Length: {head[:200]!r}")
        length = int(lower[at + 17 : lower.index(b"\r\n", at + 2)])
        if length:
            await self.reader.readexactly(length)
        self.reusable = b"\r\nconnection: close" not in lower
        return status

    def close(self) -> None:
        self.writer.close()


class Pool:
    """At most `size` connections to `target`, reused."""

    def __init__(self, target: Target, size: int, timeout: float) -> None:
        self.target = target
        self.slots = asyncio.Semaphore(size)
        self.idle: list[Connection] = []
        self.timeout = timeout

    async def exchange(self, wire: bytes) -> int:
        async with self.slots:
            connection = self.idle.pop() if self.idle else None
            try:
                async with asyncio.timeout(self.timeout):
                    if connection is None:
                        connection = await Connection.open(self.target)
                    status = await connection.exchange(wire)
            except BaseException:
                if connection is not None:
                    connection.close()
                raise
            if connection.reusable:
                self.idle.append(connection)
            else:
                connection.close()
            return status

    def close(self) -> None:
        for connection in self.idle:
            connection.close()


def webhook(customer_id: str, number: int) -> dict[str, Any]:
    """The CRM's webhook for a change of customer `customer_id` (a customer the mediation keeps:
    updated, with an address; half in the EU, half in the US)."""
    return {
        "event": "customer.updated",
        "occurred_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "customer": {
            "id": customer_id,
            "email": f"customer{number}@example.com",
            "first_name": "Customer",
            "last_name": f"{number} Holdings Limited",
            "phone": "+44 20 7946 0000",
            "address": {
                "line1": f"{number} St James's Square",
                "city": "London" if number % 2 else "New York",
                "postal_code": "SW1Y 4JH",
                "country": "GB" if number % 2 else "US",
            },
            "tags": ["vip", "newsletter", "enterprise"],
        },
    }


def requests(count: int, headers: dict[str, str], secret: str | None) -> list[Request]:
    """`count` requests with customer ids unique to this run."""
    run = uuid.uuid4().hex[:8]
    made = []
    for number in range(count):
        customer_id = f"c-{run}-{number}"
        body = json.dumps(webhook(customer_id, number), separators=(",", ":")).encode()
        signed = {"Content-Type": "application/json", **headers}
        if secret is not None:
            digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
            signed["X-Hub-Signature-256"] = f"sha256={digest}"
            signed["X-GitHub-Delivery"] = str(uuid.uuid4())
        made.append(Request(customer_id, body, signed))
    return made


def latencies(values_ms: Sequence[float]) -> dict[str, float | None]:
    if not values_ms:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    return {
        "p50_ms": round(percentile(values_ms, 0.50), 3),
        "p99_ms": round(percentile(values_ms, 0.99), 3),
        "max_ms": round(max(values_ms), 3),
    }


@dataclass
class Answers:
    """What the endpoint answered: status counts (`error` for no answer) and latencies."""

    status: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    async def post(self, pool: Pool, wire: bytes) -> int:
        started = time.perf_counter()
        try:
            code = await pool.exchange(wire)
        except (OSError, EOFError, ValueError, asyncio.IncompleteReadError, TimeoutError) as error:
            self.status["error"] += 1
            if len(self.errors) < 5:  # enough to say what went wrong
                self.errors.append(repr(error))
            return 0
        self.latencies_ms.append((time.perf_counter() - started) * 1000)
        self.status[str(code)] += 1
        return code


async def fixed(options: argparse.Namespace) -> dict[str, Any]:
    target = Target.of(options.url)
    work = requests(options.requests, options.header, options.hmac_secret)
    wires = [request.wire(target) for request in work]
    answers = Answers()
    pending = iter(wires)
    pool = Pool(target, options.concurrency, options.timeout)

    async def worker() -> None:
        for wire in pending:  # one shared iterator: each request is sent once
            await answers.post(pool, wire)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(options.concurrency)))
    elapsed = time.perf_counter() - started
    pool.close()
    return {
        "mode": "fixed",
        "requests": len(work),
        "concurrency": options.concurrency,
        "seconds": round(elapsed, 3),
        "rate": round(len(work) / elapsed, 1),
        **latencies(answers.latencies_ms),
        "status": dict(answers.status),
        "errors": answers.errors,
        "body_bytes": round(sum(len(r.body) for r in work) / max(1, len(work))),
    }


class Sink:
    """The outbound REST target: notes when each customer's delivery arrives, answers 200."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.duplicates = 0
        self.strays = 0  # deliveries of customers this run did not send (an earlier run's)
        self.expected: set[str] = set()
        self.changed = asyncio.Event()

    async def deliver(self, request: web.Request) -> web.Response:
        now = time.perf_counter()
        await request.read()
        customer_id = request.match_info["customer_id"]
        if customer_id not in self.expected:
            self.strays += 1
        elif customer_id in self.arrived:
            self.duplicates += 1
        else:
            self.arrived[customer_id] = now
            self.changed.set()
        return web.json_response({"ok": True})

    @contextlib.asynccontextmanager
    async def running(self, port: int) -> Any:
        app = web.Application()
        app.router.add_route("*", "/customers/{customer_id}", self.deliver)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", port).start()
            yield self
        finally:
            await runner.cleanup()


async def e2e(options: argparse.Namespace) -> dict[str, Any]:
    count = max(1, round(options.rate * options.seconds))
    target = Target.of(options.url)
    work = requests(count, options.header, options.hmac_secret)
    wires = {request.customer_id: request.wire(target) for request in work}
    sink = Sink()
    sink.expected = {request.customer_id for request in work}
    answers = Answers()
    sent_at: dict[str, float] = {}
    accepted: set[str] = set()
    lag_ms: list[float] = []
    # Open loop, but over a bounded pool, as a webhook sender has: past saturation requests wait
    # for a connection here (their latency counts from departure, so the wait is in it) instead
    # of opening thousands of connections that overflow the server's accept backlog.
    pool = Pool(target, E2E_CONNECTIONS, options.timeout)
    async with sink.running(options.sink_port):

        async def send(request: Request) -> None:
            sent_at[request.customer_id] = time.perf_counter()
            if await answers.post(pool, wires[request.customer_id]) == 202:
                accepted.add(request.customer_id)

        tasks = []
        started = time.perf_counter()
        interval = 1 / options.rate
        for number, request in enumerate(work):
            due = started + number * interval
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                lag_ms.append(-delay * 1000)  # the sender itself is late: say so
            tasks.append(asyncio.create_task(send(request)))
        offering = time.perf_counter() - started
        await asyncio.gather(*tasks)
        deadline = time.perf_counter() + options.drain_seconds
        while not accepted <= sink.arrived.keys() and time.perf_counter() < deadline:
            sink.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sink.changed.wait(), deadline - time.perf_counter())
        pool.close()
    delivered = [sink.arrived[c] - sent_at[c] for c in accepted if c in sink.arrived]
    last = max((sink.arrived[c] for c in accepted if c in sink.arrived), default=started)
    return {
        "mode": "e2e",
        "rate": options.rate,
        "sent": len(work),
        # what the sender achieved (below `rate` when it could not keep up itself)
        "offered_rate": round(len(work) / max(offering, interval), 1),
        # deliveries per second, from the first request to the last delivery: below the
        # offered rate when the pipeline is saturated
        "delivered_rate": round(len(delivered) / max(last - started, interval), 1),
        "accepted": len(accepted),
        "delivered": len(delivered),
        "missing": len(accepted) - len(delivered),
        "duplicates": sink.duplicates,
        "strays": sink.strays,
        **latencies([seconds * 1000 for seconds in delivered]),
        "request": latencies(answers.latencies_ms),
        "sender_late_max_ms": round(max(lag_ms, default=0.0), 3),
        "status": dict(answers.status),
        "errors": answers.errors,
        "body_bytes": round(sum(len(r.body) for r in work) / max(1, len(work))),
    }


def header(text: str) -> tuple[str, str]:
    name, separator, value = text.partition(":")
    if not separator or not name.strip():
        raise argparse.ArgumentTypeError(f"not a header K:V: {text!r}")
    return name.strip(), value.strip()


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    with contextlib.suppress(ImportError):
        import uvloop  # noqa: PLC0415 -- optional: the generator should not be the bottleneck

        factory: Callable[[], Any] = uvloop.new_event_loop
        return factory
    return None


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", required=True)
    common.add_argument("--header", type=header, action="append", default=[])
    common.add_argument("--hmac-secret", help="sign like the CRM (GitHub's scheme)")
    common.add_argument("--body-kind", choices=BODY_KINDS, default="customer")
    common.add_argument("--timeout", type=float, default=30.0, help="per request, seconds")
    one = modes.add_parser("fixed", parents=[common], help="closed loop, fixed concurrency")
    one.add_argument("--concurrency", type=int, required=True)
    one.add_argument("--requests", type=int, required=True)
    two = modes.add_parser("e2e", parents=[common], help="fixed rate, deliveries to a sink")
    two.add_argument("--rate", type=float, required=True)
    two.add_argument("--seconds", type=float, required=True)
    two.add_argument("--sink-port", type=int, required=True)
    two.add_argument("--drain-seconds", type=float, default=15.0)
    options = parser.parse_args(argv)
    options.header = dict(options.header)
    return options


def main() -> None:
    options = parse()
    run = fixed if options.mode == "fixed" else e2e
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        print(json.dumps(runner.run(run(options))), flush=True)


if __name__ == "__main__":
    main()
