"""`Pipeline`: inbound REST -> mediation -> outbound REST, run by `bus run` as a real subprocess.

The flow file it writes (topics and item names unique to the pipeline, so several share a
broker):

- inbound `<id>-in`: `POST /hooks/customers` on its own free port; the JSON body becomes a
  `com.acme.crm.CustomerChanged` event on topic A, keyed by the customer id;
- mediation `<id>-mediate`: A -> B, a `filter` and a `transform` into
  `com.acme.erp.CustomerUpsertRequest`, so mediation really decodes and encodes;
- outbound `<id>-out`: B -> `PUT {sink}/customers/{customerId}` of a `ChaosSink`, the event id
  as `Idempotency-Key` (the bus always sends it), the body `{"seq", "email"}`;
- dead-letter topics for both, the admin API on a free port (`/readyz` says when it runs).

The load driver gives every event a sequence number `seq` (its `name` in the webhook body, which
the mediation copies into `legalName` and the outbound into the body's `seq`) and an
`Idempotency-Key` of its own, so a request retried after a 503 or a dropped connection is the
same event (the same id on A, hence on B: the sink sees one key). An event counts as *accepted*
once the bus answered 202; it is retried (after Retry-After, at most `RETRY_PAUSE_MAX_S`) on
503, 500 and connection errors until accepted or the load is stopped.

Usage::

    async with ChaosSink() as sink, Pipeline(bootstrap, tmp_path, sink) as pipeline:
        await pipeline.start_bus()
        await pipeline.send(100, keys=10)
        await pipeline.wait_delivered(within=60)
        assert pipeline.tally()["lost"] == 0
"""

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiohttp
from aiokafka import AIOKafkaConsumer

from bus.kafka_topics import topic_partitions
from bus.processes import die_with_parent, free_ports
from tests.chaos.sink import ChaosSink
from tests.flow_harness import customer_webhook

ROOT = Path(__file__).resolve().parents[2]
RETRY_PAUSE_MAX_S = 1.0  # the load driver's longest pause before sending a refused event again
STOPPED_CLEANLY = "stopped: in-flight work finished and committed"


@dataclass(frozen=True, slots=True)
class Knobs:
    """What the flow file says; defaults are the bus's own where it has one."""

    partitions: int = 6
    mediation_max_in_flight: int = 100
    delivery_max_in_flight: int = 10
    retry_attempts: int = 20
    backoff_initial: str = "100ms"
    backoff_max: str = "2s"
    timeout: str = "5s"
    breaker_failures: int | None = None  # None: no circuit breaker
    breaker_reset_after: str = "2s"
    rate_limit: str | None = None
    shutdown_grace: int = 20
    journeys: bool = True


@dataclass
class LoadResult:
    """What the load driver did: seq -> event id of each accepted event, and the refusals."""

    sent: set[int] = field(default_factory=set)  # seqs posted at least once
    accepted: dict[int, str] = field(default_factory=dict)  # seq -> event id (from the 202)
    refusals: Counter[str] = field(default_factory=Counter)  # "503", "connection", ...
    rejected: dict[int, str] = field(default_factory=dict)  # seq -> a 4xx answer, never retried


class Pipeline:
    """One flow file, one `bus run` process at a time (restartable), one load driver."""

    def __init__(
        self,
        bootstrap_servers: str,
        folder: Path,
        sink: ChaosSink,
        knobs: Knobs | None = None,
        **overrides: Any,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.folder = folder
        self.sink = sink
        self.knobs = Knobs(**overrides) if knobs is None else knobs
        self.id = f"chaos-{uuid.uuid4().hex[:8]}"
        self.topic_a = f"{self.id}.customer-changed"
        self.topic_b = f"{self.id}.customer-upsert"
        self.http_port, self.admin_port = free_ports(2)
        self.url = f"http://127.0.0.1:{self.http_port}/hooks/customers"
        self.admin_url = f"http://127.0.0.1:{self.admin_port}"
        self.flow = folder / f"{self.id}.yaml"
        self.flow.write_text(self._flow_text())
        self.log = folder / f"{self.id}.log"
        self.load = LoadResult()
        self.starts = 0
        self.kills = 0
        self.exit_codes: list[int] = []
        self._process: subprocess.Popen[bytes] | None = None
        self._log_start = 0
        self._next_seq = 0
        self._session: aiohttp.ClientSession | None = None
        self._load_task: asyncio.Task[None] | None = None
        self._load_stop = asyncio.Event()

    async def __aenter__(self) -> Self:
        # Enough connections for any concurrency a test asks for; no keep-alive surprises
        # across restarts: a connection to a killed bus fails and the driver retries.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=False),
            timeout=aiohttp.ClientTimeout(total=30),
        )
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            await self.stop_load()
        finally:
            if self.bus_running:
                self.kill_bus()
            if self._session is not None:
                await self._session.close()

    # -- the flow file ---------------------------------------------------------------------

    def _flow_text(self) -> str:
        k = self.knobs
        breaker = (
            f"    circuit_breaker: {{failures: {k.breaker_failures}, "
            f"reset_after: {k.breaker_reset_after}}}\n"
            if k.breaker_failures is not None
            else ""
        )
        rate = f"    rate_limit: {k.rate_limit}\n" if k.rate_limit is not None else ""
        return f"""\
topics: {{partitions: {k.partitions}, replication_factor: 1}}
http: {{port: {self.http_port}}}
observability:
  journeys: {{enabled: {"true" if k.journeys else "false"}}}
  logs: {{format: text, level: info}}
  admin: {{port: {self.admin_port}}}
{customer_webhook(f"{self.id}-in", self.topic_a).strip()}
mediation:
  - name: {self.id}-mediate
    from: {self.topic_a}
    to: {self.topic_b}
    dlq: {self.id}-mediate.dlq
    max_in_flight: {k.mediation_max_in_flight}
    steps:
      - filter: event.email != ""
      - transform:
          to: com.acme.erp.CustomerUpsertRequest
          map:
            customerId: event.customerId
            legalName: event.name
            email: event.email.lowerAscii()
            billingAddress: event.address
            salesRegion: '"EU"'
            requestedAt: attributes.time
outbound:
  - name: {self.id}-out
    from: {self.topic_b}
    dlq: {self.id}-out.dlq
    rest:
      method: PUT
      url: "{self.sink.url}/customers/{{event.customerId}}"
    map: {{seq: event.legalName, email: event.email}}
    retry: {{attempts: {k.retry_attempts}, backoff: {{initial: {k.backoff_initial}, \
max: {k.backoff_max}}}}}
    timeout: {k.timeout}
    max_in_flight: {k.delivery_max_in_flight}
{breaker}{rate}"""

    # -- the bus process -------------------------------------------------------------------

    @property
    def bus_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start_bus(self, within: float = 120.0) -> None:
        """Start `bus run` and return once its admin API says ready (Kafka answers, every flow
        and delivery holds its partitions) and the inbound endpoint answers."""
        if self.bus_running:
            raise RuntimeError("the bus is already running")
        self._process = self._spawn()
        self.starts += 1
        session = self._require_session()
        try:
            async with asyncio.timeout(within):
                while not await self._ready(session):
                    if self._process.poll() is not None:
                        raise AssertionError(
                            f"bus run exited {self._process.returncode} before it was ready:\n"
                            + self.own_log()[-4000:]
                        )
                    await asyncio.sleep(0.25)
        except TimeoutError as error:
            raise AssertionError(
                f"bus run was not ready within {within} s:\n" + self.own_log()[-4000:]
            ) from error

    def _spawn(self) -> "subprocess.Popen[bytes]":
        self._log_start = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:
            return subprocess.Popen(
                [
                    sys.executable, "-m", "bus", "run", str(self.flow),
                    "--shutdown-grace", str(self.knobs.shutdown_grace),
                ],
                env={
                    **os.environ,
                    "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers,
                    "BUS_SCHEMAS_DIR": str(ROOT / "schemas"),
                },
                cwd=self.folder,
                stdout=subprocess.DEVNULL,
                stderr=log,
                preexec_fn=die_with_parent,  # noqa: PLW1509 -- only prctl, no threads yet
            )  # fmt: skip

    def _running(self) -> "subprocess.Popen[bytes]":
        process = self._process
        if process is None or process.poll() is not None:
            raise RuntimeError("the bus is not running")
        return process

    async def _ready(self, session: aiohttp.ClientSession) -> bool:
        try:
            async with session.get(
                self.admin_url + "/readyz", timeout=aiohttp.ClientTimeout(total=3)
            ) as answer:
                if answer.status != 200:
                    return False
            # The inbound server starts once Kafka can take events: GET is not its method.
            async with session.get(self.url, timeout=aiohttp.ClientTimeout(total=3)) as answer:
                return answer.status == 405
        except (aiohttp.ClientError, TimeoutError):
            return False

    def kill_bus(self) -> None:
        """SIGKILL: no drain, no commit, no goodbye."""
        process = self._running()
        process.kill()
        process.wait(30)
        self.kills += 1

    async def stop_bus(self, within: float | None = None) -> int:
        """SIGTERM, and the exit code once it stopped (it drains and commits first)."""
        process = self._running()
        process.send_signal(signal.SIGTERM)
        limit = within if within is not None else self.knobs.shutdown_grace + 30
        try:
            code = await asyncio.to_thread(process.wait, limit)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(30)
            raise AssertionError(
                f"bus run did not stop within {limit} s of SIGTERM:\n" + self.own_log()[-4000:]
            ) from None
        self.exit_codes.append(code)
        return code

    def own_log(self) -> str:
        """What the current (or last) process wrote."""
        with self.log.open("rb") as log:
            log.seek(self._log_start)
            return log.read().decode(errors="replace")

    # -- the load driver -------------------------------------------------------------------

    async def send(
        self,
        count: int,
        *,
        keys: int = 50,
        rate: float | None = None,
        concurrency: int = 20,
    ) -> LoadResult:
        """Post `count` new events (seqs continue across calls), spread over `keys` customer
        ids, at most `rate` per second (None: as fast as `concurrency` allows). Each is retried
        until accepted, rejected with a 4xx, or the load is stopped. Returns the whole run's
        result so far."""
        first = self._next_seq
        self._next_seq += count
        queue: asyncio.Queue[int] = asyncio.Queue()
        for seq in range(first, first + count):
            queue.put_nowait(seq)
        pace = _Pace(rate)

        async def worker() -> None:
            while not self._load_stop.is_set():
                try:
                    seq = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                await pace.wait()
                await self._post_until_accepted(seq, keys)

        await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, count)))))
        return self.load

    def start_load(
        self,
        count: int,
        *,
        keys: int = 50,
        rate: float | None = None,
        concurrency: int = 20,
    ) -> None:
        """`send` in the background; `await stop_load()` or `await load_done()` ends it."""
        assert self._load_task is None, "a load is already running"
        self._load_stop.clear()
        self._load_task = asyncio.create_task(
            self._send_in_background(count, keys, rate, concurrency)
        )

    async def _send_in_background(
        self, count: int, keys: int, rate: float | None, concurrency: int
    ) -> None:
        await self.send(count, keys=keys, rate=rate, concurrency=concurrency)

    @property
    def load_running(self) -> bool:
        return self._load_task is not None and not self._load_task.done()

    async def load_done(self, within: float = 600.0) -> LoadResult:
        """Wait until the background load has every event accepted (or rejected)."""
        task = self._load_task
        if task is not None:
            async with asyncio.timeout(within):
                await asyncio.shield(task)
            self._load_task = None
        return self.load

    async def stop_load(self) -> LoadResult:
        """Stop the background load: nothing new is sent, events being retried are given up
        (sent, not accepted); requests on the wire finish."""
        task = self._load_task
        if task is not None:
            self._load_stop.set()
            await task
            self._load_task = None
        return self.load

    async def _post_until_accepted(self, seq: int, keys: int) -> None:
        session = self._require_session()
        customer = f"cust-{seq % keys:04d}"
        body = {
            "id": customer,
            "email": f"Customer.{seq}@Example.com",
            "name": f"seq-{seq}",
            "address": {"line1": "1 Main St", "city": "Berlin", "postalCode": "10115",
                        "country": "DE"},
            "at": "2026-11-24T12:00:00Z",
        }  # fmt: skip
        headers = {"Idempotency-Key": f"{self.id}-{seq}"}
        self.load.sent.add(seq)
        while not self._load_stop.is_set():
            pause = 0.2
            try:
                async with session.post(self.url, json=body, headers=headers) as answer:
                    if answer.status == 202:
                        self.load.accepted[seq] = (await answer.json())["id"]
                        return
                    text = await answer.text()
                    if answer.status in (500, 502, 503, 504):
                        self.load.refusals[str(answer.status)] += 1
                        pause = _retry_after(answer.headers.get("Retry-After"), pause)
                    else:
                        self.load.rejected[seq] = f"{answer.status} {text[:300]}"
                        return
            except (aiohttp.ClientError, TimeoutError) as error:
                self.load.refusals[type(error).__name__] += 1
            # Jitter: after a restart, the refused requests should not all come back at once.
            await asyncio.sleep(min(pause, RETRY_PAUSE_MAX_S) * random.uniform(0.5, 1.0))  # noqa: S311

    def _require_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use the Pipeline as `async with Pipeline(...) as pipeline:`")
        return self._session

    # -- what arrived ----------------------------------------------------------------------

    def delivered_seqs(self) -> Counter[int]:
        """How often the sink applied each seq (1 for each delivered event, however often it
        was called: a repeat of an idempotency key is not applied again)."""
        return Counter(_seq_of(call.body) for call in self.sink.unique.values())

    def missing(self) -> set[int]:
        """Accepted seqs the sink has not applied yet."""
        return set(self.load.accepted) - set(self.delivered_seqs())

    async def wait_delivered(self, within: float = 120.0) -> None:
        """Until every accepted event was applied by the sink; fails after `within` seconds
        saying how many, and which, did not come."""
        deadline = time.monotonic() + within
        while missing := self.missing():
            if time.monotonic() > deadline:
                sample = sorted(missing)[:20]
                raise AssertionError(
                    f"{len(missing)} of {len(self.load.accepted)} accepted events not delivered "
                    f"within {within} s, e.g. seqs {sample}; bus log tail:\n"
                    + self.own_log()[-3000:]
                )
            await asyncio.sleep(0.5)

    def tally(self) -> dict[str, int]:
        """The run's counts. `duplicates`: calls beyond the first per idempotency key;
        `effective_duplicates`: accepted events the sink applied more than once (under
        different keys), which an idempotent receiver cannot tell apart."""
        applied = self.delivered_seqs()
        accepted = set(self.load.accepted)
        return {
            "sent": len(self.load.sent),
            "accepted": len(accepted),
            "rejected": len(self.load.rejected),
            "delivered": len(accepted & set(applied)),
            "delivered_not_accepted": len(set(applied) - accepted),
            "calls": len(self.sink.calls),
            "duplicates": self.sink.duplicates,
            "effective_duplicates": sum(n - 1 for n in applied.values() if n > 1),
            "lost": len(accepted - set(applied)),
            "refused_requests": sum(self.load.refusals.values()),
        }

    async def dead_letters(self) -> int:
        """Records in the pipeline's two dead-letter topics (0 if never created)."""
        return await self.records_in(f"{self.id}-mediate.dlq", f"{self.id}-out.dlq")

    async def records_in(self, *topics: str) -> int:
        """How many records the topics hold (0 for a topic that does not exist). For topic A,
        more records than accepted events means an event was stored twice (the same id: a
        202 lost with the connection, and the request sent again)."""
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap_servers)
        await consumer.start()
        try:
            total = 0
            for topic in topics:
                tps = await topic_partitions(self.bootstrap_servers, topic)
                if not tps:
                    continue
                ends = await consumer.end_offsets(tps)
                starts = await consumer.beginning_offsets(tps)
                total += sum(ends[tp] - starts[tp] for tp in tps)
            return total
        finally:
            await consumer.stop()


class _Pace:
    """At most `rate` starts per second across all workers (None: no limit)."""

    def __init__(self, rate: float | None) -> None:
        self._interval = 1.0 / rate if rate else 0.0
        self._next = time.monotonic()

    async def wait(self) -> None:
        if not self._interval:
            return
        now = time.monotonic()
        at = max(self._next, now)
        self._next = at + self._interval
        if at > now:
            await asyncio.sleep(at - now)


def _retry_after(value: str | None, default: float) -> float:
    with contextlib.suppress(TypeError, ValueError):
        return float(value)  # type: ignore[arg-type]
    return default


def _seq_of(body: Any) -> int:
    """The load driver's number of the event a call delivered (its body's `seq`)."""
    return int(str(body["seq"]).removeprefix("seq-"))
