"""The supervisor that keeps each flow and delivery running (bus.flows.runtime._keep_running)."""

import asyncio

import pytest

from bus.flows import runtime
from bus.telemetry.status import ItemState, ItemStatus


@pytest.fixture(autouse=True)
def quick_restarts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "RESTART_BACKOFF", (0.01, 0.01))


async def test_a_future_cancelled_under_a_run_is_a_failure_and_the_item_runs_again() -> None:
    # What a broker outage did: aiokafka cancelled a pending send's future, the CancelledError
    # reached the supervisor, and the mediation item ended as "stopped" with work left.
    stop = asyncio.Event()
    runs = 0

    async def run_once() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            cancelled = asyncio.get_running_loop().create_future()
            cancelled.cancel()
            await cancelled
        stop.set()  # the second run is told to stop, and returns

    status = ItemStatus("orders", "mediation")
    await asyncio.wait_for(runtime._keep_running("flow orders", run_once, stop, status), 5)
    assert runs == 2
    assert status.restarts == 1
    assert status.last_error is not None
    assert status.last_error.startswith("CancelledError")
    assert status.state is ItemState.STOPPED


async def test_cancelling_the_supervisor_still_cancels_it() -> None:
    started = asyncio.Event()
    runs = 0

    async def run_once() -> None:
        nonlocal runs
        runs += 1
        started.set()
        await asyncio.Event().wait()

    status = ItemStatus("orders", "mediation")
    task = asyncio.create_task(
        runtime._keep_running("flow orders", run_once, asyncio.Event(), status)
    )
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert runs == 1
    assert status.restarts == 0
    assert status.state is ItemState.STOPPED
