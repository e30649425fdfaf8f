"""Outbound REST on the real broker, through the documented webhook-to-REST example.

`examples/rest/webhook-to-rest.yaml` (the file docs/adapters/rest.md shows) runs with `bus run`
in a process of its own: a signed webhook comes in, the event is PUT to a real aiohttp server
playing the
billing system (OAuth2, faults on request, see tests/rest_sink.py), and its answers become reply
events. The delivery runner's own guarantees (order, breaker, rate limit) are proven in
tests/test_delivery_on_kafka.py; here, what the REST adapter adds.
"""

import asyncio
import hmac
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bus.flows.dead_letters import DeadLetter
from tests.conftest import free_port
from tests.flow_harness import bus_run_process, decode, read_all
from tests.rest_sink import CLIENT_SECRET, RestSink

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "rest" / "webhook-to-rest.yaml"
SECRET = "crm-webhook-secret-0c4d"


@pytest.fixture(scope="module")
async def sink() -> AsyncIterator[RestSink]:
    sink = RestSink()
    await sink.start()
    yield sink
    await sink.stop()


@pytest.fixture(scope="module")
async def webhook(
    sink: RestSink, bootstrap_servers: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    """The example, run as the docs say: `bus run examples/rest/webhook-to-rest.yaml`."""
    port = free_port()
    async with bus_run_process(
        EXAMPLE,
        tmp_path_factory.mktemp("bus-run") / "bus.log",
        secrets=(SECRET, CLIENT_SECRET),
        KAFKA_BOOTSTRAP_SERVERS=bootstrap_servers,
        BUS_HTTP_PORT=str(port),
        CRM_WEBHOOK_SECRET=SECRET,
        BILLING_URL=sink.url,
        BILLING_CLIENT_SECRET=CLIENT_SECRET,
    ):
        yield f"http://127.0.0.1:{port}/hooks/crm/customers"


async def send(url: str, customer: str, **extra: Any) -> str:
    """Post a signed CRM webhook for `customer`; return the event id."""
    body = json.dumps(
        {
            "action": "updated",
            "occurred_at": "2026-11-24T11:59:00Z",
            "customer": {
                "id": customer,
                "email": f"{customer}@example.com",
                "first_name": "Ada",
                "last_name": "Lovelace",
                **extra,
            },
        }
    ).encode()
    signature = "sha256=" + hmac.new(SECRET.encode(), body, "sha256").hexdigest()
    async with aiohttp.ClientSession() as session:
        async with asyncio.timeout(90):
            while True:  # the server may still be starting
                try:
                    async with session.post(
                        url,
                        data=body,
                        headers={
                            "Content-Type": "application/json",
                            "X-Hub-Signature-256": signature,
                        },
                    ) as answer:
                        assert answer.status == 202, await answer.text()
                        return str((await answer.json())["id"])
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.2)


async def delivered(sink: RestSink, customer: str, count: int = 1) -> list[Any]:
    async with asyncio.timeout(40):
        while len(sink.delivered(customer)) < count:  # noqa: ASYNC110 -- the server records them
            await asyncio.sleep(0.1)
    return sink.delivered(customer)


async def replies_for(bootstrap_servers: str, ids: set[str]) -> dict[str, Any]:
    """Reply events by their parent (request) id."""
    async with asyncio.timeout(40):
        while True:
            records = await read_all(bootstrap_servers, "billing.customer-synced.v1", 1.0)
            found = {e.extensions.get("parentid"): e for e in await decode(records)}
            if ids <= found.keys():
                return found
            await asyncio.sleep(0.2)


async def dead_letters(bootstrap_servers: str, customer: str) -> list[DeadLetter]:
    async with asyncio.timeout(40):
        while True:
            records = await read_all(bootstrap_servers, "billing-sync.dlq", 1.0)
            letters = [
                DeadLetter.from_headers(r.headers) for r in records if r.key == customer.encode()
            ]
            if letters:
                return [letter for letter in letters if letter is not None]
            await asyncio.sleep(0.2)


async def test_an_event_becomes_a_call_built_from_it_and_a_reply(
    webhook: str, sink: RestSink, bootstrap_servers: str
) -> None:
    event_id = await send(webhook, "c-100", phone="+44 20 7946 0000")
    (call,) = await delivered(sink, "c-100")
    assert call.method == "PUT"
    assert call.body == {"email": "c-100@example.com", "name": "Ada Lovelace"}
    assert call.headers["Idempotency-Key"] == event_id
    assert call.headers["X-Change"] == "UPDATED"
    assert call.headers["Content-Type"] == "application/json"
    assert call.headers["Authorization"].startswith("Bearer ")
    reply = (await replies_for(bootstrap_servers, {event_id}))[event_id]
    assert reply.type == "com.acme.erp.CustomerUpsertResult"
    assert reply.key == "c-100"
    assert reply.data["outcome"] == "CREATED"
    assert reply.data["erpAccountId"].startswith("acct-")


@pytest.mark.parametrize("customer", ["fail500-1", "r429-1", "slow-1", "reset-1"])
async def test_transient_failures_are_retried_until_delivered(
    webhook: str, sink: RestSink, bootstrap_servers: str, customer: str
) -> None:
    event_id = await send(webhook, customer)
    await delivered(sink, customer)
    assert sink.attempts[customer] >= 2
    await replies_for(bootstrap_servers, {event_id})


async def test_retry_after_is_honoured(webhook: str, sink: RestSink) -> None:
    await send(webhook, "r429-2")
    (call,) = await delivered(sink, "r429-2")
    assert sink.attempts["r429-2"] == 2
    # The 429 was the first attempt; the second came no sooner than Retry-After (1 s) allows,
    # although the backoff alone would have waited 200 ms.
    assert call.at - sink.first_attempt["r429-2"] >= 0.9


async def test_a_permanent_failure_goes_to_the_dlq_with_status_and_body(
    webhook: str, sink: RestSink, bootstrap_servers: str
) -> None:
    await send(webhook, "bad-1")
    (letter,) = await dead_letters(bootstrap_servers, "bad-1")
    assert letter.flow == "billing-sync"
    assert sink.attempts["bad-1"] == 1  # a 400 is not retried
    assert "HTTP 400" in letter.error
    assert "invalid email" in letter.error
    # the partition moved on: a later event of another key is delivered
    await send(webhook, "c-after-bad")
    await delivered(sink, "c-after-bad")


async def test_oauth_tokens_are_cached_refreshed_on_expiry_and_after_a_401(
    webhook: str, sink: RestSink
) -> None:
    before = sink.token_requests
    for index in range(3):
        await send(webhook, f"c-token-{index}")
    for index in range(3):
        await delivered(sink, f"c-token-{index}")
    assert sink.token_requests - before <= 1  # one token serves many calls
    await asyncio.sleep(sink.token_lifetime + 0.5)  # it expired: a new one is fetched
    await send(webhook, "c-token-late")
    await delivered(sink, "c-token-late")
    assert sink.token_requests > before
    await send(webhook, "revoked-1")  # 401 once: the token is dropped and fetched again
    await delivered(sink, "revoked-1")
    assert sink.attempts["revoked-1"] == 2


def test_the_docs_show_the_example_as_it_is() -> None:
    docs = (ROOT / "docs" / "adapters" / "rest.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", docs, re.DOTALL)
    assert EXAMPLE.read_text() in blocks
