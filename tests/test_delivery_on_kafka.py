"""The outbound delivery runner on the real broker, calling a real HTTP server that misbehaves.

The server (aiohttp on 127.0.0.1) plays the external system: it records every call (arrival
time, key, sequence number, what it answered, how many calls were under way) and answers as
each test scripts it. `JsonPost` is a minimal adapter: the event's data as JSON in a POST.
"""

import asyncio
import contextlib
import json
import random
import socket
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from bus.delivery.contract import Response
from bus.delivery.offsets import PartitionOffsets
from bus.delivery.plan import DeliveryPlan, delivery_plan_from
from bus.delivery.replies import reply_event_id, reply_plan_from
from bus.delivery.runner import DeliveryRunner
from bus.errors import PermanentDeliveryError, TransientDeliveryError
from bus.events.codec import DecodedEvent, EventCodec
from bus.events.event import Event
from bus.events.publisher import Publisher
from bus.flows import model
from bus.flows.dlq import read_letters, replay
from bus.resilience.circuit_breaker import BreakerState
from bus.resilience.retry import RetryPolicy
from bus.telemetry.context import current_hop
from bus.telemetry.hub import Telemetry
from bus.telemetry.metrics import BusMetrics
from bus.telemetry.status import StatusBoard
from bus.telemetry.tracing import Tracing
from tests.flow_harness import CATALOG, decode, headers_of, read_records

REQUEST = "com.acme.payments.PaymentRequested"
WHEN = "2026-11-24T01:40:06.123Z"


# -- the external system ----------------------------------------------------------------------


@dataclass
class Call:
    at: float  # time.monotonic() on arrival
    key: str
    seq: int
    payment_id: str
    status: int = 0  # what the server answered; 0 while under way


def ok(call: Call) -> web.Response:
    return web.json_response({"status": "AUTHORIZED", "reference": f"gw-{call.payment_id}"})


@dataclass
class Endpoint:
    """The scripted server: `answer` decides each response, `delay` how long it takes."""

    url: str = ""
    answer: Callable[[Call], web.Response] = ok
    delay: Callable[[Call], float] = lambda call: 0.0
    calls: list[Call] = field(default_factory=list)
    delivered: list[str] = field(default_factory=list)  # payment ids answered 2xx, in order
    under_way: int = 0
    most_under_way: int = 0
    keys_under_way: Counter[str] = field(default_factory=Counter)
    overlapping_keys: set[str] = field(default_factory=set)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        key, seq = body["paymentId"].rsplit("-", 1)
        call = Call(time.monotonic(), key, int(seq), body["paymentId"])
        self.calls.append(call)
        self.under_way += 1
        self.most_under_way = max(self.most_under_way, self.under_way)
        self.keys_under_way[key] += 1
        if self.keys_under_way[key] > 1:
            self.overlapping_keys.add(key)
        try:
            wait = self.delay(call)
            if wait:
                await asyncio.sleep(wait)
            response = self.answer(call)
            call.status = response.status
            if 200 <= response.status < 300:
                self.delivered.append(call.payment_id)
            return response
        finally:
            self.under_way -= 1
            self.keys_under_way[key] -= 1

    def calls_of(self, payment_id: str) -> list[Call]:
        return [call for call in self.calls if call.payment_id == payment_id]

    def delivered_by_key(self) -> dict[str, list[int]]:
        by_key: dict[str, list[int]] = defaultdict(list)
        for payment_id in self.delivered:
            key, seq = payment_id.rsplit("-", 1)
            by_key[key].append(int(seq))
        return dict(by_key)


class JsonPost:
    """A minimal outbound adapter: POST the event's data as JSON; 5xx, 429 and no answer are
    transient, other 4xx permanent."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def call(self, event: DecodedEvent) -> Response:
        body = json.dumps(dict(event.event.data), default=str)
        try:
            async with self.session.post(
                self.url,
                data=body,
                headers={"content-type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=5),
            ) as answer:
                text = await answer.text()
                status, headers = answer.status, answer.headers
        except (aiohttp.ClientError, TimeoutError) as error:
            raise TransientDeliveryError(f"no answer from {self.url}: {error!r}") from error
        if status == 429 or status >= 500:
            retry_after = headers.get("Retry-After")
            raise TransientDeliveryError(
                f"the server answered {status}",
                status=status,
                excerpt=text[:200],
                retry_after=float(retry_after) if retry_after else None,
            )
        if status >= 400:
            raise PermanentDeliveryError(
                f"the server refused the event with {status}", status=status, excerpt=text[:200]
            )
        parsed = json.loads(text) if text else None
        return Response(
            status, headers={name.lower(): value for name, value in headers.items()}, body=parsed
        )

    async def close(self) -> None:
        return None


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    served = Endpoint()
    app = web.Application()
    app.router.add_post("/payments", served.handle)
    runner = web.AppRunner(app, handler_cancellation=True)  # a call given up ends here too
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    served.url = f"http://127.0.0.1:{sock.getsockname()[1]}/payments"
    try:
        yield served
    finally:
        await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


# -- helpers ----------------------------------------------------------------------------------


def payment(key: str, seq: int) -> dict[str, Any]:
    return {
        "paymentId": f"{key}-{seq}",
        "orderId": key,
        "customerId": "c-1",
        "amount": {"amount": Decimal("12.50"), "currency": "EUR"},
        "method": "CARD",
        "requestedAt": WHEN,
    }


async def publish(bootstrap_servers: str, topic: str, keys: int, per_key: int) -> list[Event]:
    """`per_key` events for each of `keys` keys, interleaved: k0-0, k1-0, ..., k0-1, ..."""
    async with Publisher(bootstrap_servers, CATALOG, source="/shop") as publisher:
        return [
            await publisher.publish(
                topic, REQUEST, payment(f"k{k}", seq), key=f"k{k}", subject=f"k{k}-{seq}"
            )
            for seq in range(per_key)
            for k in range(keys)
        ]


def fast_retry(attempts: int = 5) -> RetryPolicy:
    return RetryPolicy(attempts=attempts, initial=0.02, max_delay=0.2, jitter=0.0)


def outbound(**settings: Any) -> model.Outbound:
    """An outbound item as a flow file declares it (`test:` is its adapter key)."""
    return model.Outbound.model_validate({"test": {}, **settings})


watched: list[asyncio.Task[None]] = []  # runners of the test under way; cleared after each


@contextlib.asynccontextmanager
async def running(runner: DeliveryRunner) -> AsyncIterator[asyncio.Event]:
    """The runner runs while inside (a failure of it fails the test); leaving stops it."""
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    watched.append(task)
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def eventually(what: str, condition: Callable[[], bool], within: float = 20.0) -> None:
    """Wait until `condition()`; fail with `what` after `within` seconds, or at once if a
    runner failed meanwhile."""
    try:
        async with asyncio.timeout(within):
            while not condition():
                for task in watched:
                    if task.done() and not task.cancelled() and task.exception() is not None:
                        raise AssertionError(f"the runner failed: {task.exception()!r}")
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"not within {within} s: {what}") from None


@pytest.fixture(autouse=True)
def _forget_runners() -> Iterator[None]:
    yield
    watched.clear()


async def partitions_of(bootstrap_servers: str, topic: str) -> list[TopicPartition]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return sorted(TopicPartition(topic, p["partition"]) for p in described["partitions"])


async def topic_size(bootstrap_servers: str, topic: str) -> int:
    partitions = await partitions_of(bootstrap_servers, topic)
    assert partitions, topic
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers)
    await consumer.start()
    try:
        return sum((await consumer.end_offsets(partitions)).values())
    finally:
        await consumer.stop()


class Topics:
    def __init__(self, topic_name: Callable[[str], str]) -> None:
        self.source, self.dlq, self.replies = (topic_name(p) for p in ("in", "dlq", "replies"))


@pytest.fixture
async def topics(topic_name: Callable[[str], str], create_topics: Any) -> Topics:
    made = Topics(topic_name)
    await create_topics(made.source, partitions=3)
    await create_topics(made.dlq, made.replies)
    return made


def plan_for(topics: Topics, name: str, **settings: Any) -> DeliveryPlan:
    defaults: dict[str, Any] = {"retry": fast_retry(), "max_in_flight": 8}
    return DeliveryPlan(
        name=name, sources=(topics.source,), dead_letter_topic=topics.dlq, **defaults | settings
    )


def delivery(endpoint: Endpoint, session: aiohttp.ClientSession) -> JsonPost:
    return JsonPost(session, endpoint.url)


# -- the tests --------------------------------------------------------------------------------


def test_commit_point_moves_over_contiguous_done_records_only() -> None:
    offsets = PartitionOffsets()
    for offset in (10, 11, 13):  # 12 was a transaction marker: never taken, never waited for
        offsets.take(offset)
    offsets.done(11)
    assert (offsets.uncommitted(), offsets.in_progress) == (None, 2)  # 10 is still under way
    offsets.done(10)
    assert offsets.uncommitted() == 12
    offsets.committed(12)
    assert offsets.uncommitted() is None
    offsets.done(13)
    assert (offsets.uncommitted(), offsets.in_progress) == (14, 0)
    with pytest.raises(ValueError, match="in order"):
        offsets.take(13)


async def test_delivers_every_event_once_and_commits(
    bootstrap_servers: str, topics: Topics, endpoint: Endpoint, session: aiohttp.ClientSession
) -> None:
    await publish(bootstrap_servers, topics.source, keys=6, per_key=5)
    plan = plan_for(topics, "all-once")
    codec = EventCodec(CATALOG)
    first = DeliveryRunner(plan, delivery(endpoint, session), codec, bootstrap_servers)
    async with running(first):
        await eventually("30 deliveries", lambda: len(endpoint.delivered) == 30)
    assert sorted(endpoint.delivered) == sorted(f"k{k}-{s}" for k in range(6) for s in range(5))
    assert (first.delivered, first.dead_lettered) == (30, 0)

    # The same group later: only what came after the commit is delivered.
    async with Publisher(bootstrap_servers, CATALOG, source="/shop") as publisher:
        await publisher.publish(topics.source, REQUEST, payment("late", 0), key="late")
    second = DeliveryRunner(plan, delivery(endpoint, session), codec, bootstrap_servers)
    async with running(second):
        await eventually("the late event", lambda: "late-0" in endpoint.delivered)
        await asyncio.sleep(0.5)
    assert len(endpoint.calls) == 31
    assert second.delivered == 1


async def test_order_per_key_under_concurrency_delays_and_failures(
    bootstrap_servers: str, topics: Topics, endpoint: Endpoint, session: aiohttp.ClientSession
) -> None:
    chance = random.Random(7)  # noqa: S311 -- fault injection, not secrets
    endpoint.delay = lambda call: chance.uniform(0, 0.03)
    endpoint.answer = lambda call: (
        web.Response(status=500, text="oops") if chance.random() < 0.2 else ok(call)
    )
    await publish(bootstrap_servers, topics.source, keys=8, per_key=8)
    plan = plan_for(topics, "ordered", retry=fast_retry(attempts=30), max_in_flight=8)
    runner = DeliveryRunner(
        plan, delivery(endpoint, session), EventCodec(CATALOG), bootstrap_servers
    )
    async with running(runner):
        await eventually("64 deliveries", lambda: len(endpoint.delivered) == 64)

    assert endpoint.delivered_by_key() == {f"k{k}": list(range(8)) for k in range(8)}
    assert endpoint.overlapping_keys == set()  # one call at a time per key
    for key in range(8):  # retries come before the next event of the key, never after
        seqs = [call.seq for call in endpoint.calls if call.key == f"k{key}"]
        assert seqs == sorted(seqs)
    assert any(call.status == 500 for call in endpoint.calls)
    assert endpoint.most_under_way > 1  # keys did run concurrently
    assert runner.dead_lettered == 0


async def test_server_errors_are_retried_until_success(
    bootstrap_servers: str, topics: Topics, endpoint: Endpoint, session: aiohttp.ClientSession
) -> None:
    endpoint.answer = lambda call: (
        web.Response(status=500, text="try later") if len(endpoint.calls) <= 2 else ok(call)
    )
    await publish(bootstrap_servers, topics.source, keys=1, per_key=1)
    runner = DeliveryRunner(
        plan_for(topics, "retried"), delivery(endpoint, session), EventCodec(CATALOG),
        bootstrap_servers,
    )  # fmt: skip
    async with running(runner):
        await eventually("the delivery", lambda: endpoint.delivered == ["k0-0"])
    assert [call.status for call in endpoint.calls] == [500, 500, 200]
    assert runner.dead_lettered == 0


async def test_retry_after_is_honoured(
    bootstrap_servers: str, topics: Topics, endpoint: Endpoint, session: aiohttp.ClientSession
) -> None:
    endpoint.answer = lambda call: (
        web.Response(status=429, text="slow down", headers={"Retry-After": "1"})
        if len(endpoint.calls) == 1
        else ok(call)
    )
    await publish(bootstrap_servers, topics.source, keys=1, per_key=1)
    runner = DeliveryRunner(
        plan_for(topics, "patient"), delivery(endpoint, session), EventCodec(CATALOG),
        bootstrap_servers,
    )  # fmt: skip
    async with running(runner):
        await eventually("the delivery", lambda: endpoint.delivered == ["k0-0"])
    first, second = endpoint.calls
    assert first.status == 429
    assert 0.9 <= second.at - first.at < 3.0  # the backoff alone would wait 20 ms


async def test_refused_event_is_dead_lettered_and_its_key_moves_on(
    bootstrap_servers: str, topics: Topics, endpoint: Endpoint, session: aiohttp.ClientSession
) -> None:
    endpoint.answer = lambda call: (
        web.json_response({"error": "amount must be positive"}, status=400)
        if call.seq == 1
        else ok(call)
    )
    events = await publish(bootstrap_servers, topics.source, keys=1, per_key=3)
    runner = DeliveryRunner(
        plan_for(topics, "refusing"), delivery(endpoint, session), EventCodec(CATALOG),
        bootstrap_servers,
    )  # fmt: skip
    async with running(runner):
        await eventually("k0-2 after the refusal", lambda: "k0-2" in endpoint.delivered)
        [letter] = await read_records(bootstrap_servers, topics.dlq, 1)
    assert endpoint.delivered == ["k0-0", "k0-2"]
    assert len(endpoint.calls_of("k0-1")) == 1  # a permanent failure is not retried
    headers = headers_of(letter)
    assert headers["bus_dlq_flow"] == "refusing"
    assert headers["bus_dlq_step"] == "call"
    assert headers["bus_dlq_error_type"] == "PermanentDeliveryError"
    assert "HTTP 400" in headers["bus_dlq_error"]
    assert "amount must be positive" in headers["bus_dlq_error"]
    assert headers["bus_dlq_attempts"] == "1"
    assert headers["bus_dlq_topic"] == topics.source
    [original] = await decode([letter])
    assert original.id == events[1].id  # the original record, unchanged

    # The dlq tool reads it as it reads a mediation flow's, and replays it; refused again, the
    # second dead letter counts both attempts.
    [stored] = await read_letters(bootstrap_servers, topics.dlq)
    assert stored.reason is not None
    assert (stored.reason.step, stored.reason.offset) == ("call", 1)  # one key: one partition
    await replay(bootstrap_servers, [stored])
    again = DeliveryRunner(
        plan_for(topics, "refusing"), delivery(endpoint, session), EventCodec(CATALOG),
        bootstrap_servers,
    )  # fmt: skip
    async with running(again):
        letters = await read_records(bootstrap_servers, topics.dlq, 2)
    assert headers_of(letters[1])["bus_dlq_attempts"] == "2"
    assert len(endpoint.calls_of("k0-1")) == 2
    assert again.dead_lettered == 1


async def test_undecodable_record_is_dead_lettered(
    bootstrap_servers: str, topics: Topics, endpoint: Endpoint, session: aiohttp.ClientSession
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(topics.source, b"not an event", key=b"k0")
    finally:
        await producer.stop()
    await publish(bootstrap_servers, topics.source, keys=1, per_key=1)
    runner = DeliveryRunner(
        plan_for(topics, "decoding"), delivery(endpoint, session), EventCodec(CATALOG),
        bootstrap_servers,
    )  # fmt: skip
    async with running(runner):
        await eventually("the good event", lambda: endpoint.delivered == ["k0-0"])
        [letter] = await read_records(bootstrap_servers, topics.dlq, 1)
    assert letter.value == b"not an event"
    assert letter.key == b"k0"
    headers = headers_of(letter)
    assert (headers["bus_dlq_step"], headers["bus_dlq_attempts"]) == ("decode", "1")
    assert headers["bus_dlq_flow"] == "decoding"
    assert len(endpoint.calls) == 1  # the poison record was never called


@pytest.mark.parametrize("with_breaker", [False, True], ids=["no-breaker", "breaker"])
async def test_exhausted_retries_are_dead_lettered(
    bootstrap_servers: str,
    topics: Topics,
    endpoint: Endpoint,
    session: aiohttp.ClientSession,
    with_breaker: bool,
) -> None:
    # With a breaker too: an event that fails alone while others succeed is the event's fault.
    endpoint.answer = lambda call: (
        web.Response(status=503, text="maintenance") if call.payment_id == "k0-0" else ok(call)
    )
    await publish(bootstrap_servers, topics.source, keys=3, per_key=2)
    item = outbound(
        name="exhausting",
        **{"from": topics.source},
        dlq=topics.dlq,
        retry={"attempts": 3, "backoff": {"initial": "20ms", "max": "100ms"}},
        **({"circuit_breaker": {"failures": 5, "reset_after": "1s"}} if with_breaker else {}),
    )
    plan = delivery_plan_from(item)
    assert (plan.breaker is not None) == with_breaker
    runner = DeliveryRunner(
        plan, delivery(endpoint, session), EventCodec(CATALOG), bootstrap_servers
    )
    async with running(runner):
        await eventually("five deliveries", lambda: len(endpoint.delivered) == 5)
        [letter] = await read_records(bootstrap_servers, topics.dlq, 1)
    assert len(endpoint.calls_of("k0-0")) == 3
    assert endpoint.delivered_by_key()["k0"] == [1]  # the key moved on
    headers = headers_of(letter)
    assert headers["bus_dlq_error_type"] == "RetriesExhaustedError"
    assert headers["bus_dlq_attempts"] == "3"
    assert "HTTP 503: maintenance" in headers["bus_dlq_error"]


async def test_outage_opens_the_breaker_pauses_and_loses_nothing(
    bootstrap_servers: str, topics: Topics, endpoint: Endpoint, session: aiohttp.ClientSession
) -> None:
    await publish(bootstrap_servers, topics.source, keys=8, per_key=5)
    down_until = time.monotonic() + 3.0
    endpoint.answer = lambda call: (
        web.Response(status=503, text="down") if call.at < down_until else ok(call)
    )
    item = outbound(
        name="outage",
        **{"from": topics.source},
        dlq=topics.dlq,
        retry={"attempts": 3, "backoff": {"initial": "50ms", "max": "200ms"}},
        circuit_breaker={"failures": 3, "reset_after": "1s"},
        max_in_flight=4,
    )
    runner = DeliveryRunner(
        delivery_plan_from(item), delivery(endpoint, session), EventCodec(CATALOG),
        bootstrap_servers,
    )  # fmt: skip
    async with running(runner):
        await eventually("40 deliveries", lambda: len(endpoint.delivered) == 40, within=25)
    failed = [call for call in endpoint.calls if call.status == 503]
    # The first calls fail until the breaker opens, then one trial a second: not one per event.
    assert 3 <= len(failed) <= 14, len(failed)
    assert sorted(endpoint.delivered) == sorted(f"k{k}-{s}" for k in range(8) for s in range(5))
    assert endpoint.delivered_by_key() == {f"k{k}": list(range(5)) for k in range(8)}
    assert runner.dead_lettered == 0
    assert await topic_size(bootstrap_servers, topics.dlq) == 0


async def test_the_lag_keeps_counting_while_an_open_breaker_pauses_the_delivery(
    bootstrap_servers: str, topics: Topics, endpoint: Endpoint, session: aiohttp.ClientSession
) -> None:
    # Paused partitions get no fetch responses, which is where the lag's end offsets come from:
    # the runner asks the broker for them instead, so an SRE sees the backlog grow in an outage.
    endpoint.answer = lambda call: web.Response(status=503, text="down")
    await publish(bootstrap_servers, topics.source, keys=2, per_key=1)
    item = outbound(
        name="paused-lag",
        **{"from": topics.source},
        dlq=topics.dlq,
        retry={"attempts": 3, "backoff": {"initial": "20ms", "max": "50ms"}},
        circuit_breaker={"failures": 2, "reset_after": "1m"},
    )
    plan = delivery_plan_from(item)
    board = StatusBoard()
    telemetry = Telemetry(Tracing.disabled(), None, BusMetrics(board), board)
    runner = DeliveryRunner(
        plan, delivery(endpoint, session), EventCodec(CATALOG), bootstrap_servers,
        telemetry=telemetry,
    )  # fmt: skip
    status = board.item("paused-lag", "outbound")
    async with running(runner):
        assert plan.breaker is not None
        breaker = plan.breaker
        await eventually("the breaker open", lambda: breaker.state is BreakerState.OPEN)
        await publish(bootstrap_servers, topics.source, keys=4, per_key=5)
        assert status.in_flight is not None
        waiting = status.in_flight

        # Every record not delivered is either in hand or lag: none is lost from view.
        def backlog() -> int:
            return sum(status.lag().values()) + waiting()

        await eventually("a backlog of 22", lambda: backlog() == 22, within=15)
        assert sum(status.lag().values()) >= 18  # the new ones wait in Kafka, not in hand
    assert runner.dead_lettered == 0


class FailingCallMetrics(BusMetrics):
    """Metrics with a bug in the sample of each call."""

    def outbound_call(self, flow: str, status: int | None, seconds: float) -> None:
        raise RuntimeError("a metrics bug")


class StepRecordingPost(JsonPost):
    """Notes the hop's step (as log lines would say it) during each call."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        super().__init__(session, url)
        self.steps: list[str | None] = []

    async def call(self, event: DecodedEvent) -> Response:
        hop = current_hop.get()
        self.steps.append(None if hop is None else hop.step)
        return await super().call(event)


async def test_failing_metrics_neither_wedge_the_breaker_nor_fail_the_run(
    bootstrap_servers: str,
    topics: Topics,
    endpoint: Endpoint,
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await publish(bootstrap_servers, topics.source, keys=2, per_key=3)
    down_until = time.monotonic() + 1.5
    endpoint.answer = lambda call: (
        web.Response(status=503, text="down") if call.at < down_until else ok(call)
    )
    item = outbound(
        name="metrics-bug",
        **{"from": topics.source},
        dlq=topics.dlq,
        retry={"attempts": 3, "backoff": {"initial": "50ms", "max": "200ms"}},
        circuit_breaker={"failures": 2, "reset_after": "500ms"},
    )
    plan = delivery_plan_from(item)
    board = StatusBoard()
    telemetry = Telemetry(Tracing.disabled(), None, FailingCallMetrics(board), board)
    adapter = StepRecordingPost(session, endpoint.url)
    runner = DeliveryRunner(
        plan, adapter, EventCodec(CATALOG), bootstrap_servers, telemetry=telemetry
    )
    async with running(runner):
        # The half-open trials after the outage decide the breaker although each call's
        # sample raises: it closes, and every event goes through.
        await eventually("6 deliveries", lambda: len(endpoint.delivered) == 6, within=25)
    assert plan.breaker is not None
    assert plan.breaker.state is BreakerState.CLOSED
    assert runner.dead_lettered == 0
    assert telemetry.metrics_failures == len(endpoint.calls)
    assert [r.levelname for r in caplog.records if r.name == "bus.telemetry.hub"] == ["ERROR"]
    # Inside the call, the hop's step is "call", as log lines written there say.
    assert set(adapter.steps) == {"call"}


async def test_rate_limit_is_kept(
    bootstrap_servers: str, topics: Topics, endpoint: Endpoint, session: aiohttp.ClientSession
) -> None:
    await publish(bootstrap_servers, topics.source, keys=12, per_key=1)
    item = outbound(
        name="limited",
        **{"from": topics.source},
        dlq=topics.dlq,
        rate_limit="5/s",
        max_in_flight=10,
    )
    runner = DeliveryRunner(
        delivery_plan_from(item), delivery(endpoint, session), EventCodec(CATALOG),
        bootstrap_servers,
    )  # fmt: skip
    async with running(runner):
        await eventually("12 deliveries", lambda: len(endpoint.delivered) == 12)
    times = sorted(call.at for call in endpoint.calls)
    # 5/s: calls 0.2 s apart, so no window of (nearly) a second holds more than 5.
    assert max(sum(1 for t in times if start <= t < start + 0.9) for start in times) <= 5
    assert times[-1] - times[0] >= 11 * 0.2 * 0.9


async def test_max_in_flight_bounds_concurrent_calls(
    bootstrap_servers: str, topics: Topics, endpoint: Endpoint, session: aiohttp.ClientSession
) -> None:
    endpoint.delay = lambda call: 0.25
    await publish(bootstrap_servers, topics.source, keys=16, per_key=1)
    runner = DeliveryRunner(
        plan_for(topics, "bounded", max_in_flight=4), delivery(endpoint, session),
        EventCodec(CATALOG), bootstrap_servers,
    )  # fmt: skip
    async with running(runner):
        await eventually("16 deliveries", lambda: len(endpoint.delivered) == 16)
    assert endpoint.most_under_way == 4


async def test_replies_are_events_with_lineage_and_stable_ids(
    bootstrap_servers: str, topics: Topics, endpoint: Endpoint, session: aiohttp.ClientSession
) -> None:
    endpoint.answer = lambda call: (
        web.json_response({"reference": "no status"}) if call.key == "k2" else ok(call)
    )
    requests = await publish(bootstrap_servers, topics.source, keys=3, per_key=1)
    reply = reply_plan_from(
        model.Reply(
            type="com.acme.payments.PaymentOutcome",
            topic=topics.replies,
            map={
                "paymentId": "event.paymentId",
                "orderId": "event.orderId",
                "status": "response.body.status",
                "amount": "event.amount",
                "gatewayReference": "response.body.reference",
                "decidedAt": "attributes.time",
            },
        )
    )
    plan = plan_for(topics, "replying")
    codec = EventCodec(CATALOG)

    def runner() -> DeliveryRunner:
        return DeliveryRunner(
            plan, delivery(endpoint, session), codec, bootstrap_servers, reply=reply
        )

    async with running(first := runner()):
        replies = await decode(await read_records(bootstrap_servers, topics.replies, 2))
        [letter] = await read_records(bootstrap_servers, topics.dlq, 1)
    assert (first.replied, first.dead_lettered) == (2, 1)
    by_parent = {event.extensions["parentid"]: event for event in replies}
    for request in requests[:2]:
        answer = by_parent[request.id]
        assert answer.type == "com.acme.payments.PaymentOutcome"
        assert answer.id == reply_event_id("replying", request.id)
        assert (answer.key, answer.subject) == (request.key, request.subject)
        assert answer.source == "/bus/flows/replying"
        assert answer.data["status"] == "AUTHORIZED"
        assert answer.data["gatewayReference"] == f"gw-{request.data['paymentId']}"
        assert answer.data["amount"]["amount"] == Decimal("12.50")
        assert answer.extensions["rootid"] == request.id  # the request began its journey
    headers = headers_of(letter)
    assert (headers["bus_dlq_step"], headers["bus_dlq_error_type"]) == ("reply", "ExpressionError")
    assert "the call was made (HTTP 200)" in headers["bus_dlq_error"]

    # Delivered again from the start (as after a crash before the commit): the same reply ids.
    await rewind(bootstrap_servers, plan.group_id, topics.source)
    async with running(runner()):
        again = await decode(await read_records(bootstrap_servers, topics.replies, 4))
    assert {event.id for event in again[2:]} == {event.id for event in replies}


async def rewind(bootstrap_servers: str, group: str, topic: str) -> None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, group_id=group, enable_auto_commit=False
    )
    partitions = await partitions_of(bootstrap_servers, topic)
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.commit({partition: 0 for partition in partitions})
    finally:
        await consumer.stop()


async def test_stop_finishes_the_call_under_way_and_commits(
    bootstrap_servers: str, topics: Topics, endpoint: Endpoint, session: aiohttp.ClientSession
) -> None:
    endpoint.delay = lambda call: 0.5
    await publish(bootstrap_servers, topics.source, keys=1, per_key=6)
    plan = plan_for(topics, "stopping")
    first = DeliveryRunner(
        plan, delivery(endpoint, session), EventCodec(CATALOG), bootstrap_servers
    )
    stop = asyncio.Event()
    task = asyncio.create_task(first.run(stop))
    watched.append(task)
    await eventually("a third call under way", lambda: len(endpoint.calls) == 3)
    stop.set()
    stopped_at = time.monotonic()
    await asyncio.wait_for(task, 10)
    assert time.monotonic() - stopped_at < 2.0
    # The call under way was finished, not abandoned; nothing further was started.
    assert [call.status for call in endpoint.calls] == [200, 200, 200]
    assert first.delivered == 3

    second = DeliveryRunner(
        plan, delivery(endpoint, session), EventCodec(CATALOG), bootstrap_servers
    )
    async with running(second):
        await eventually("the other three", lambda: len(endpoint.delivered) == 6)
    # What was done was committed: nothing is delivered twice, nothing is lost.
    assert endpoint.delivered == [f"k0-{seq}" for seq in range(6)]
    assert len(endpoint.calls) == 6


async def test_no_call_goes_out_once_told_to_stop(
    bootstrap_servers: str, topics: Topics, endpoint: Endpoint, session: aiohttp.ClientSession
) -> None:
    """A stop is obeyed at the next call, not only at the runner's next poll (up to 100 ms
    later): the call under way finishes, and its key's next record, whose call would go out as
    soon as the slot is free, is left to the next owner."""
    stop = asyncio.Event()

    def delay(call: Call) -> float:
        if call.seq == 2:
            stop.set()  # as SIGTERM would, while the third call is under way
        return 0.02

    endpoint.delay = delay
    await publish(bootstrap_servers, topics.source, keys=1, per_key=6)
    plan = plan_for(topics, "stop-at-once")
    board = StatusBoard()
    first = DeliveryRunner(
        plan, delivery(endpoint, session), EventCodec(CATALOG), bootstrap_servers,
        telemetry=Telemetry(Tracing.disabled(), None, BusMetrics(board), board),
    )  # fmt: skip
    task = asyncio.create_task(first.run(stop))
    watched.append(task)
    await asyncio.wait_for(task, 30)
    assert [call.seq for call in endpoint.calls] == [0, 1, 2]
    assert first.delivered == 3
    # At most the one record whose call the stop caught is handed over undelivered (none if the
    # consuming loop stopped the chain first); the key's others wait untouched, not each handed
    # over in turn (3 before).
    assert board.item("stop-at-once", "outbound").counters.failed <= 1

    endpoint.delay = lambda call: 0.0
    second = DeliveryRunner(
        plan, delivery(endpoint, session), EventCodec(CATALOG), bootstrap_servers
    )
    async with running(second):
        await eventually("the other three", lambda: len(endpoint.delivered) == 6)
    assert endpoint.delivered == [f"k0-{seq}" for seq in range(6)]  # none twice, none lost


async def test_revocation_hands_partitions_over_without_overlap(
    bootstrap_servers: str, topics: Topics, endpoint: Endpoint, session: aiohttp.ClientSession
) -> None:
    # 6 s of calls per key: the first member notices the rebalance at its next heartbeat (up
    # to 3 s), and the second must still find work after it.
    endpoint.delay = lambda call: 0.4
    await publish(bootstrap_servers, topics.source, keys=6, per_key=15)
    plan = plan_for(topics, "sharing")
    codec = EventCodec(CATALOG)
    first = DeliveryRunner(plan, delivery(endpoint, session), codec, bootstrap_servers)
    second = DeliveryRunner(plan, delivery(endpoint, session), codec, bootstrap_servers)
    async with running(first):
        await eventually("some deliveries", lambda: len(endpoint.delivered) >= 6)
        async with running(second):
            await eventually("both at work", lambda: second.delivered > 0, within=15)
            await eventually("everything", lambda: len(set(endpoint.delivered)) == 90, within=30)
    assert endpoint.overlapping_keys == set()  # never two owners calling for one key at once
    # A record done ahead of an unfinished one of its partition is not committed, and the next
    # owner delivers it again (at-least-once); but no event overtakes an earlier one of its key.
    for key, seqs in endpoint.delivered_by_key().items():
        assert list(dict.fromkeys(seqs)) == list(range(15)), (key, seqs)
    assert first.dead_lettered == second.dead_lettered == 0


async def test_cancelled_after_the_grace_still_commits_what_was_done(
    bootstrap_servers: str, topics: Topics, endpoint: Endpoint, session: aiohttp.ClientSession
) -> None:
    endpoint.delay = lambda call: 30.0 if call.seq == 2 else 0.0  # the third call hangs
    await publish(bootstrap_servers, topics.source, keys=1, per_key=4)
    plan = plan_for(topics, "cancelled")
    first = DeliveryRunner(
        plan, delivery(endpoint, session), EventCodec(CATALOG), bootstrap_servers
    )
    stop = asyncio.Event()
    task = asyncio.create_task(first.run(stop))
    await eventually("the hanging call", lambda: len(endpoint.calls) == 3)
    stop.set()
    with pytest.raises(TimeoutError):  # the caller's grace is over: it cancels the runner
        await asyncio.wait_for(task, 0.5)
    assert task.cancelled()

    endpoint.delay = lambda call: 0.0
    second = DeliveryRunner(
        plan, delivery(endpoint, session), EventCodec(CATALOG), bootstrap_servers
    )
    async with running(second):
        await eventually("the rest", lambda: endpoint.delivered[-1:] == ["k0-3"])
    # k0-0 and k0-1 were committed on the way out; the abandoned call is made again.
    assert endpoint.delivered == ["k0-0", "k0-1", "k0-2", "k0-3"]
    assert [call.seq for call in endpoint.calls] == [0, 1, 2, 2, 3]


async def test_a_dead_letter_kafka_refuses_fails_the_run(
    bootstrap_servers: str,
    topic_name: Callable[[str], str],
    create_topics: Any,
    endpoint: Endpoint,
    session: aiohttp.ClientSession,
) -> None:
    source, dlq = topic_name("in"), topic_name("tiny-dlq")
    await create_topics(source)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:  # a DLQ that takes no record as large as a dead letter
        await admin.create_topics([NewTopic(dlq, 1, 1, topic_configs={"max.message.bytes": "100"})])
    finally:
        await admin.close()
    endpoint.answer = lambda call: web.Response(status=400, text="no")
    await publish(bootstrap_servers, source, keys=1, per_key=1)
    plan = DeliveryPlan(name="failing", sources=(source,), dead_letter_topic=dlq)
    runner = DeliveryRunner(
        plan, delivery(endpoint, session), EventCodec(CATALOG), bootstrap_servers
    )
    with pytest.raises(KafkaError):
        await asyncio.wait_for(runner.run(asyncio.Event()), 20)
    assert runner.dead_lettered == 0
    # Not committed: the record is redone after the restart, not lost.
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=plan.group_id)
    await consumer.start()
    try:
        assert await consumer.committed(TopicPartition(source, 0)) is None
    finally:
        await consumer.stop()
