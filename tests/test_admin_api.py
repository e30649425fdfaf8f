"""The admin API over real sockets: auth on every route, health, readiness against a real broker
(one of the tests stops and restarts a broker of its own), the item board, journeys and the
dead-letter routes on real topics.

Each test starts an AdminServer on a free port and calls it with aiohttp; nothing is mocked but
the journey reader (read_journey is tested with the journey recorder) and the metrics text
(BusMetrics is tested on its own): both are given as the small callables the server takes. The
dead-letter readers of bus.flows.dlq, which the routes use, are tested here too.
"""

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bus.admin.readiness import KAFKA_CACHE_FOR
from bus.admin.reads import READ_WAIT_S
from bus.admin.routes import JourneyReader
from bus.admin.server import SHUTDOWN_S, AdminServer
from bus.errors import (
    ConfigError,
    DeadLetterNotFoundError,
    DeadLetterTopicMissingError,
    JourneyTopicMissingError,
    KafkaUnavailableError,
)
from bus.flows.dead_letters import DeadLetter, InputRecord
from bus.flows.dlq import (
    LetterCounts,
    StoredLetter,
    count_letters,
    mark_replayed,
    read_letter,
    read_letters,
    replay,
)
from bus.flows.model import AdminSettings
from bus.local_kafka.readiness import answers_metadata
from bus.resilience.circuit_breaker import CircuitBreaker
from bus.telemetry.status import ItemState, StatusBoard
from tests.conftest import free_port, start_broker
from tests.flow_harness import read_records

KEY = "admin-api-key-5c1e9b"
PASSWORD = "admin-password-8d3f02"
API_KEY_AUTH = {"api_key": {"header": "X-Admin-Key", "keys": [KEY]}}
BASIC_AUTH = {"basic": {"users": {"sre": PASSWORD}}}
PROBLEM = "application/problem+json"
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
JOURNEY = {"root_id": "e-1", "hops": [{"kind": "inbound", "flow": "crm-webhook"}]}


class FixedMetrics:
    def exposition(self) -> tuple[bytes, str]:
        return b'bus_events_in_total{flow="router",kind="mediation"} 7.0\n', PROMETHEUS


async def stub_journeys(event_id: str, since: datetime | None) -> dict[str, Any] | None:
    if event_id == "e-broken":
        raise KafkaUnavailableError("cannot read the journey topic 'bus.journeys': broker gone")
    if event_id == "e-no-topic":
        raise JourneyTopicMissingError("the journey topic 'bus.journeys' does not exist")
    if event_id != "e-1":
        return None
    return JOURNEY if since is None else {**JOURNEY, "since": since.isoformat()}


async def no_replay(letters: Sequence[StoredLetter]) -> list[str]:
    raise AssertionError("no replay expected in this test")


@contextlib.asynccontextmanager
async def admin_server(
    settings: AdminSettings,
    *,
    bootstrap_servers: str,
    board: StatusBoard | None = None,
    dead_letter_topics: Mapping[str, str] | None = None,
    replayer: Callable[[Sequence[StoredLetter]], Awaitable[list[str]]] = no_replay,
    journeys: JourneyReader = stub_journeys,
    read_wait: float = READ_WAIT_S,
) -> AsyncIterator[AdminServer]:
    async with aiohttp.ClientSession() as session:
        server = AdminServer(
            settings,
            board=board or StatusBoard(),
            metrics=FixedMetrics(),
            bootstrap_servers=bootstrap_servers,
            journeys=journeys,
            dead_letter_topics=dead_letter_topics or {},
            replay=replayer,
            session=session,
            read_wait=read_wait,
        )
        await server.start()
        try:
            yield server
        finally:
            await server.stop()


async def call(
    method: str, url: str, headers: Mapping[str, str] | None = None
) -> tuple[int, Any, Mapping[str, str]]:
    """Status, body (JSON when it is JSON, else text) and headers of one request."""
    async with aiohttp.ClientSession() as session:
        async with asyncio.timeout(90):
            async with session.request(method, url, headers=headers) as response:
                text = await response.text()
                is_json = response.content_type in ("application/json", PROBLEM)
                body = await response.json(content_type=None) if is_json else text
                return response.status, body, response.headers


async def wait_for_status(
    url: str, status: int, within: float, headers: Mapping[str, str] | None = None
) -> Any:
    """Poll `url` until it answers `status`; the last body, or fail saying what it said."""
    last: tuple[int, Any] = (0, None)
    try:
        async with asyncio.timeout(within):
            while last[0] != status:
                code, body, _ = await call("GET", url, headers)
                last = (code, body)
                if code != status:
                    await asyncio.sleep(0.2)
    except TimeoutError as timeout:
        raise AssertionError(f"{url} still answers {last} after {within} s") from timeout
    return last[1]


def loopback(**changes: Any) -> AdminSettings:
    return AdminSettings(host="127.0.0.1", port=0, **changes)


# -- auth ----------------------------------------------------------------------------------------

ROUTES = {
    # (method, route as the router names it): (a path to call it by, status with good credentials)
    ("GET", "/healthz"): ("/healthz", 200),
    ("GET", "/readyz"): ("/readyz", 200),
    ("GET", "/metrics"): ("/metrics", 200),
    ("GET", "/flows"): ("/flows", 200),
    ("GET", "/flows/{name}"): ("/flows/crm-webhook", 200),
    ("GET", "/journeys/{event_id}"): ("/journeys/e-1", 200),
    ("GET", "/dlq"): ("/dlq", 200),
    ("GET", "/dlq/{flow}"): ("/dlq/router", 404),  # no such flow here: the route ran, past auth
    ("GET", "/dlq/{flow}/{partition}/{offset}"): ("/dlq/router/0/0", 404),
    ("POST", "/dlq/{flow}/{partition}/{offset}/replay"): ("/dlq/router/0/0/replay", 404),
    ("POST", "/dlq/{flow}/replay"): ("/dlq/router/replay", 404),
}
UNROUTED = [("GET", "/no/such/route", 404), ("DELETE", "/dlq", 405)]


def calls_of_every_route(server: AdminServer) -> list[tuple[str, str, int]]:
    """(method, path, status with good credentials) for every route the server's router holds,
    and paths no route serves; a route added to the admin API without a case here fails."""
    served = server.routes()
    unlisted = sorted(set(served) - set(ROUTES))
    assert not unlisted, f"add these admin routes to ROUTES in this test: {unlisted}"
    gone = sorted(set(ROUTES) - set(served))
    assert not gone, f"ROUTES names routes the admin API no longer serves: {gone}"
    return [(method, *ROUTES[method, route]) for method, route in served] + UNROUTED


@pytest.mark.parametrize(
    ("auth", "good", "bad"),
    [
        (API_KEY_AUTH, {"X-Admin-Key": KEY}, {"X-Admin-Key": KEY + "x"}),
        (
            BASIC_AUTH,
            {"Authorization": aiohttp.encode_basic_auth("sre", PASSWORD)},
            {"Authorization": aiohttp.encode_basic_auth("sre", "guess")},
        ),
    ],
    ids=["api_key", "basic"],
)
async def test_every_route_refuses_anonymous_and_wrong_credentials_and_serves_a_valid_one(
    auth: dict[str, Any], good: dict[str, str], bad: dict[str, str], bootstrap_servers: str
) -> None:
    board = StatusBoard()
    board.item("crm-webhook", "inbound").enter(ItemState.RUNNING)
    # On all interfaces: allowed because auth is set.
    settings = AdminSettings(host="0.0.0.0", port=0, auth=auth)
    async with admin_server(settings, bootstrap_servers=bootstrap_servers, board=board) as server:
        calls = calls_of_every_route(server)
        assert len(calls) == len(ROUTES) + len(UNROUTED)
        for method, path, served in calls:
            for headers in (None, bad):
                status, body, response_headers = await call(method, server.url + path, headers)
                assert status == 401, (method, path, headers, body)
                assert response_headers["Content-Type"] == PROBLEM
                assert body["type"].endswith(":unauthenticated")
                assert KEY not in str(body)
                assert PASSWORD not in str(body)
                if "basic" in auth:
                    assert response_headers["WWW-Authenticate"].startswith("Basic")
            status, body, _ = await call(method, server.url + path, good)
            assert status == served, (method, path, body)
            if path == "/no/such/route":
                assert "the admin API serves /healthz" in body["detail"]


async def test_without_auth_it_listens_on_loopback_only(bootstrap_servers: str) -> None:
    for host in ("0.0.0.0", "::", "10.1.2.3", "admin.internal"):
        with pytest.raises(ConfigError) as refused:
            async with admin_server(AdminSettings(host=host, port=0), bootstrap_servers=""):
                pass
        message = str(refused.value)
        assert "observability.admin.auth" in message
        assert host in message
        assert "host: 127.0.0.1" in message  # the other fix

    for host in ("127.0.0.1", "::1", "localhost"):
        settings = AdminSettings(host=host, port=0)
        async with admin_server(settings, bootstrap_servers=bootstrap_servers) as server:
            status, body, _ = await call("GET", server.url + "/healthz")
            assert (status, body["status"]) == (200, "alive")


async def test_the_admin_api_cannot_opt_into_anonymous_callers() -> None:
    # What an inbound endpoint may choose, the admin API may not: it replays dead letters.
    for host in ("0.0.0.0", "127.0.0.1"):
        settings = AdminSettings(host=host, port=0, auth={"anonymous": True})
        with pytest.raises(ConfigError) as refused:
            async with admin_server(settings, bootstrap_servers=""):
                pass
        message = str(refused.value)
        assert "observability.admin.auth.anonymous" in message
        assert "cannot let anyone call" in message
        assert "host: 127.0.0.1" in message


async def test_invalid_auth_settings_are_refused_naming_the_key_and_not_the_secret() -> None:
    invalid = {"api_key": {"header": "X Admin Key", "keys": [KEY]}}
    with pytest.raises(ConfigError) as refused:
        async with admin_server(loopback(auth=invalid), bootstrap_servers=""):
            pass
    message = str(refused.value)
    assert "observability.admin.auth.api_key.header" in message
    assert KEY not in message


# -- health, metrics, items, journeys ---------------------------------------------------------


async def test_healthz_says_alive_with_the_uptime() -> None:
    board = StatusBoard()
    board.started -= 90  # as if the process had started a minute and a half ago
    async with admin_server(loopback(), bootstrap_servers="", board=board) as server:
        status, body, _ = await call("GET", server.url + "/healthz")
    assert status == 200
    assert body["status"] == "alive"
    assert 90 <= body["uptime"] < 120
    assert body["started"] == board.started


async def test_metrics_serve_the_exposition_as_it_is() -> None:
    async with admin_server(loopback(), bootstrap_servers="") as server:
        status, body, headers = await call("GET", server.url + "/metrics")
    assert status == 200
    assert headers["Content-Type"] == PROMETHEUS
    assert body == FixedMetrics().exposition()[0].decode()


@pytest.fixture
async def half_read_consumer(
    bootstrap_servers: str,
    topic_name: Callable[[str], str],
    create_topics: Callable[..., Awaitable[None]],
) -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer that took 2 of the 5 records of a topic: 3 records of lag."""
    topic = topic_name("orders")
    await create_topics(topic)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers)
    await producer.start()
    try:
        for number in range(5):
            await producer.send_and_wait(topic, f"order-{number}".encode())
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    partition = TopicPartition(topic, 0)
    consumer.assign([partition])
    await consumer.seek_to_beginning(partition)
    taken: list[Any] = []
    async with asyncio.timeout(30):
        while len(taken) < 2:
            batches = await consumer.getmany(partition, timeout_ms=500, max_records=2 - len(taken))
            taken += batches.get(partition, [])
    try:
        yield consumer
    finally:
        await consumer.stop()


async def test_flows_show_each_item_with_state_counters_lag_breaker_and_last_error(
    half_read_consumer: AIOKafkaConsumer,
) -> None:
    board = StatusBoard()
    router = board.item("router", "mediation")
    router.enter(ItemState.RUNNING)
    router.consumer = half_read_consumer
    router.counters.in_, router.counters.out = 7, 5
    router.counters.failed, router.counters.dead_lettered = 2, 1
    router.in_flight = lambda: 3
    router.dead_letter_topic = "router.dlq"
    erp = board.item("erp", "outbound")
    erp.breaker = CircuitBreaker(failures=1)
    erp.breaker.record_failure()
    erp.enter(ItemState.RESTARTING, ConnectionResetError("erp closed the connection"))
    board.item("crm-webhook", "inbound").enter(ItemState.RUNNING)
    [topic] = {tp.topic for tp in half_read_consumer.assignment()}

    async with admin_server(loopback(), bootstrap_servers="", board=board) as server:
        status, flows, _ = await call("GET", server.url + "/flows")
        one_status, one, _ = await call("GET", server.url + "/flows/erp")
        missing_status, missing, headers = await call("GET", server.url + "/flows/nope")

    assert status == 200
    assert abs(flows["now"] - time.time()) < 60
    items = {item["name"]: item for item in flows["items"]}
    assert list(items) == ["router", "erp", "crm-webhook"]
    assert items["router"]["state"] == "running"
    assert items["router"]["counters"] == {
        "in": 7,
        "out": 5,
        "failed": 2,
        "dead_lettered": 1,
        "retried": 0,
    }
    assert items["router"]["assigned_partitions"] == 1
    assert items["router"]["lag"] == 3
    assert items["router"]["lag_by_partition"] == {f"{topic}[0]": 3}
    assert items["router"]["in_flight"] == 3
    assert items["router"]["dead_letter_topic"] == "router.dlq"
    assert items["erp"]["state"] == "restarting"
    assert items["erp"]["restarts"] == 1
    assert items["erp"]["last_error"] == "ConnectionResetError: erp closed the connection"
    assert items["erp"]["breaker"] == "open"
    assert items["crm-webhook"]["assigned_partitions"] is None
    assert items["crm-webhook"]["breaker"] is None
    assert (one_status, one) == (200, items["erp"])
    assert missing_status == 404
    assert headers["Content-Type"] == PROBLEM
    assert missing["type"].endswith(":unknown-item")
    assert "crm-webhook, erp, router" in missing["detail"]


async def test_journeys_come_from_the_reader_and_unknown_ones_are_404() -> None:
    async with admin_server(loopback(), bootstrap_servers="") as server:
        found = await call("GET", server.url + "/journeys/e-1")
        since = await call("GET", server.url + "/journeys/e-1?since=2026-11-24T11:59:00")
        bad_since = await call("GET", server.url + "/journeys/e-1?since=yesterday")
        unknown = await call("GET", server.url + "/journeys/e-404")
        unknown_since = await call("GET", server.url + "/journeys/e-404?since=2026-11-24T11:59Z")
        broken = await call("GET", server.url + "/journeys/e-broken")
        no_topic = await call("GET", server.url + "/journeys/e-no-topic")
    assert found[:2] == (200, JOURNEY)
    # Passed on to the reader, UTC unless it says otherwise.
    assert since[:2] == (200, {**JOURNEY, "since": "2026-11-24T11:59:00+00:00"})
    assert bad_since[0] == 400
    assert bad_since[1]["type"].endswith(":bad-since")
    assert "'yesterday' is not an ISO 8601 time" in bad_since[1]["detail"]
    assert unknown[0] == 404
    assert unknown[1]["type"].endswith(":unknown-event")
    assert "e-404" in unknown[1]["detail"]
    assert "since 2026-11-24T11:59:00+00:00" in unknown_since[1]["detail"]
    assert broken[0] == 503
    assert broken[2]["Retry-After"].isdigit()
    assert "broker gone" in broken[1]["detail"]
    assert no_topic[0] == 404
    assert no_topic[1]["type"].endswith(":unknown-journey-topic")
    assert "'bus.journeys' does not exist" in no_topic[1]["detail"]


async def test_journeys_and_dead_letters_are_read_one_at_a_time() -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def slow_journeys(event_id: str, since: datetime | None) -> dict[str, Any] | None:
        started.set()
        await release.wait()
        return JOURNEY

    async with admin_server(
        loopback(),
        bootstrap_servers="",  # never asked: no /dlq call gets its turn
        dead_letter_topics={"router": "router.dlq"},
        journeys=slow_journeys,
        read_wait=0.5,
    ) as server:
        first = asyncio.create_task(call("GET", server.url + "/journeys/e-1"))
        await started.wait()
        for method, path in [
            ("GET", "/journeys/e-1"),
            ("GET", "/dlq"),
            ("GET", "/dlq/router"),
            ("GET", "/dlq/router/0/0"),
            ("POST", "/dlq/router/0/0/replay"),
            ("POST", "/dlq/router/replay"),
        ]:
            status, body, headers = await call(method, server.url + path)
            assert (status, body["type"].split(":")[-1]) == (503, "busy"), (path, body)
            assert "another dead-letter or journey read" in body["detail"]
            assert headers["Retry-After"].isdigit()
        status, _, _ = await call("GET", server.url + "/healthz")  # reads no topic: not held
        assert status == 200

        # A caller that the read under way keeps waiting less than read_wait gets its turn.
        second = asyncio.create_task(call("GET", server.url + "/journeys/e-1"))
        await asyncio.sleep(0.1)
        release.set()
        assert (await first)[:2] == (200, JOURNEY)
        assert (await second)[:2] == (200, JOURNEY)


async def test_stop_cuts_off_a_call_under_way_within_seconds() -> None:
    started = asyncio.Event()

    async def endless_journeys(event_id: str, since: datetime | None) -> dict[str, Any] | None:
        started.set()
        await asyncio.Event().wait()  # as a scan of a huge journey topic would
        return None

    async with admin_server(loopback(), bootstrap_servers="", journeys=endless_journeys) as server:
        under_way = asyncio.create_task(call("GET", server.url + "/journeys/e-1"))
        await started.wait()
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 2 * SHUTDOWN_S + 2  # not aiohttp's default 60 s
    with pytest.raises(aiohttp.ClientError):
        await under_way


# -- readiness -----------------------------------------------------------------------------------


async def test_readyz_waits_for_every_consumer_to_hold_its_assignment_even_an_empty_one(
    bootstrap_servers: str,
    topic_name: Callable[[str], str],
    create_topics: Callable[..., Awaitable[None]],
) -> None:
    topic = topic_name("orders")
    await create_topics(topic)  # one partition for two members: one of them gets none
    board = StatusBoard()
    members = [board.item(name, "mediation") for name in ("router-a", "router-b")]
    for member in members:
        member.enter(ItemState.RUNNING)
    board.item("crm-webhook", "inbound")  # still starting: not a consumer, not counted
    consumers = [
        AIOKafkaConsumer(topic, bootstrap_servers=bootstrap_servers, group_id=topic_name("g"))
        for _ in members
    ]
    async with admin_server(loopback(), bootstrap_servers=bootstrap_servers, board=board) as server:
        status, body, _ = await call("GET", server.url + "/readyz")
        assert status == 503
        assert body["checks"]["kafka"]["ok"] is True
        assert body["checks"]["assigned"] == {
            "ok": False,
            "detail": "router-a has no consumer yet; router-b has no consumer yet",
        }
        try:
            for member, consumer in zip(members, consumers, strict=True):
                await consumer.start()
                member.consumer = consumer
            ready = await wait_for_status(server.url + "/readyz", 200, within=60)
            assert ready["ready"] is True
            assert all(check["ok"] for check in ready["checks"].values())
            _, flows, _ = await call("GET", server.url + "/flows")
            assigned = sorted(item["assigned_partitions"] for item in flows["items"][:2])
            assert assigned == [0, 1]  # the member with nothing is ready all the same

            members[1].enter(ItemState.RESTARTING, RuntimeError("decode step crashed"))
            status, body, _ = await call("GET", server.url + "/readyz")
            assert (status, body["ready"]) == (503, False)
            assert body["checks"]["assigned"]["ok"] is False
            assert body["checks"]["assigned"]["detail"].startswith("router-b is restarting")
            assert body["checks"]["kafka"]["ok"]
            assert body["checks"]["breakers"]["ok"]
        finally:
            for consumer in consumers:
                await consumer.stop()


async def test_readyz_fails_when_every_breaker_is_open(bootstrap_servers: str) -> None:
    board = StatusBoard()
    breakers = []
    for name in ("customer-lookup", "price-lookup"):
        item = board.item(name, "lookup")
        item.enter(ItemState.RUNNING)
        item.breaker = CircuitBreaker(failures=1, reset_after=600)
        breakers.append(item.breaker)
    async with admin_server(loopback(), bootstrap_servers=bootstrap_servers, board=board) as server:
        breakers[0].record_failure()
        status, body, _ = await call("GET", server.url + "/readyz")
        assert status == 200
        assert body["checks"]["breakers"] == {
            "ok": True,
            "detail": "1 of 2 circuit breaker(s) open",
        }

        breakers[1].record_failure()
        status, body, _ = await call("GET", server.url + "/readyz")
        assert (status, body["ready"]) == (503, False)
        assert body["checks"]["breakers"] == {
            "ok": False,
            "detail": "every circuit breaker is open: customer-lookup, price-lookup",
        }
        assert body["checks"]["kafka"]["ok"]
        assert body["checks"]["assigned"]["ok"]


async def test_readyz_probes_share_one_kafka_answer_for_a_second() -> None:
    connections = 0

    async def refuse_kafka(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1  # a listener that speaks no Kafka: every probe fails after connecting
        writer.close()

    listener = await asyncio.start_server(refuse_kafka, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        async with admin_server(loopback(), bootstrap_servers=f"127.0.0.1:{port}") as server:
            burst = await asyncio.gather(*(call("GET", server.url + "/readyz") for _ in range(10)))
            assert {status for status, _, _ in burst} == {503}
            assert all(body["checks"]["kafka"]["ok"] is False for _, body, _ in burst)
            one_probe = connections
            assert 1 <= one_probe <= 2  # its TCP check, then its metadata request

            await asyncio.sleep(KAFKA_CACHE_FOR)  # the answer is now stale
            status, _, _ = await call("GET", server.url + "/readyz")
            assert status == 503
            assert connections > one_probe
    finally:
        listener.close()
        await listener.wait_closed()


async def test_kafka_answers_while_any_of_its_addresses_does(bootstrap_servers: str) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts the connection, then never answers a request
        writer.close()

    listener = await asyncio.start_server(silent, "127.0.0.1", 0)
    mute = f"127.0.0.1:{listener.sockets[0].getsockname()[1]}"
    down = f"127.0.0.1:{free_port()}"
    try:
        # The first brokers are down or mute (for maintenance, say): the last one answers.
        started = time.monotonic()
        assert await answers_metadata(f"{down},{mute},{bootstrap_servers}", within=4.0)
        assert time.monotonic() - started < 4.5
        # None answers: false, within the time given for all of them.
        started = time.monotonic()
        assert not await answers_metadata(f"{mute},{down}", within=1.0)
        assert time.monotonic() - started < 1.5
    finally:
        listener.close()
        await listener.wait_closed()


@pytest.mark.timeout(360)
async def test_readyz_follows_a_broker_that_stops_and_starts_again(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    broker = await start_broker(tmp_path_factory, "kafka-readiness")
    try:
        async with admin_server(
            loopback(),
            bootstrap_servers=broker.bootstrap_servers,
            dead_letter_topics={"router": "router.dlq"},
        ) as server:
            ready = server.url + "/readyz"
            body = await wait_for_status(ready, 200, within=10)
            assert body["checks"]["kafka"]["ok"] is True

            await asyncio.to_thread(broker.stop)
            stopped = time.monotonic()
            body = await wait_for_status(ready, 503, within=10)
            assert time.monotonic() - stopped < 5
            assert body["checks"]["kafka"] == {
                "ok": False,
                "detail": f"{broker.bootstrap_servers} did not answer a metadata request "
                "within 2 s",
            }
            status, dlq, headers = await call("GET", server.url + "/dlq/router")
            assert status == 503
            assert dlq["type"].endswith(":kafka-unavailable")
            assert headers["Retry-After"].isdigit()

            await broker.start(ready_within=90)  # the same ports and state directory
            body = await wait_for_status(ready, 200, within=30)
            assert body["ready"] is True
    finally:
        if broker.status().running:
            await asyncio.to_thread(broker.stop)


# -- dead letters --------------------------------------------------------------------------------


async def test_dead_letters_are_listed_inspected_and_replayed(
    bootstrap_servers: str,
    topic_name: Callable[[str], str],
    create_topics: Callable[..., Awaitable[None]],
) -> None:
    source, dlq = topic_name("orders"), topic_name("orders-dlq")
    await create_topics(source, dlq)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers)
    await producer.start()
    try:
        for offset in range(3):
            original = InputRecord(
                topic=source,
                partition=0,
                offset=offset,
                key=f"customer-{offset}".encode(),
                value=f"order-{offset}".encode(),
                headers=[("ce_id", f"e-{offset}".encode())],
            )
            reason = DeadLetter(
                error_type="MappingError",
                error=f"order-{offset}: total is not a number",
                flow="router",
                step="transform",
                topic=source,
                partition=0,
                offset=offset,
                attempts=1,
                time=datetime(2026, 11, 24, 12, 0, offset, tzinfo=UTC),
            )
            record = reason.to_record(original)
            await producer.send_and_wait(
                dlq, record.value, key=record.key, headers=list(record.headers)
            )
    finally:
        await producer.stop()

    async def replayer(letters: Sequence[StoredLetter]) -> list[str]:
        return await replay(bootstrap_servers, letters)

    async with admin_server(
        loopback(),
        bootstrap_servers=bootstrap_servers,
        dead_letter_topics={"router": dlq, "ghost": topic_name("never-created")},
        replayer=replayer,
    ) as server:
        url = server.url
        status, queues, _ = await call("GET", url + "/dlq")
        assert status == 200
        by_flow = {queue["flow"]: queue for queue in queues["queues"]}
        assert by_flow["router"] == {
            "flow": "router",
            "topic": dlq,
            "letters": 3,
            "unreplayed": 3,
            "approximate": True,
        }
        assert by_flow["ghost"]["letters"] is None
        assert "does not exist" in by_flow["ghost"]["error"]

        status, listed, _ = await call("GET", url + "/dlq/router")
        assert (status, listed["total"], listed["approximate"]) == (200, 3, True)
        assert [letter["offset"] for letter in listed["letters"]] == [0, 1, 2]
        assert listed["letters"][1]["reason"] == {
            "error_type": "MappingError",
            "error": "order-1: total is not a number",
            "flow": "router",
            "step": "transform",
            "topic": source,
            "partition": 0,
            "offset": 1,
            "attempts": 1,
            "time": "2026-11-24T12:00:01+00:00",
        }
        status, limited, _ = await call("GET", url + "/dlq/router?limit=2")
        assert (status, limited["total"]) == (200, 3)
        assert [letter["offset"] for letter in limited["letters"]] == [0, 1]
        for bad in ("0", "-1", "many"):
            status, refused, _ = await call("GET", url + f"/dlq/router?limit={bad}")
            assert (status, refused["type"].split(":")[-1]) == (400, "bad-limit")
        status, ghost, _ = await call("GET", url + "/dlq/ghost")
        assert (status, ghost["type"].split(":")[-1]) == (404, "unknown-dead-letter-topic")

        status, letter, _ = await call("GET", url + "/dlq/router/0/1")
        assert status == 200
        assert (letter["topic"], letter["partition"], letter["offset"]) == (dlq, 0, 1)
        assert base64.b64decode(letter["value"]) == b"order-1"
        assert base64.b64decode(letter["key"]) == b"customer-1"
        headers = {header["name"]: header["value"] for header in letter["headers"]}
        assert headers["ce_id"] == "e-1"
        assert headers["bus_dlq_error"] == "order-1: total is not a number"
        assert headers["bus_dlq_topic"] == source
        for partition, offset in [(0, 9), (5, 0)]:
            status, missing, _ = await call("GET", url + f"/dlq/router/{partition}/{offset}")
            assert (status, missing["type"].split(":")[-1]) == (404, "unknown-letter")
            assert f"{dlq}[{partition}]@{offset} holds no dead letter" in missing["detail"]
            assert "GET /dlq/router" in missing["detail"]

        status, one, _ = await call("POST", url + "/dlq/router/0/1/replay")
        assert (status, one) == (200, {"replayed": [f"{dlq}[0]@1 -> {source}"]})
        [back] = await read_records(bootstrap_servers, source, 1)
        assert (back.key, back.value) == (b"customer-1", b"order-1")
        assert dict(back.headers)["bus_replayed_from"] == f"{dlq}[0]@1".encode()
        assert not any(name.startswith("bus_dlq_") for name, _ in back.headers)

        status, everything, _ = await call("POST", url + "/dlq/router/replay")
        assert status == 200
        assert everything["replayed"] == [f"{dlq}[0]@{offset} -> {source}" for offset in range(3)]
        arrived = await read_records(bootstrap_servers, source, 4)
        assert [record.value for record in arrived] == [
            b"order-1",
            b"order-0",
            b"order-1",
            b"order-2",
        ]
        status, again, _ = await call("POST", url + "/dlq/router/replay")
        assert (status, again) == (200, {"replayed": []})
        _, queues, _ = await call("GET", url + "/dlq")
        by_flow = {queue["flow"]: queue for queue in queues["queues"]}
        assert (by_flow["router"]["letters"], by_flow["router"]["unreplayed"]) == (3, 0)


async def test_a_record_that_bus_did_not_dead_letter_is_shown_but_not_replayed(
    bootstrap_servers: str,
    topic_name: Callable[[str], str],
    create_topics: Callable[..., Awaitable[None]],
) -> None:
    dlq = topic_name("orders-dlq")
    await create_topics(dlq)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(dlq, b"written by hand")
    finally:
        await producer.stop()

    async def replayer(letters: Sequence[StoredLetter]) -> list[str]:
        return await replay(bootstrap_servers, letters)

    async with admin_server(
        loopback(),
        bootstrap_servers=bootstrap_servers,
        dead_letter_topics={"router": dlq},
        replayer=replayer,
    ) as server:
        status, listed, _ = await call("GET", server.url + "/dlq/router")
        assert (status, listed["letters"]) == (200, [{"partition": 0, "offset": 0, "reason": None}])
        for path in ("/dlq/router/0/0/replay", "/dlq/router/replay"):
            status, refused, _ = await call("POST", server.url + path)
            assert (status, refused["type"].split(":")[-1]) == (409, "not-replayable")
            assert "carries no bus_dlq_* headers" in refused["detail"]


async def send_letters(bootstrap_servers: str, topic: str, partitions: Mapping[int, int]) -> None:
    """`partitions[p]` records into partition p, valued b"p<partition>-<n>"."""
    sender = AIOKafkaProducer(bootstrap_servers=bootstrap_servers)
    await sender.start()
    try:
        for partition, count in partitions.items():
            for number in range(count):
                value = f"p{partition}-{number}".encode()
                await sender.send_and_wait(topic, value, partition=partition)
    finally:
        await sender.stop()


async def test_letters_are_read_up_to_a_limit_or_alone_and_counted_from_offsets(
    bootstrap_servers: str,
    topic_name: Callable[[str], str],
    create_topics: Callable[..., Awaitable[None]],
) -> None:
    dlq = topic_name("dlq")
    await create_topics(dlq, partitions=2)
    await send_letters(bootstrap_servers, dlq, {0: 3, 1: 2})

    def where(letters: Sequence[StoredLetter]) -> list[tuple[int, int]]:
        return [(letter.partition, letter.offset) for letter in letters]

    everything = await read_letters(bootstrap_servers, dlq)
    assert where(everything) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    # The first ones in (partition, offset) order, however the partitions are fetched.
    assert where(await read_letters(bootstrap_servers, dlq, limit=4)) == where(everything)[:4]
    assert where(await read_letters(bootstrap_servers, dlq, limit=1)) == [(0, 0)]

    one = await read_letter(bootstrap_servers, dlq, 1, 1)
    assert (one.where, one.value, one.reason) == (f"{dlq}[1]@1", b"p1-1", None)
    for partition, offset, held in [(1, 2, "holds offsets 0 to 1"), (2, 0, "2 partition(s)")]:
        with pytest.raises(DeadLetterNotFoundError) as absent:
            await read_letter(bootstrap_servers, dlq, partition, offset)
        assert f"{dlq}[{partition}]@{offset}" in str(absent.value)
        assert held in str(absent.value)

    assert await count_letters(bootstrap_servers, dlq) == LetterCounts(letters=5, unreplayed=5)
    await mark_replayed(bootstrap_servers, everything[:2])  # partition 0 up to offset 1
    assert await count_letters(bootstrap_servers, dlq) == LetterCounts(letters=5, unreplayed=3)
    waiting = await read_letters(bootstrap_servers, dlq, unreplayed=True)
    assert where(waiting) == [(0, 2), (1, 0), (1, 1)]
    assert where(await read_letters(bootstrap_servers, dlq, unreplayed=True, limit=2)) == [
        (0, 2),
        (1, 0),
    ]


async def test_a_transaction_marker_makes_the_counts_approximate(
    bootstrap_servers: str,
    topic_name: Callable[[str], str],
    create_topics: Callable[..., Awaitable[None]],
) -> None:
    dlq = topic_name("dlq")
    await create_topics(dlq)
    sender = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, transactional_id=dlq)
    await sender.start()
    try:
        async with sender.transaction():
            await sender.send_and_wait(dlq, b"in a transaction")
    finally:
        await sender.stop()

    [letter] = await read_letters(bootstrap_servers, dlq)
    assert letter.offset == 0
    # The commit marker took offset 1: counted, but no letter.
    assert await count_letters(bootstrap_servers, dlq) == LetterCounts(letters=2, unreplayed=2)
    with pytest.raises(DeadLetterNotFoundError):
        await read_letter(bootstrap_servers, dlq, 0, 1)


async def test_a_missing_topic_and_an_absent_kafka_are_told_apart(
    bootstrap_servers: str, topic_name: Callable[[str], str]
) -> None:
    missing = topic_name("never-created")
    for read in (
        read_letters(bootstrap_servers, missing),
        read_letter(bootstrap_servers, missing, 0, 0),
        count_letters(bootstrap_servers, missing),
    ):
        with pytest.raises(DeadLetterTopicMissingError) as refused:
            await read
        assert f"dead-letter topic {missing!r} does not exist" in str(refused.value)

    nowhere = f"127.0.0.1:{free_port()}"
    with pytest.raises(KafkaUnavailableError) as unavailable:
        await read_letters(nowhere, missing)
    assert f"cannot read dead-letter topic {missing!r} at {nowhere}" in str(unavailable.value)
