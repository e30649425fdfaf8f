"""One topic read at a time per admin API. Dead letters and journeys are read from Kafka into
the `bus run` process, next to its flows' work; a second SRE, or a script calling in a loop,
must not make it read several topics at once. A second caller waits a little for its turn,
then is told to come back (503 with Retry-After).
"""

import asyncio
from types import TracebackType

from bus.admin.problems import busy

READ_WAIT_S = 10.0  # how long a caller waits for the read under way to end


class OneReadAtATime:
    """`async with reads:` runs the body alone; a 503 problem if the turn did not come within
    `wait` seconds. (A class, not contextlib's generator: that sets `__traceback__` on what the
    body raises, which a Problem, frozen, refuses.)"""

    def __init__(self, wait: float = READ_WAIT_S) -> None:
        self.wait = wait
        self._semaphore = asyncio.Semaphore(1)

    async def __aenter__(self) -> None:
        try:
            async with asyncio.timeout(self.wait):
                await self._semaphore.acquire()
        except TimeoutError:
            raise busy(
                "another dead-letter or journey read of this admin API is under way and did "
                f"not end within {self.wait:g} s"
            ) from None

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._semaphore.release()
