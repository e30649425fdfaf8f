"""The admin API's dead-letter routes: count, list, inspect and replay, as `bus dlq` does,
through bus.flows.dlq (reading, counting and marking) and the process's `replay` (which sends
them back). Every route reads Kafka in its turn (bus.admin.reads)."""

import asyncio
import base64
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import aclosing
from typing import Any, TypeVar

from aiohttp import web

from bus.admin.problems import unavailable, unknown
from bus.admin.reads import OneReadAtATime
from bus.errors import (
    DeadLetterNotFoundError,
    DeadLetterTopicMissingError,
    KafkaUnavailableError,
    NotReplayableError,
)
from bus.flows.dead_letters import DeadLetter
from bus.flows.dlq import (
    StoredLetter,
    count_letters,
    mark_replayed,
    read_letter,
    read_letters,
    stream_letters,
)
from bus.http.problem import Problem

T = TypeVar("T")
Replay = Callable[[Sequence[StoredLetter]], Awaitable[list[str]]]
"""Sends letters back to the topics they came from; says where each went."""
KAFKA_WITHIN = 60.0  # seconds to count, read or mark letters (a replay-all reads them all)
REPLAY_WITHIN = 300.0  # seconds to send letters back: a replay-all may send thousands
DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000


class DlqRoutes:
    def __init__(
        self,
        bootstrap_servers: str,
        dead_letter_topics: Mapping[str, str],
        replay: Replay,
        reads: OneReadAtATime,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.dead_letter_topics = dict(dead_letter_topics)
        self.replay = replay
        self.reads = reads

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
                counted = await self._kafka(count_letters(self.bootstrap_servers, topic))
            except DeadLetterTopicMissingError as missing:
                return {**entry, "letters": None, "unreplayed": None, "error": str(missing)}
            return {
                **entry,
                "letters": counted.letters,
                "unreplayed": counted.unreplayed,
                "approximate": True,  # counted from offsets: see count_letters
            }

        async with self.reads:
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

        async def summaries() -> list[dict[str, Any]]:
            # Each letter's value (up to a megabyte) is dropped as soon as it is summed up.
            read = stream_letters(self.bootstrap_servers, topic, limit=limit)
            async with aclosing(read) as letters:
                return [_summary(letter) async for letter in letters]

        async with self.reads:
            counted = await self._read(count_letters(self.bootstrap_servers, topic))
            listed = await self._read(summaries())
        return web.json_response(
            {
                "flow": flow,
                "topic": topic,
                "total": counted.letters,
                "approximate": True,  # the total, counted from offsets: see count_letters
                "letters": listed,
            }
        )

    async def letter(self, request: web.Request) -> web.Response:
        flow, topic = self._topic(request)
        async with self.reads:
            letter = await self._one(request, flow, topic)
        return web.json_response(_detail(letter))

    async def replay_one(self, request: web.Request) -> web.Response:
        flow, topic = self._topic(request)
        async with self.reads:
            sent = await self._replay([await self._one(request, flow, topic)])
        return web.json_response({"replayed": sent})

    async def replay_all(self, request: web.Request) -> web.Response:
        _, topic = self._topic(request)
        # Read, sent back and marked in one turn: two replay-alls of a topic at once would both
        # send what neither has marked yet.
        async with self.reads:
            # Only what no earlier replay-all (here or `bus dlq replay --all`) sent back.
            letters = await self._read(read_letters(self.bootstrap_servers, topic, unreplayed=True))
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

    async def _one(self, request: web.Request, flow: str, topic: str) -> StoredLetter:
        partition, offset = int(request.match_info["partition"]), int(request.match_info["offset"])
        try:
            return await self._read(read_letter(self.bootstrap_servers, topic, partition, offset))
        except DeadLetterNotFoundError as missing:
            raise unknown("letter", f"{missing} (GET /dlq/{flow})") from None

    async def _read(self, work: Awaitable[T]) -> T:
        try:
            return await self._kafka(work)
        except DeadLetterTopicMissingError as missing:
            raise unknown("dead-letter-topic", str(missing)) from None

    async def _replay(self, letters: Sequence[StoredLetter]) -> list[str]:
        try:
            return await self._kafka(
                self.replay(letters),
                within=REPLAY_WITHIN,
                late="the replay did not end within {within}; the letters sent before it "
                "stopped are back on their topics, and the next replay-all sends every "
                "letter of this one again",
            )
        except NotReplayableError as refused:
            raise Problem(409, "not-replayable", "Cannot replay", str(refused)) from None

    async def _kafka(
        self,
        work: Awaitable[T],
        within: float = KAFKA_WITHIN,
        late: str = "Kafka did not answer within {within}",
    ) -> T:
        """`work`'s result; Kafka failing, or `work` not done `within` seconds, as a 503."""
        try:
            async with asyncio.timeout(within):
                return await work
        except TimeoutError:
            raise unavailable(late.format(within=f"{within:.0f} s")) from None
        except KafkaUnavailableError as error:
            raise unavailable(str(error)) from None


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
