"""REST polling sources against the test session's real Kafka broker and a real aiohttp server.

The server (`Api`) plays a collection three ways (since, page tokens, ETag) and injects faults:
HTTP 500, 429 with Retry-After, 401, a reset connection, a response slower than the timeout, a
request that hangs until released. Outputs are read as read_committed readers read them (and,
where it proves something, as read_uncommitted readers do).
"""

import asyncio
import contextlib
import hashlib
import json
import logging
import socket
import struct
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import ValidationError

from adapters.rest.polling import PollingClient, RestPoll, poll_settings, rest_poller
from bus.events.catalog import SchemaCatalog
from bus.events.codec import EventCodec
from bus.events.event import Event
from bus.flows.dead_letters import DeadLetter
from bus.flows.loading import load_flow_files
from bus.flows.model import Inbound
from bus.flows.runtime import run_flows
from bus.flows.validation import validate_flows
from bus.polling import CursorStore, Poller, PollerFencedError, PollFailedError
from bus.polling.cursor_store import DEFAULT_TOPIC
from bus.polling.poller import POLL_NAMESPACE, canonical_json
from bus.resilience.retry import RetryPolicy
from bus.telemetry.hop import Output
from bus.telemetry.hub import Telemetry
from bus.telemetry.status import ItemState, StatusBoard
from bus.telemetry.tracing import Tracing
from tests.conftest import ROOT
from tests.flow_harness import decode, headers_of, read_records, running_flows, write_flow
from tests.test_tracing_on_kafka import RecordedMetrics, samples

CATALOG = SchemaCatalog.load(ROOT / "schemas")
FAST = RetryPolicy(initial=0.05, max_delay=0.2, multiplier=2.0, jitter=0.0)
EVENT = {
    "type": "com.acme.crm.CustomerChanged",
    "key": "item.id",
    "map": {
        "customerId": "item.id",
        "change": '"UPDATED"',
        "email": "item.email",
        "name": "item.name",
        "changedAt": "item.updated_at",
    },
}
TopicName = Callable[[str], str]
CreateTopics = Callable[..., Awaitable[None]]


def ticket(number: int, updated_at: str | None = None) -> dict[str, Any]:
    return {
        "id": f"t-{number}",
        "email": f"customer{number}@example.com",
        "name": f"Customer {number}",
        "updated_at": updated_at or f"2026-01-01T00:00:{number:02d}Z",
    }


# -- the polled API ---------------------------------------------------------------------------


@dataclass
class Request:
    at: float
    path: str
    query: dict[str, str]
    headers: dict[str, str]


@dataclass
class Api:
    """The collection: `/since` (inclusive: `updated_at >= updated_since`), `/pages` (page
    tokens are offsets) and `/etag`. `faults` are used up one per request."""

    items: list[dict[str, Any]] = field(default_factory=list)
    page_size: int = 2
    faults: list[str] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    since_body: Any = None  # when set, /since answers this instead
    fail_token: str | None = None  # the first request for this page token gets a 500
    hang_token: str | None = None  # the first request for this page token hangs...
    hanging: asyncio.Event = field(default_factory=asyncio.Event)  # (set while it does)
    release: asyncio.Event = field(default_factory=asyncio.Event)  # ...until this is set
    not_modified: int = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/since", self.since)
        app.router.add_get("/pages", self.pages)
        app.router.add_get("/etag", self.etag)
        return app

    async def fault(self, request: web.Request) -> web.StreamResponse | None:
        self.requests.append(
            Request(time.monotonic(), request.path, dict(request.query), dict(request.headers))
        )
        if not self.faults:
            return None
        fault = self.faults.pop(0)
        if fault == "500":
            return web.Response(status=500, text="internal error")
        if fault == "429":
            return web.Response(status=429, headers={"Retry-After": "1"})
        if fault == "401":
            return web.Response(status=401)
        if fault == "slow":
            await asyncio.sleep(1.0)  # the client gave up after its 300ms timeout
            return None
        assert fault == "reset", fault
        sock = request.transport.get_extra_info("socket") if request.transport else None
        if sock is not None:  # RST instead of FIN: "connection reset by peer"
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        assert request.transport is not None
        request.transport.abort()
        return web.Response()  # never reaches the client

    async def since(self, request: web.Request) -> web.StreamResponse:
        if (answer := await self.fault(request)) is not None:
            return answer
        if self.since_body is not None:
            return web.json_response(self.since_body)
        since = request.query.get("updated_since")
        chosen = [item for item in self.items if since is None or item["updated_at"] >= since]
        return web.json_response({"tickets": chosen})

    async def pages(self, request: web.Request) -> web.StreamResponse:
        if (answer := await self.fault(request)) is not None:
            return answer
        token = request.query.get("page_token")
        if token is not None and token == self.fail_token:
            self.fail_token = None
            return web.Response(status=500)
        if token is not None and token == self.hang_token:
            self.hang_token = None
            self.hanging.set()
            await self.release.wait()
        start = int(token or 0)
        following = start + self.page_size
        return web.json_response(
            {
                "data": self.items[start:following],
                "next": str(following) if following < len(self.items) else None,
            }
        )

    async def etag(self, request: web.Request) -> web.StreamResponse:
        if (answer := await self.fault(request)) is not None:
            return answer
        tag = '"' + hashlib.sha256(canonical_json(self.items)).hexdigest()[:16] + '"'
        if request.headers.get("If-None-Match") == tag:
            self.not_modified += 1
            return web.Response(status=304, headers={"ETag": tag})
        return web.json_response(self.items, headers={"ETag": tag})


@contextlib.asynccontextmanager
async def serving(api: Api) -> AsyncIterator[str]:
    runner = web.AppRunner(api.app(), shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        api.release.set()
        await runner.cleanup()


# -- helpers ----------------------------------------------------------------------------------


def inbound(name: str, topic: str, poll: dict[str, Any], event: dict[str, Any] = EVENT) -> Inbound:
    return Inbound.model_validate(
        {"name": name, "topic": topic, "rest": {"poll": poll}, "event": event}
    )


def new_poller(
    item: Inbound,
    session: aiohttp.ClientSession,
    bootstrap_servers: str,
    store: CursorStore | None,
    before_commit: Callable[[], Awaitable[None]] | None = None,
) -> Poller:
    poll = poll_settings(item)
    assert poll is not None
    return rest_poller(
        item,
        poll,
        session=session,
        codec=EventCodec(CATALOG),
        bootstrap_servers=bootstrap_servers,
        store=store,
        backoff=FAST,
        before_commit=before_commit,
    )


@contextlib.asynccontextmanager
async def running(poller: Poller) -> AsyncIterator[asyncio.Task[None]]:
    """The poller runs while inside; leaving stops it and waits for it."""
    stop = asyncio.Event()
    task = asyncio.create_task(poller.run(stop))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


async def until(condition: Callable[[], bool], within: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + within
    for _ in iter(condition, True):  # until condition() is true
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what or condition}")
        await asyncio.sleep(0.02)


async def read_topic(
    bootstrap_servers: str, topic: str, isolation: str = "read_committed"
) -> list[ConsumerRecord]:
    """Everything in partition 0 up to its end as this reader sees it (under read_committed:
    up to the last stable offset, so an open transaction and all after it stay unseen)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        isolation_level=isolation,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    partition = TopicPartition(topic, 0)
    records: list[ConsumerRecord] = []
    try:
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        end = (await consumer.end_offsets([partition]))[partition]
        async with asyncio.timeout(15):
            while await consumer.position(partition) < end:
                for batch in (await consumer.getmany(timeout_ms=200)).values():
                    records.extend(record for record in batch if record.offset < end)
    finally:
        await consumer.stop()
    return records


async def events(records: list[ConsumerRecord]) -> list[Event]:
    codec = EventCodec(CATALOG)
    return [(await codec.decode(r.key, r.value, r.headers)).event for r in records]


async def customer_ids(bootstrap_servers: str, topic: str) -> list[str]:
    return [e.data["customerId"] for e in await events(await read_topic(bootstrap_servers, topic))]


def expected_id(poller: str, item: dict[str, Any]) -> str:
    identity = hashlib.sha256(canonical_json(item)).hexdigest()
    return str(uuid.uuid5(POLL_NAMESPACE, f"{poller}/{identity}"))


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
def name() -> str:
    return f"poll-{uuid.uuid4().hex[:8]}"


# -- settings ---------------------------------------------------------------------------------


def problems_of(poll: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    with pytest.raises(ValidationError) as raised:
        RestPoll.model_validate(poll)
    return [(tuple(error["loc"]), error["msg"]) for error in raised.value.errors()]


def test_settings_are_checked_with_messages_that_say_what_to_fix() -> None:
    good = {"url": "https://helpdesk.example/api/tickets", "every": "30s"}
    poll = RestPoll.model_validate(
        {**good, "items": "response.body.tickets", "headers": {"Accept": "application/json"}}
    )
    assert poll.every.total_seconds() == 30
    assert poll.timeout.total_seconds() == 30
    assert poll.origin == "https://helpdesk.example/api/tickets"

    [(loc, message)] = problems_of({**good, "evry": "1m"})
    assert loc == ("evry",)
    assert "did you mean every?" in message
    [(loc, message)] = problems_of({**good, "items": "respnse.body"})
    assert loc == ("items",)
    assert "unknown name 'respnse'" in message
    assert "`response`" in message
    [(loc, message)] = problems_of({**good, "url": "https://x.example/t?since={cursor}"})
    assert loc == ("url",)
    assert "cursor.param" in message
    [(loc, message)] = problems_of({**good, "every": "30"})
    assert loc == ("every",)
    assert "e.g. 200ms" in message
    problems = problems_of({**good, "cursor": {"kind": "since"}})
    assert [loc for loc, _ in problems] == [("cursor",), ("cursor",)]
    assert "expected one of them, found neither" in problems[0][1]
    assert "needs next" in problems[1][1]
    assert "item.updated_at" in problems[1][1]
    [(loc, message)] = problems_of(
        {**good, "cursor": {"kind": "page_token", "param": "t", "next": "item.next"}}
    )
    assert loc == ("cursor", "next")
    assert "`response`" in message
    [(loc, message)] = problems_of({**good, "cursor": {"kind": "etag", "param": "x"}})
    assert loc == ("cursor", "param")
    assert "If-None-Match" in message
    [(loc, message)] = problems_of(
        {
            **good,
            "cursor": {
                "kind": "since",
                "param": "s",
                "next": "item.t",
                "start": datetime(2026, 1, 1, tzinfo=UTC),
            },
        }
    )
    assert loc == ("cursor", "start")
    assert "quote it" in message


# -- the cursor kinds -------------------------------------------------------------------------


async def test_since_cursor_publishes_each_item_once_and_keeps_the_greatest_value(
    bootstrap_servers: str, topic_name: TopicName, create_topics: CreateTopics, name: str,
    session: aiohttp.ClientSession,
) -> None:  # fmt: skip
    topic = topic_name("out")
    await create_topics(topic, f"{name}.dlq")
    api = Api(items=[ticket(1), ticket(2), ticket(3)])
    async with serving(api) as base:
        item = inbound(
            name,
            topic,
            {
                "url": f"{base}/since",
                "every": "100ms",
                "items": "response.body.tickets",
                "cursor": {
                    "kind": "since",
                    "param": "updated_since",
                    "next": "item.updated_at",
                    "start": "2026-01-01T00:00:00Z",
                },
                "headers": {"Accept": "application/json"},
            },
        )
        # No store given: the default compacted topic, created if missing.
        poller = new_poller(item, session, bootstrap_servers, store=None)
        async with running(poller):
            await until(lambda: poller.published == 3, what="3 published")
            # New items, one of them at the cursor's instant: the API answers >=, so the
            # newest old one comes again and is skipped.
            api.items += [ticket(4, "2026-01-01T00:00:03Z"), ticket(5)]
            await until(lambda: poller.published == 5, what="5 published")
            polls = poller.polls
            await until(lambda: poller.polls >= polls + 2, what="two more polls")
    assert await customer_ids(bootstrap_servers, topic) == ["t-1", "t-2", "t-3", "t-4", "t-5"]
    published = await events(await read_topic(bootstrap_servers, topic))
    assert [e.id for e in published] == [expected_id(name, item) for item in api.items]
    assert {e.source for e in published} == {f"/inbound/{name}"}
    assert [e.key for e in published] == ["t-1", "t-2", "t-3", "t-4", "t-5"]
    sent = [r.query.get("updated_since") for r in api.requests]
    assert sent[0] == "2026-01-01T00:00:00Z"
    assert sent[-1] == "2026-01-01T00:00:05Z"
    assert api.requests[0].headers["Accept"] == "application/json"
    stored = await CursorStore(bootstrap_servers).load(name)
    assert stored is not None
    assert stored.position == "2026-01-01T00:00:05Z"
    assert len(stored.seen) == 5
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        [described] = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, DEFAULT_TOPIC)]
        )
    finally:
        await admin.close()
    configs = {entry[0]: entry[1] for entry in described.resources[0][4]}
    assert configs["cleanup.policy"] == "compact"


async def test_page_tokens_are_followed_to_the_last_page_and_resumed_there(
    bootstrap_servers: str, topic_name: TopicName, create_topics: CreateTopics, name: str,
    session: aiohttp.ClientSession,
) -> None:  # fmt: skip
    topic, cursors = topic_name("out"), topic_name("cursors")
    await create_topics(topic, f"{name}.dlq")
    store = CursorStore(bootstrap_servers, cursors)
    # The first poll fails at the second page: the next one goes on from there.
    api = Api(items=[ticket(n) for n in range(1, 6)], page_size=2, fail_token="2")
    async with serving(api) as base:
        poll = {
            "url": f"{base}/pages",
            "every": "100ms",
            "items": "response.body.data",
            "cursor": {"kind": "page_token", "param": "page_token", "next": "response.body.next"},
        }
        poller = new_poller(inbound(name, topic, poll), session, bootstrap_servers, store)
        async with running(poller):
            await until(lambda: poller.published == 5, what="5 published")
            assert poller.position == "4"  # the last page's own token
            api.items += [ticket(6), ticket(7)]
            await until(lambda: poller.published == 7, what="7 published")
            requests = len(api.requests)
            await until(lambda: len(api.requests) >= requests + 2, what="two more polls")
    assert await customer_ids(bootstrap_servers, topic) == [f"t-{n}" for n in range(1, 8)]
    tokens = [r.query.get("page_token") for r in api.requests]
    assert tokens[:4] == [None, "2", "2", "4"]
    assert "6" in tokens
    assert None not in tokens[1:]
    stored = await store.load(name)
    assert stored is not None
    assert stored.position == "6"


async def test_etag_polls_get_304_and_publish_only_new_items_when_content_changes(
    bootstrap_servers: str, topic_name: TopicName, create_topics: CreateTopics, name: str,
    session: aiohttp.ClientSession,
) -> None:  # fmt: skip
    topic, cursors = topic_name("out"), topic_name("cursors")
    await create_topics(topic, f"{name}.dlq")
    store = CursorStore(bootstrap_servers, cursors)
    api = Api(items=[ticket(1), ticket(2)])
    async with serving(api) as base:
        poll = {"url": f"{base}/etag", "every": "100ms", "cursor": {"kind": "etag"}}
        poller = new_poller(inbound(name, topic, poll), session, bootstrap_servers, store)
        async with running(poller):
            await until(lambda: poller.published == 2, what="2 published")
            await until(lambda: api.not_modified >= 3, what="three 304s")
            first_etag = poller.position
            api.items = [ticket(1), ticket(2), ticket(3)]  # changed: one item more
            await until(lambda: poller.published == 3, what="the new item")
            await until(lambda: api.not_modified >= 5, what="304s again")
    assert await customer_ids(bootstrap_servers, topic) == ["t-1", "t-2", "t-3"]
    assert poller.skipped == 2  # the two old items, returned again with the new ETag
    assert api.requests[0].headers.get("If-None-Match") is None
    assert first_etag is not None
    assert any(r.headers.get("If-None-Match") == first_etag for r in api.requests)
    stored = await store.load(name)
    assert stored is not None
    assert stored.position == poller.position != first_etag


# -- restarts, crashes, zombies ---------------------------------------------------------------


async def test_a_restarted_poller_resumes_from_its_cursor_without_gap_or_duplicate(
    bootstrap_servers: str, topic_name: TopicName, create_topics: CreateTopics, name: str,
    session: aiohttp.ClientSession,
) -> None:  # fmt: skip
    topic, cursors = topic_name("out"), topic_name("cursors")
    await create_topics(topic, f"{name}.dlq")
    store = CursorStore(bootstrap_servers, cursors)
    api = Api(items=[ticket(n) for n in range(1, 7)], page_size=2, hang_token="4")
    async with serving(api) as base:
        poll = {
            "url": f"{base}/pages",
            "every": "100ms",
            "items": "response.body.data",
            "cursor": {"kind": "page_token", "param": "page_token", "next": "response.body.next"},
        }
        first = new_poller(inbound(name, topic, poll), session, bootstrap_servers, store)
        async with running(first):
            # Two pages committed, the third one's request hangs: stop the poller there.
            await api.hanging.wait()
            assert first.published == 4
        requests = len(api.requests)
        second = new_poller(inbound(name, topic, poll), session, bootstrap_servers, store)
        async with running(second):
            await until(lambda: second.published == 2, what="the last page")
    assert api.requests[requests].query.get("page_token") == "4"  # the first request of #2
    published = await events(await read_topic(bootstrap_servers, topic))
    assert [e.data["customerId"] for e in published] == [f"t-{n}" for n in range(1, 7)]
    assert len({e.id for e in published}) == 6


async def test_a_crash_before_commit_hides_the_page_and_its_successor_publishes_it_once(
    bootstrap_servers: str, topic_name: TopicName, create_topics: CreateTopics, name: str,
    session: aiohttp.ClientSession,
) -> None:  # fmt: skip
    topic, cursors = topic_name("out"), topic_name("cursors")
    await create_topics(topic, f"{name}.dlq")
    store = CursorStore(bootstrap_servers, cursors)
    api = Api(items=[ticket(n) for n in range(1, 6)], page_size=2)
    reached, release = asyncio.Event(), asyncio.Event()

    async def stuck_before_first_commit() -> None:
        if not reached.is_set():
            reached.set()
            await release.wait()

    async with serving(api) as base:
        poll = {
            "url": f"{base}/pages",
            "every": "100ms",
            "items": "response.body.data",
            "cursor": {"kind": "page_token", "param": "page_token", "next": "response.body.next"},
        }
        item = inbound(name, topic, poll)
        zombie = new_poller(item, session, bootstrap_servers, store, stuck_before_first_commit)
        stop_zombie = asyncio.Event()
        zombie_task = asyncio.create_task(zombie.run(stop_zombie))
        try:
            await asyncio.wait_for(reached.wait(), 15)
            # The first page's events and cursor are written and acknowledged, not committed:
            # a read_uncommitted reader sees the events, a read_committed one nothing at all.
            assert len(await read_topic(bootstrap_servers, topic, "read_uncommitted")) == 2
            assert await read_topic(bootstrap_servers, topic) == []
            assert await store.load(name) is None
            # The process "dies" here; a new poller of the same name takes over: it fences the
            # zombie, whose open transaction is aborted, and publishes everything once.
            successor = new_poller(item, session, bootstrap_servers, store)
            async with running(successor):
                await until(lambda: successor.published == 5, what="5 published by successor")
                # The zombie wakes up and tries to commit: refused, it stops.
                release.set()
                with pytest.raises(PollerFencedError):
                    await asyncio.wait_for(zombie_task, 15)
                assert zombie.published == 0
        finally:
            stop_zombie.set()
            release.set()
            with contextlib.suppress(PollerFencedError, TimeoutError):
                await asyncio.wait_for(zombie_task, 15)
    committed = await events(await read_topic(bootstrap_servers, topic))
    assert [e.data["customerId"] for e in committed] == [f"t-{n}" for n in range(1, 6)]
    assert [e.id for e in committed] == [expected_id(name, item) for item in api.items]
    # The aborted copies of the first page are in the log, with the same ids, never visible.
    everything = await events(await read_topic(bootstrap_servers, topic, "read_uncommitted"))
    assert len(everything) == 7
    assert [e.id for e in everything[:2]] == [e.id for e in committed[:2]]
    stored = await store.load(name)
    assert stored is not None
    assert stored.position == "4"


# -- failures ---------------------------------------------------------------------------------


async def test_http_failures_are_logged_and_retried_until_the_api_recovers(
    *, bootstrap_servers: str, topic_name: TopicName, create_topics: CreateTopics, name: str,
    session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    topic, cursors = topic_name("out"), topic_name("cursors")
    await create_topics(topic, f"{name}.dlq")
    store = CursorStore(bootstrap_servers, cursors)
    # aiohttp resends a request at once when a reused keep-alive connection breaks: the second
    # reset, on a fresh connection, is the one the poller sees.
    api = Api(items=[ticket(1), ticket(2)], faults=["500", "429", "reset", "reset", "slow"])
    caplog.set_level(logging.INFO, logger="bus.polling")
    async with serving(api) as base:
        poll = {
            "url": f"{base}/since",
            "every": "100ms",
            "timeout": "300ms",
            "items": "response.body.tickets",
            "cursor": {"kind": "since", "param": "updated_since", "next": "item.updated_at"},
        }
        poller = new_poller(inbound(name, topic, poll), session, bootstrap_servers, store)
        async with running(poller):
            await until(lambda: poller.published == 2, what="2 published after the faults")
            api.faults = ["500"]
            api.items.append(ticket(3))
            await until(lambda: poller.published == 3, what="the item after one more 500")
    assert await customer_ids(bootstrap_servers, topic) == ["t-1", "t-2", "t-3"]
    assert poller.failed_polls == 5
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    origin = f"{base}/since"
    assert any(f"GET {origin} answered HTTP 500 Internal Server Error" in w for w in warnings)
    assert any(
        f"GET {origin} answered HTTP 429 Too Many Requests (Retry-After 1 s)" in w for w in warnings
    )
    assert any(f"GET {origin}: the connection broke" in w for w in warnings)
    assert any(f"GET {origin} timed out after 300ms" in w for w in warnings)
    assert any("polling again in" in w and "failed polls in a row" in w for w in warnings)
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("polling works again after 4 failed polls" in i for i in infos)
    # The server asked for a second after the 429, and got it.
    assert api.requests[2].at - api.requests[1].at >= 0.95


async def test_bad_items_and_bad_responses_are_dead_lettered_once_and_the_rest_published(
    bootstrap_servers: str, topic_name: TopicName, create_topics: CreateTopics, name: str,
    session: aiohttp.ClientSession,
) -> None:  # fmt: skip
    topic, cursors = topic_name("out"), topic_name("cursors")
    await create_topics(topic, f"{name}.dlq")
    store = CursorStore(bootstrap_servers, cursors)
    no_email = {"id": "t-2", "name": "No Email", "updated_at": "2026-01-01T00:00:02Z"}
    no_time = {"id": "t-4", "email": "x@example.com", "name": "No Time"}
    api = Api(items=[ticket(1), no_email, ticket(3), no_time])
    async with serving(api) as base:
        poll = {
            "url": f"{base}/since",
            "every": "100ms",
            "items": "response.body.tickets",
            "cursor": {"kind": "since", "param": "updated_since", "next": "item.updated_at"},
        }
        poller = new_poller(inbound(name, topic, poll), session, bootstrap_servers, store)
        async with running(poller):
            await until(lambda: poller.published == 2 and poller.dead_lettered == 2)
            api.since_body = {"tickets": {"error": "maintenance"}}  # not a list
            await until(lambda: poller.dead_lettered == 3, what="the bad response")
            polls = poller.polls
            await until(lambda: poller.polls >= polls + 3, what="three more polls")
            assert poller.dead_lettered == 3  # the same bad response is dead-lettered once
    assert await customer_ids(bootstrap_servers, topic) == ["t-1", "t-3"]
    letters = await read_topic(bootstrap_servers, f"{name}.dlq")
    reasons = [DeadLetter.from_headers(letter.headers) for letter in letters]
    assert all(reason is not None for reason in reasons)
    steps = {
        reason.step: (reason, letter)
        for reason, letter in zip(reasons, letters, strict=True)
        if reason
    }
    assert set(steps) == {"event.map.email", "cursor.next", "items"}
    reason, letter = steps["event.map.email"]
    assert json.loads(letter.value) == no_email
    assert letter.key == b"t-2"
    assert reason.flow == name
    assert reason.topic == f"{base}/since"
    assert reason.offset == -1
    assert "email" in reason.error
    reason, letter = steps["cursor.next"]
    assert json.loads(letter.value) == no_time
    assert "updated_at" in reason.error
    reason, letter = steps["items"]
    assert json.loads(letter.value) == {"tickets": {"error": "maintenance"}}
    assert "not a list" in reason.error
    stored = await store.load(name)
    assert stored is not None
    assert stored.position == "2026-01-01T00:00:03Z"


async def test_a_401_refreshes_the_credentials_once_and_tries_again(
    session: aiohttp.ClientSession,
) -> None:
    class Tokens:
        def __init__(self, renewable: bool) -> None:
            self.renewable = renewable
            self.issued = 1

        async def apply(
            self, headers: MutableMapping[str, str], query: MutableMapping[str, str]
        ) -> None:
            headers["Authorization"] = f"Bearer token-{self.issued}"
            query["tenant"] = "acme"

        async def refresh(self) -> bool:
            self.issued += 1
            return self.renewable

        async def close(self) -> None:
            pass

    api = Api(items=[ticket(1)], faults=["401"])
    async with serving(api) as base:
        poll = RestPoll.model_validate({"url": f"{base}/since?limit=10", "every": "1s"})
        fetched = await PollingClient(session, poll, auth=Tokens(renewable=True)).get()
        assert fetched is not None
        assert fetched.response.body == {"tickets": [ticket(1)]}
        assert [r.headers["Authorization"] for r in api.requests] == [
            "Bearer token-1",
            "Bearer token-2",
        ]
        assert api.requests[1].query == {"limit": "10", "tenant": "acme"}
        api.faults = ["401", "401"]
        with pytest.raises(PollFailedError, match="HTTP 401 Unauthorized even after refreshing"):
            await PollingClient(session, poll, auth=Tokens(renewable=True)).get()
        api.faults = ["401"]
        with pytest.raises(PollFailedError, match=r"HTTP 401 .*; check the poller's credentials"):
            await PollingClient(session, poll, auth=Tokens(renewable=False)).get()


async def test_a_server_that_is_down_is_a_poll_failure_that_names_it(
    session: aiohttp.ClientSession,
) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    poll = RestPoll.model_validate({"url": f"http://127.0.0.1:{port}/tickets", "every": "1s"})
    with pytest.raises(
        PollFailedError, match=rf"GET http://127.0.0.1:{port}/tickets: cannot connect"
    ):
        await PollingClient(session, poll).get()


# -- through the flow file and bus run ----------------------------------------------------------


def poll_flow(folder: Path, name: str, url: str, topic: str, auth: str | None = None) -> Path:
    """A flow file with one poll item, `name`, polling `url` (a since cursor) every 100ms, with
    the `auth` settings given (YAML), if any."""
    auth_setting = f"\n        auth: {auth}" if auth else ""
    return write_flow(
        folder,
        f"""
inbound:
  - name: {name}
    rest:
      poll:
        url: {url}
        every: 100ms
        items: response.body.tickets
        cursor: {{kind: since, param: updated_since, next: item.updated_at}}{auth_setting}
    event:
      type: com.acme.crm.CustomerChanged
      key: item.id
      map:
        customerId: item.id
        change: '"UPDATED"'
        email: item.email
        name: item.name
        changedAt: item.updated_at
    topic: {topic}
""",
    )


@contextlib.asynccontextmanager
async def bus_run(path: Path, bootstrap_servers: str, telemetry: Telemetry) -> AsyncIterator[None]:
    """`run_flows` of `path` with `telemetry` while inside; leaving stops it and waits."""
    flows = load_flow_files([path])
    assert validate_flows(flows, CATALOG) == []
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_flows(
            flows, CATALOG, bootstrap_servers=bootstrap_servers, stop=stop, telemetry=telemetry
        )
    )
    try:
        yield
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 60) == []


async def test_a_poll_item_in_a_flow_file_runs_with_bus_run_and_its_credentials(
    bootstrap_servers: str, tmp_path: Path, name: str
) -> None:
    api = Api(items=[ticket(1), ticket(2)])
    topic = f"{name}.tickets"
    async with serving(api) as base:
        flow = poll_flow(
            tmp_path, name, f"{base}/since", topic, auth="{bearer: {token: poll-token-1f2e}}"
        )
        async with running_flows(flow, bootstrap_servers):
            events = await decode(await read_records(bootstrap_servers, topic, 2))
    assert sorted(event.data["customerId"] for event in events) == ["t-1", "t-2"]
    assert {event.key for event in events} == {"t-1", "t-2"}
    assert all(r.headers.get("Authorization") == "Bearer poll-token-1f2e" for r in api.requests)


async def test_each_polled_event_is_an_inbound_hop_with_its_offset_and_is_counted(
    bootstrap_servers: str, tmp_path: Path, name: str
) -> None:
    no_email = {"id": "t-2", "name": "No Email", "updated_at": "2026-01-01T00:00:02Z"}
    api = Api(items=[ticket(1), no_email, ticket(3)])
    topic, dlq = f"{name}.tickets", f"{name}.dlq"
    board = StatusBoard()
    metrics = RecordedMetrics(board)
    telemetry = Telemetry(Tracing.exporting(InMemorySpanExporter()), None, metrics, board)
    async with serving(api) as base:
        flow = poll_flow(tmp_path, name, f"{base}/since", topic)
        async with bus_run(flow, bootstrap_servers, telemetry):
            records = await read_records(bootstrap_servers, topic, 2)
            [letter] = await read_records(bootstrap_servers, dlq, 1)
    await telemetry.close()
    hops = [hop for hop in metrics.hops if hop.flow == name]
    assert len(hops) == 3, hops  # items polled again are skipped: no hop
    assert {hop.kind for hop in hops} == {"inbound"}
    accepted = {hop.event_id: hop for hop in hops if hop.outcome == "accepted"}
    assert set(accepted) == {expected_id(name, ticket(1)), expected_id(name, ticket(3))}
    for record, event in zip(records, await decode(records), strict=True):
        hop = accepted[event.id]
        assert (hop.topic, hop.partition, hop.offset) == (topic, record.partition, record.offset)
        # The record carries its hop's span: the journey's trace starts at the poll.
        traceparent = headers_of(record)["traceparent"]
        assert traceparent.startswith(f"00-{hop.trace_id}-{hop.span_id}-")
    [dead] = [hop for hop in hops if hop.outcome == "dead-lettered"]
    assert dead.event_id == expected_id(name, no_email)
    assert dead.step == "event.map.email"
    assert dead.error is not None
    assert "email" in dead.error
    assert dead.outputs == [Output(dead.event_id, dlq, letter.partition, letter.offset)]

    item = (("flow", name), ("kind", "inbound"))
    assert samples(metrics, "bus_events_in_total")[item] == 3
    assert samples(metrics, "bus_events_out_total")[item] == 2
    assert (
        samples(metrics, "bus_events_dead_lettered_total")[(*item, ("step", "event.map.email"))]
        == 1
    )
    status = board.get(name)
    assert status is not None
    assert (status.kind, status.state) == ("poller", ItemState.STOPPED)
    assert status.counters.as_dict() == {
        "in": 3, "out": 2, "failed": 1, "dead_lettered": 1, "retried": 0
    }  # fmt: skip
    assert status.dead_letter_topic == dlq


async def test_a_failing_source_shows_its_poller_restarting_with_the_error_until_it_recovers(
    bootstrap_servers: str, tmp_path: Path, name: str
) -> None:
    api = Api(items=[ticket(1)], faults=["500"] * 1000)  # until the test clears them
    topic = f"{name}.tickets"
    board = StatusBoard()
    metrics = RecordedMetrics(board)
    telemetry = Telemetry(Tracing.disabled(), None, metrics, board)
    async with serving(api) as base:
        flow = poll_flow(tmp_path, name, f"{base}/since", topic)
        async with bus_run(flow, bootstrap_servers, telemetry):
            await until(lambda: board.get(name) is not None, what="the poller on the board")
            status = board.get(name)
            assert status is not None
            await until(lambda: status.state is ItemState.RESTARTING, what="restarting")
            assert status.kind == "poller"
            assert status.last_error is not None
            assert f"GET {base}/since answered HTTP 500 Internal Server Error" in status.last_error
            assert status.restarts >= 1
            api.faults.clear()
            await until(lambda: status.state is ItemState.RUNNING, what="running again")
            [record] = await read_records(bootstrap_servers, topic, 1)
        assert status.state is ItemState.STOPPED
    [hop] = [hop for hop in metrics.hops if hop.flow == name]
    assert (hop.outcome, hop.offset) == ("accepted", record.offset)
