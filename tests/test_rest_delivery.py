"""One outbound REST call, against a real aiohttp server: how the request is built and how each
answer is classified. (Delivering whole topics is tests/test_rest_outbound.py's.)"""

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from adapters.rest.config import RestOutbound
from adapters.rest.outbound import RestDelivery
from bus.auth.oauth2 import OAuth2ClientCredentials
from bus.errors import PermanentDeliveryError, TransientDeliveryError
from bus.events.catalog import SchemaCatalog
from bus.events.codec import DecodedEvent
from bus.events.event import Event

ROOT = Path(__file__).resolve().parents[1]
CATALOG = SchemaCatalog.load(ROOT / "schemas")


class Server:
    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.url = ""

    async def record(self, request: web.Request) -> web.Response:
        self.seen.append(
            {
                "method": request.method,
                "path": request.raw_path,
                "headers": dict(request.headers),
                "body": await request.read(),
            }
        )
        status = int(request.query.get("answer", "200"))
        if status == 302:
            raise web.HTTPFound(self.url + "/elsewhere")
        if status == 299:  # a body that arrives in several packets
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            await response.prepare(request)
            for part in (b'{"account": "', b"acct-" + b"9" * 70000, b'", "ok": true}'):
                await response.write(part)
            await response.write_eof()
            return response
        return web.json_response({"status": status}, status=status)

    async def token(self, _: web.Request) -> web.Response:
        return web.json_response({"error": "invalid_client"}, status=401)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    server = Server()
    app = web.Application()
    app.router.add_post("/oauth/token", server.token)
    app.router.add_route("*", "/{tail:.*}", server.record)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield server
    await runner.cleanup()


def order(customer: str | None = "c 1/2") -> DecodedEvent:
    data = {
        "customerId": customer,
        "total": Decimal("12.50"),
        "at": datetime(2026, 11, 24, 12, 0, tzinfo=UTC),
    }
    event = Event(type="com.acme.crm.CustomerChanged", data=data, key="c-1")
    return DecodedEvent(event=event, writer=CATALOG.current("com.acme.crm.CustomerChanged"))


async def call(server: Server, rest: dict[str, Any], event: DecodedEvent, **options: Any) -> Any:
    settings = RestOutbound.model_validate(
        {"url": server.url + "/customers/{ event.customerId }"} | rest
    )
    async with aiohttp.ClientSession() as session:
        auth = options.pop("auth", None)
        if callable(auth):
            auth = auth(session)
        delivery = RestDelivery(
            "out",
            settings,
            field_map=options.pop("field_map", {}),
            session=session,
            auth=auth,
            call_timeout=5.0,
        )
        return await delivery.call(event)


async def test_the_request_is_built_from_the_event(server: Server) -> None:
    response = await call(server, {"method": "PUT"}, order())
    assert response.status == 200
    (seen,) = server.seen
    assert seen["method"] == "PUT"
    assert seen["path"] == "/customers/c%201%2F2"  # spaces in the template; value URL-encoded
    assert seen["headers"]["Idempotency-Key"]
    body = seen["body"].decode()
    assert '"total":"12.50"' in body  # a decimal stays exact
    assert '"at":"2026-11-24T12:00:00+00:00"' in body


async def test_a_null_url_part_is_permanent_and_nothing_is_sent(server: Server) -> None:
    with pytest.raises(PermanentDeliveryError, match="empty or null"):
        await call(server, {}, order(customer=None))
    assert server.seen == []


async def test_a_url_that_does_not_parse_is_permanent_and_not_echoed(server: Server) -> None:
    # A password substituted raw from ${VAR} with a '/' in it: aiohttp cannot call the URL. That
    # is the configuration's fault, not a passing outage, and the message must not show it.
    host = server.url.removeprefix("http://")
    settings = RestOutbound.model_validate({"url": f"http://bus:pa/ss-w0rd@{host}/customers"})
    async with aiohttp.ClientSession() as session:
        delivery = RestDelivery(
            "out", settings, field_map={}, session=session, auth=None, call_timeout=5.0
        )
        with pytest.raises(PermanentDeliveryError, match="URL is not valid") as caught:
            await delivery.call(order())
    assert "pa/ss-w0rd" not in str(caught.value)
    assert caught.value.__cause__ is None  # aiohttp's InvalidURL is the URL: not in a traceback
    assert caught.value.__suppress_context__
    assert server.seen == []


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        (500, TransientDeliveryError),
        (503, TransientDeliveryError),
        (429, TransientDeliveryError),
        (408, TransientDeliveryError),
        (501, PermanentDeliveryError),
        (400, PermanentDeliveryError),
        (404, PermanentDeliveryError),
        (409, PermanentDeliveryError),
        (302, PermanentDeliveryError),  # not followed: credentials would go along
    ],
)
async def test_answers_are_classified(server: Server, answer: int, kind: type[Exception]) -> None:
    with pytest.raises(kind) as caught:
        await call(server, {"query": {"answer": f'"{answer}"'}}, order())
    assert getattr(caught.value, "status", None) == answer
    assert len(server.seen) == 1


async def test_a_body_in_several_packets_is_read_whole(server: Server) -> None:
    response = await call(server, {"query": {"answer": '"299"'}}, order())
    assert response.body["ok"] is True
    assert len(response.body["account"]) == 70005


async def test_a_refusing_token_endpoint_is_transient_not_the_events_fault(server: Server) -> None:
    def oauth(session: aiohttp.ClientSession) -> OAuth2ClientCredentials:
        return OAuth2ClientCredentials(
            token_url=server.url + "/oauth/token",
            client_id="bus",
            client_secret="rotated-away",
            session=session,
        )

    with pytest.raises(TransientDeliveryError, match="cannot get credentials"):
        await call(server, {}, order(), auth=oauth)
    assert server.seen == []
