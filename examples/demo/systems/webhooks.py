"""How the CRM sends a webhook: signed, with a delivery id, and retried while the bus is busy.

The signature is GitHub's scheme: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`
with a shared secret, so the bus can tell the CRM's calls from anyone else's. The delivery id
(`X-GitHub-Delivery`, a UUID) is made once per webhook and sent again with every retry: the bus
derives the event's id from it, so a retry of a call whose answer was lost stays one event.

A 503 (the bus could not store the event in time), a 429, a 502/504 from a proxy, a refused
connection and a timeout are retried with growing pauses (0.2 s, doubling, at most 2 s) for up to
30 s, as real SaaS CRMs do; anything else is the answer.
"""

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp

RETRY_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class Outcome:
    """What became of one webhook."""

    status: int | None
    """The bus's last answer; None when it never answered (refused connections, timeouts)."""
    event_id: str | None
    """The event's id from the bus's 202 answer."""
    problem: dict[str, Any] | None
    """The bus's problem+json when it refused, or what went wrong when it never answered."""
    attempts: int


def signature(secret: str, body: bytes) -> str:
    """The value of X-Hub-Signature-256 for `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookSender:
    """Sends the CRM's webhooks over one connection pool (the `session` it is given)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        secret: str,
        *,
        give_up_after: float = 30.0,
        first_pause: float = 0.2,
        longest_pause: float = 2.0,
        attempt_timeout: float = 15.0,
    ) -> None:
        self._session = session
        self._secret = secret
        self._give_up_after = give_up_after
        self._first_pause = first_pause
        self._longest_pause = longest_pause
        # The bus waits up to 10 s for Kafka before it answers 503: give it that and more.
        self._timeout = aiohttp.ClientTimeout(total=attempt_timeout)

    async def send(self, url: str, payload: dict[str, Any]) -> Outcome:
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Hub-Signature-256": signature(self._secret, body),
            "X-GitHub-Delivery": str(uuid.uuid4()),
        }
        started = time.monotonic()
        pause = self._first_pause
        attempts = 0
        while True:
            attempts += 1
            outcome = await self._attempt(url, body, headers, attempts)
            retry = outcome.status is None or outcome.status in RETRY_STATUSES
            if not retry or time.monotonic() - started + pause > self._give_up_after:
                return outcome
            await asyncio.sleep(pause)
            pause = min(pause * 2, self._longest_pause)

    async def _attempt(
        self, url: str, body: bytes, headers: dict[str, str], attempts: int
    ) -> Outcome:
        try:
            async with self._session.post(
                url, data=body, headers=headers, timeout=self._timeout
            ) as response:
                answer = await _json(response)
                if response.status == 202:
                    return Outcome(202, answer.get("id"), None, attempts)
                return Outcome(response.status, None, answer, attempts)
        except (aiohttp.ClientError, TimeoutError) as error:
            problem = {"title": "the bus did not answer", "detail": repr(error)}
            return Outcome(None, None, problem, attempts)


async def _json(response: aiohttp.ClientResponse) -> dict[str, Any]:
    text = await response.text()
    try:
        value = json.loads(text)
    except ValueError:
        return {"title": text[:500]}
    return value if isinstance(value, dict) else {"title": text[:500]}
