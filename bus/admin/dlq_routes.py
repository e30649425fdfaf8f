"""The admin API's dead-letter routes: list, inspect and replay, as `bus dlq` does, through
bus.flows.dlq (reading and marking) and the process's `replay` (which sends them back)."""

import asyncio
import base64
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from aiohttp import web
from aiokafka.errors import KafkaError

from bus.admin.problems import unavailable, unknown
from bus.errors import BusError
from bus.flows.dead_letters import DeadLetter
from bus.flows.dlq import StoredLetter, mark_replayed, read_letters
from bus.http.problem import Problem

T = TypeVar("T")
Replay = Callable[[Sequence[StoredLetter]], Awaitable[list[str]]]
"""Sends letters back to the topics they came from; says where each went."""
KAFKA_WITHIN = 60.0  # seconds to read a dead-letter topic (whole) or mark letters replayed
REPLAY_WITHIN = 300.0  # seconds to send letters back: a replay-all may send thousands
DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000


class DlqRoutes:
    def __init__(
        self, bootstrap_servers: str, dead_letter_topics: Mapping[str, str], replay: Replay
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.dead_letter_topics = dict(dead_letter_topics)
        self.replay = replay
        # Two replay-alls of one topic at once would both send what neither has marked yet.
        self._replaying = {topic: asyncio.Lock() for topic in self.dead_letter_topics.values()}

    def routes(self) -> Sequence[web.RouteDef]:
        letter = "/dlq/{flow}/{partition:\\d+}/{offset:\\d+}"
        return [
            web.get("/dlq", self.queues),
            web.get("/dlq/{flow}", self.letters),
            web.get(letter, self.letter),
            web.post(letter + "/replay", self.replay_one),
            web.post("/dlq/{flow}/replay", self.replay_all),
        ]

    async def queues(self, request: web.Request) -> web.Response:
        async def count(flow: str, topic: str) -> dict[str, Any]:
            entry: dict[str, Any] = {"flow": flow, "topic": topic}
            try:
                held = await self._read(topic)
                waiting = await self._read(topic, unreplayed=True)
            except Problem as missing:
                if missing.status != 404:
                    raise
                return {**entry, "letters": None, "unreplayed": None, "error": missing.detail}
            return {**entry, "letters": len(held), "unreplayed": len(waiting)}

        # Every count runs to its end (none is left reading in the background), then the
        # first failure, if any, is the answer.
        counted = await asyncio.gather(
            *(count(flow, topic) for flow, topic in self.dead_letter_topics.items()),
            return_exceptions=True,
        )
        for result in counted:
            if isinstance(result, BaseException):
                raise result
        return web.json_response({"queues": counted})

    async def letters(self, request: web.Request) -> web.Response:
        flow, topic = self._topic(request)
        limit = _limit(request)
        letters = await self._read(topic)
        return web.json_response(
            {
                "flow": flow,
                "topic": topic,
                "total": len(letters),
                "letters": [_summary(letter) for letter in letters[:limit]],
            }
        )

    async def letter(self, request: web.Request) -> web.Response:
        return web.json_response(_detail(await self._one(request)))

    async def replay_one(self, request: web.Request) -> web.Response:
        letter = await self._one(request)
        return web.json_response({"replayed": await self._replay([letter])})

    async def replay_all(self, request: web.Request) -> web.Response:
        _, topic = self._topic(request)
        async with self._replaying[topic]:
            # Only what no earlier replay-all (here or `bus dlq replay --all`) sent back.
            letters = await self._read(topic, unreplayed=True)
            sent = await self._replay(letters)
            await self._kafka(mark_replayed(self.bootstrap_servers, letters))
        return web.json_response({"replayed": sent})

    def _topic(self, request: web.Request) -> tuple[str, str]:
        flow = request.match_info["flow"]
        topic = self.dead_letter_topics.get(flow)
        if topic is None:
            known = ", ".join(sorted(self.dead_letter_topics)) or "none"
            raise unknown(
                "flow",
                f"no item named {flow!r} has a dead-letter topic here; the ones that do: {known}",
            )
        return flow, topic

    async def _one(self, request: web.Request) -> StoredLetter:
        flow, topic = self._topic(request)
        partition, offset = int(request.match_info["partition"]), int(request.match_info["offset"])
        for letter in await self._read(topic):
            if (letter.partition, letter.offset) == (partition, offset):
                return letter
        raise unknown(
            "letter",
            f"{topic}[{partition}]@{offset} holds no dead letter of {flow}; GET /dlq/{flow} "
            "lists them",
        )

    async def _read(self, topic: str, *, unreplayed: bool = False) -> list[StoredLetter]:
        try:
            return await self._kafka(
                read_letters(self.bootstrap_servers, topic, unreplayed=unreplayed)
            )
        except BusError as error:
            # read_letters' one refusal that is not Kafka failing: the topic does not exist.
            raise unknown("dead-letter-topic", str(error)) from None

    async def _replay(self, letters: Sequence[StoredLetter]) -> list[str]:
        try:
            return await self._kafka(
                self.replay(letters),
                within=REPLAY_WITHIN,
                late="the replay did not end within {within}; the letters sent before it "
                "stopped are back on their topics, and the next replay-all sends every "
                "letter of this one again",
            )
        except BusError as error:
            # Not a Kafka failure (that is a Problem by now): a letter that cannot go back.
            raise Problem(409, "not-replayable", "Cannot replay", str(error)) from None

    async def _kafka(
        self,
        work: Awaitable[T],
        within: float = KAFKA_WITHIN,
        late: str = "Kafka did not answer within {within}",
    ) -> T:
        """`work`'s result; Kafka failing, or `work` not done `within` seconds, as a 503
        (other BusErrors pass)."""
        try:
            async with asyncio.timeout(within):
                return await work
        except TimeoutError:
            raise unavailable(late.format(within=f"{within:.0f} s")) from None
        except BusError as error:
            # bus.flows.dlq wraps what Kafka raised; its own refusals have no such cause.
            if isinstance(error.__cause__, KafkaError):
                raise unavailable(str(error)) from None
            raise


def _limit(request: web.Request) -> int:
    given = request.query.get("limit", str(DEFAULT_LIMIT))
    if not given.isdigit() or not 1 <= int(given) <= MAX_LIMIT:
        raise Problem(
            400,
            "bad-limit",
            "Invalid limit",
            f"limit must be a whole number from 1 to {MAX_LIMIT}, not {given[:20]!r}",
        )
    return int(given)


def _summary(letter: StoredLetter) -> dict[str, Any]:
    return {
        "partition": letter.partition,
        "offset": letter.offset,
        "reason": None if letter.reason is None else _reason(letter.reason),
    }


def _reason(reason: DeadLetter) -> dict[str, Any]:
    return {
        "error_type": reason.error_type,
        "error": reason.error,
        "flow": reason.flow,
        "step": reason.step,
        "topic": reason.topic,
        "partition": reason.partition,
        "offset": reason.offset,
        "attempts": reason.attempts,
        "time": reason.time.isoformat(),
    }


def _detail(letter: StoredLetter) -> dict[str, Any]:
    return {
        "topic": letter.topic,
        **_summary(letter),
        "headers": [
            {"name": name, "value": text.decode(errors="replace")} for name, text in letter.headers
        ],
        "key": None if letter.key is None else base64.b64encode(letter.key).decode(),
        "value": base64.b64encode(letter.value).decode(),
    }
