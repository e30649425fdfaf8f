"""Looking at the running demo every few seconds: the bus's items, the systems' ledgers, and
the accounts so far (dead letters from the items' own counters: cheap, and exact for one
`bus run`)."""

import asyncio
import time

from bus.admin.top_view import Sample
from demo.accounting import DeadLettersAdded, account
from demo.load import LoadDriver
from demo.observe import Ledgers, Observer
from demo.view import Frame


class Watch:
    """Looks at the bus and the systems, keeping the previous answer for rates."""

    def __init__(self, observer: Observer, driver: LoadDriver, run_id: str) -> None:
        self.observer = observer
        self.driver = driver
        self.run_id = run_id
        self.began = time.monotonic()
        self.previous: Sample | None = None
        self.current: Sample | None = None
        self.ledgers: Ledgers | None = None
        self._sent_before = (self.began, 0)  # for the rate between two looks
        self._rate = 0.0

    async def look(self, status: str) -> Frame:
        problems = []
        flows, ledgers = await asyncio.gather(
            self.observer.flows(), self.observer.ledgers(), return_exceptions=True
        )
        if isinstance(flows, BaseException):
            problems.append(f"admin API: {flows!r}")
        else:
            self.previous, self.current = self.current, Sample(time.monotonic(), flows)
        if isinstance(ledgers, BaseException):
            problems.append(f"demo systems: {ledgers!r}")
        else:
            self.ledgers = ledgers
        progress = None
        if self.ledgers is not None and self.current is not None:
            counted = DeadLettersAdded(dead_lettered(self.current))
            progress = account(self.run_id, self.ledgers, self.driver.inputs, counted)
        now, sent = time.monotonic(), self.driver.sent
        then, sent_then = self._sent_before
        if now - then >= 1.0:  # a rate over less than a second says little
            self._rate = (sent - sent_then) / (now - then)
            self._sent_before = (now, sent)
        return Frame(
            elapsed=now - self.began,
            status=status,
            sent=sent,
            rate=self._rate,
            current=self.current,
            previous=self.previous,
            ledgers=self.ledgers,
            progress=progress,
            sample_event=self.driver.sample_event_id(),
            problems=problems,
        )


def dead_lettered(flows: Sample | None) -> dict[str, int]:
    """Letters each item wrote since `bus run` started, from its counters."""
    if flows is None:
        return {}
    return {
        name: item["counters"]["dead_lettered"]
        for name, item in flows.items().items()
        if item.get("dead_letter_topic")
    }


def busy_items(flows: Sample | None) -> list[str] | None:
    """Items with records left (lag) or in hand; None when the bus could not be read."""
    if flows is None:
        return None
    return [
        name
        for name, item in flows.items().items()
        if (item["lag"] or 0) > 0 or (item["in_flight"] or 0) > 0
    ]
