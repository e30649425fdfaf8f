"""`bus run`'s event loop choice (BUS_EVENT_LOOP)."""

import asyncio
import sys

import pytest

from bus import event_loop
from bus.errors import ConfigError


async def loop_class() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_auto_picks_uvloop_when_installed() -> None:
    assert event_loop.run(loop_class(), "auto").startswith("uvloop")


def test_asyncio_is_asyncio_s_own() -> None:
    assert event_loop.run(loop_class(), "asyncio").startswith("asyncio")


def test_uvloop_asked_for_but_missing_says_how_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if not installed
    with pytest.raises(ConfigError, match="BUS_EVENT_LOOP=uvloop but uvloop is not installed"):
        event_loop.loop_factory("uvloop")
    assert event_loop.loop_factory("auto") is None
