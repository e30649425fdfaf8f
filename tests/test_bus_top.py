"""`bus top` against a real admin API server: the table with its rates, the credential that is
sent but never shown, and the one-line errors when the admin API cannot be used.

The command runs in a worker thread (click's CliRunner is synchronous, and `top` runs its own
event loop), while the server answers on the test's loop.
"""

import asyncio
import re
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner, Result

from bus.admin.server import AdminServer
from bus.admin.top import top
from bus.flows.dlq import StoredLetter
from bus.flows.model import AdminSettings
from bus.resilience.circuit_breaker import CircuitBreaker
from bus.telemetry.status import ItemState, StatusBoard
from tests.conftest import free_port

KEY = "top-admin-key-2b7e41"
INTERVAL = 0.5
IN_PER_POLL, OUT_PER_POLL, FAILED_PER_POLL = 50, 40, 5


class BusyBoard(StatusBoard):
    """Every read of the board finds the router further on: known deltas between two polls."""

    def snapshot(self) -> list[dict[str, Any]]:
        taken = super().snapshot()
        router = self.get("router")
        assert router is not None
        router.counters.in_ += IN_PER_POLL
        router.counters.out += OUT_PER_POLL
        router.counters.failed += FAILED_PER_POLL
        return taken


class NoMetrics:
    def exposition(self) -> tuple[bytes, str]:
        return b"", "text/plain"


async def no_journeys(event_id: str, since: datetime | None) -> dict[str, Any] | None:
    return None


async def no_replay(letters: Sequence[StoredLetter]) -> list[str]:
    return []


@pytest.fixture
async def admin_url() -> AsyncIterator[str]:
    board = BusyBoard()
    router = board.item("router", "mediation")
    router.enter(ItemState.RUNNING)
    router.in_flight = lambda: 4
    router.counters.dead_lettered = 2
    erp = board.item("erp-eu", "outbound")
    erp.breaker = CircuitBreaker(failures=1, reset_after=600)
    erp.breaker.record_failure()
    erp.enter(ItemState.RESTARTING, TimeoutError("erp did not answer"))
    settings = AdminSettings(
        host="127.0.0.1", port=0, auth={"api_key": {"header": "X-Admin-Key", "keys": [KEY]}}
    )
    async with aiohttp.ClientSession() as session:
        server = AdminServer(
            settings,
            board=board,
            metrics=NoMetrics(),
            bootstrap_servers="127.0.0.1:9",  # not asked by /flows
            journeys=no_journeys,
            dead_letter_topics={},
            replay=no_replay,
            session=session,
        )
        await server.start()
        try:
            yield server.url
        finally:
            await server.stop()


async def run_top(*args: str, env: dict[str, str] | None = None) -> Result:
    runner = CliRunner()
    wide = {"COLUMNS": "200", **(env or {})}  # one table row per line
    async with asyncio.timeout(60):
        return await asyncio.to_thread(runner.invoke, top, list(args), env=wide)


def row(output: str, item: str) -> list[str]:
    """The cells of `item`'s row in the table."""
    [line] = [line for line in output.splitlines() if re.search(rf"│ {re.escape(item)}\s", line)]
    return [cell.strip() for cell in line.strip("│ ").split("│")]


async def test_once_shows_every_item_with_rates_from_two_polls(admin_url: str) -> None:
    result = await run_top(
        "--once",
        "--admin",
        admin_url,
        "--interval",
        str(INTERVAL),
        "--header",
        f"X-Admin-Key: {KEY}",
    )

    assert result.exit_code == 0, result.output
    assert KEY not in result.output
    assert f"bus top: {admin_url}" in result.output
    item, kind, state, in_rate, out_rate, failed, failed_rate, dead, lag, in_flight, breaker = row(
        result.output, "router"
    )
    assert (item, kind, breaker, dead, in_flight) == ("router", "mediation", "-", "2", "4")
    assert re.fullmatch(r"running \d+s", state)
    assert lag == "-"  # no consumer: no lag to tell
    # The polls are at least INTERVAL apart (and well under 2 s on any machine running this).
    for shown, per_poll in (
        (in_rate, IN_PER_POLL),
        (out_rate, OUT_PER_POLL),
        (failed_rate, FAILED_PER_POLL),
    ):
        assert per_poll / 2 <= float(shown) <= per_poll / INTERVAL
    assert failed == str(FAILED_PER_POLL)  # the total as the second poll found it
    erp = row(result.output, "erp-eu")
    assert erp[1] == "outbound"
    assert erp[2].startswith("restarting")
    assert erp[-1] == "open"
    assert erp[3] == "0.0"  # no traffic between the polls


async def test_the_admin_url_and_header_come_from_the_environment(admin_url: str) -> None:
    result = await run_top(
        "--once",
        "--interval",
        str(INTERVAL),
        env={"BUS_ADMIN_URL": admin_url, "BUS_ADMIN_HEADER": f"X-Admin-Key: {KEY}"},
    )
    assert result.exit_code == 0, result.output
    assert row(result.output, "router")[0] == "router"
    assert KEY not in result.output


async def test_a_refused_credential_is_one_line_without_the_credential(admin_url: str) -> None:
    wrong = KEY[::-1]
    for header in ([], ["--header", f"X-Admin-Key: {wrong}"]):
        result = await run_top("--once", "--admin", admin_url, *header)
        assert result.exit_code == 1
        [line] = result.output.strip().splitlines()
        assert "refused the request (401" in line
        assert "--header" in line
        assert wrong not in line


async def test_an_unreachable_admin_api_is_one_line_and_exit_1() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = await run_top("--once", "--admin", url, "--header", f"X-Admin-Key: {KEY}")
    assert result.exit_code == 1
    [line] = result.output.strip().splitlines()
    assert line.startswith(f"Error: cannot reach the admin API at {url}")
    assert KEY not in line


async def test_a_malformed_header_is_a_usage_error_that_does_not_echo_it() -> None:
    result = await run_top("--once", "--header", f"X-Admin-Key={KEY}")
    assert result.exit_code == 2
    assert "expected one header as 'Name: value'" in result.output
    assert KEY not in result.output


async def test_an_admin_address_that_is_no_http_url_is_a_usage_error() -> None:
    result = await run_top("--once", "--admin", "127.0.0.1:9180")
    assert result.exit_code == 2
    assert "expected an http:// or https:// URL" in result.output
