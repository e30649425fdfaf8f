"""`bus top`: a live terminal view of every item of a `bus run` process, read from the admin
API's GET /flows every few seconds: state, rates in and out, failures, lag, in-flight records
and circuit breakers."""

import asyncio
import contextlib
import time
from typing import Any

import aiohttp
import click
from rich.console import Console
from rich.live import Live
from yarl import URL

from bus.admin.top_view import Sample, flows_table

DEFAULT_ADMIN = "http://127.0.0.1:9180"
_HEADER_HINT = "'--header' / BUS_ADMIN_HEADER"


@click.command()
@click.option(
    "--admin",
    "admin_url",
    envvar="BUS_ADMIN_URL",
    default=DEFAULT_ADMIN,
    show_default=True,
    show_envvar=True,
    help="The admin API of the `bus run` process to watch.",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=2.0,
    show_default=True,
    help="Seconds between two polls.",
)
@click.option(
    "--header",
    envvar="BUS_ADMIN_HEADER",
    show_envvar=True,
    metavar="'NAME: VALUE'",
    help="A header the admin API's auth wants, e.g. 'X-Admin-Key: ...'; never printed.",
)
@click.option(
    "--once", is_flag=True, help="Print one table (two polls, --interval apart) and exit."
)
def top(admin_url: str, interval: float, header: str | None, once: bool) -> None:
    """Watch every item of a `bus run` process: rates, errors, lag, breakers (Ctrl-C ends)."""
    headers = _parse_header(header)
    admin = _parse_url(admin_url)
    # Shown without user and password, where the URL carries them.
    source = str(admin.with_user(None))
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a live view is meant to end
        asyncio.run(_watch(admin / "flows", headers, interval, once=once, source=source))


async def _watch(
    url: URL, headers: dict[str, str], interval: float, *, once: bool, source: str
) -> None:
    console = Console()
    timeout = aiohttp.ClientTimeout(total=max(5.0, interval))
    async with aiohttp.ClientSession(timeout=timeout) as session:
        previous = await _poll(session, url, headers, source)
        if once:
            await asyncio.sleep(interval)  # rates need a second poll
            current = await _poll(session, url, headers, source)
            console.print(flows_table(current, previous, source=source))
            return
        table = flows_table(previous, None, source=source)
        with Live(table, console=console, auto_refresh=False) as live:
            while True:
                await asyncio.sleep(interval)
                try:
                    current = await _poll(session, url, headers, source)
                except click.ClickException as lost:
                    # The process may be restarting: keep the last view, say why it is old.
                    table.caption = f"{time.strftime('%H:%M:%S')} {lost.message}"
                    live.update(table, refresh=True)
                    continue
                table = flows_table(current, previous, source=source)
                live.update(table, refresh=True)
                previous = current


async def _poll(
    session: aiohttp.ClientSession, url: URL, headers: dict[str, str], source: str
) -> Sample:
    try:
        async with session.get(url, headers=headers) as response:
            if response.status != 200:
                refusal = _refusal(source, response.status, await _detail(response))
                raise click.ClickException(refusal)
            flows: Any = await response.json()
    except aiohttp.ContentTypeError:
        raise click.ClickException(f"{source} answered, but is no bus admin API") from None
    except aiohttp.ClientError as error:
        raise click.ClickException(f"cannot reach the admin API at {source}: {error}") from None
    except TimeoutError:
        raise click.ClickException(f"the admin API at {source} did not answer in time") from None
    if not isinstance(flows, dict) or not {"now", "items"} <= flows.keys():
        raise click.ClickException(f"{source} answered, but is no bus admin API")
    return Sample(time.monotonic(), flows)


def _refusal(source: str, status: int, detail: str) -> str:
    if status in (401, 403):
        return (
            f"the admin API at {source} refused the request ({status}: {detail}); give its "
            "credential with --header 'Name: value' or BUS_ADMIN_HEADER"
        )
    return f"the admin API at {source} answered {status}: {detail}"


async def _detail(response: aiohttp.ClientResponse) -> str:
    """A problem's detail, else the start of the body."""
    text = await response.text(errors="replace")
    try:
        detail = (await response.json(content_type=None))["detail"]
    except (ValueError, KeyError, TypeError):
        return text[:200].strip() or response.reason or "no detail"
    return str(detail)


def _parse_url(admin_url: str) -> URL:
    admin = URL(admin_url)
    if admin.scheme not in ("http", "https") or not admin.host:
        raise click.BadParameter(
            f"expected an http:// or https:// URL, e.g. {DEFAULT_ADMIN}",
            param_hint="'--admin' / BUS_ADMIN_URL",
        )
    return admin


def _parse_header(header: str | None) -> dict[str, str]:
    if header is None:
        return {}
    name, colon, value = header.partition(":")
    name, value = name.strip(), value.strip()
    malformed = not colon or not name or not value or any(c.isspace() for c in name)
    if malformed or "\r" in value or "\n" in value:
        # The value is a credential: the message shows the expected form, never what was given.
        raise click.BadParameter(
            "expected one header as 'Name: value', e.g. 'X-Admin-Key: ...'",
            param_hint=_HEADER_HINT,
        )
    return {name: value}
