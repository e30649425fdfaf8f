"""The `jsonl` adapter: each event of a topic appended to a file as one JSON line.

```yaml
outbound:
  - name: customer-archive
    from: crm.customer-changed.v1
    jsonl:
      path: archive/{event.change}.jsonl   # relative: from this flow file's folder
```

An adapter is four small parts, in the order of this file:

1. its settings, a pydantic model of what goes under `jsonl:`;
2. `JsonlAdapter`, what the entry point names: it checks an item's settings for `bus validate`
   and makes the runtime;
3. `JsonlRuntime`, its part of one `bus run` process: one `Delivery` per outbound item;
4. `JsonlDelivery.call`, one event in, one durable line out, or an error that says whether
   trying again can help.

Retries, the circuit breaker, the rate limit, per-key order, dead letters and replies are the
delivery runner's: an adapter does none of them.
"""

import asyncio
import contextlib
import errno
import fcntl
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import Field, ValidationError

from bus.delivery.contract import Delivery, Response
from bus.delivery.replies import REPLY_VARIABLES
from bus.errors import (
    ConfigError,
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from bus.events import json_values
from bus.events.catalog import SchemaCatalog
from bus.events.codec import DecodedEvent
from bus.flows.expressions import VARIABLES, ExpressionError, compile_expression
from bus.flows.loading import settings_problems
from bus.flows.model import Block, FlowSet, Inbound, LookupItem, Outbound
from bus.flows.steps import Lookup, attributes_of
from bus.plugins import Adapter, AdapterContext, Problems, expression_problems

PLACEHOLDER = re.compile(r"\{([^{}]+)\}")
"""A `{expression}` part of the path."""

TRANSIENT_ERRNOS = frozenset(
    {
        errno.EAGAIN,  # also EWOULDBLOCK
        errno.EINTR,
        errno.EBUSY,
        errno.ETIMEDOUT,  # a network file system
        errno.ESTALE,  # a network file system
        errno.EMFILE,  # too many open files, in this process or all of them
        errno.ENFILE,
    }
)
"""Failures a later attempt can get past. Any other (a full disk, no permission, a read-only
file system, a folder where the file should be) stays until someone acts: the event goes to
the dead-letter topic at once, with the reason, to be replayed (`bus dlq replay`) after."""


# -- 1. settings ------------------------------------------------------------------------------


class JsonlSettings(Block):
    """The `jsonl:` mapping of an outbound item. `Block` is bus's base for flow file mappings:
    a misspelt key is reported with the allowed ones."""

    path: str = Field(
        min_length=1,
        description="The file to append to. `{expression}` parts are filled from the event "
        "(event, attributes); a relative path is read from the flow file's folder.",
    )

    def placeholders(self) -> list[str]:
        return [source.strip() for source in PLACEHOLDER.findall(self.path)]


# -- 2. the adapter: checks, and the runtime --------------------------------------------------


class JsonlAdapter:
    name = "jsonl"

    def check_outbound(self, item: Outbound, catalog: SchemaCatalog) -> Problems:
        """Problems as (key path below the item, message); bus adds the file and line."""
        key = item.adapter  # "jsonl"
        try:
            settings = JsonlSettings.model_validate(item.config)
        except ValidationError as invalid:
            return [
                ((key, *path), message) for path, message in settings_problems(invalid, item.config)
            ]
        problems: Problems = []
        if {"{", "}"} & set(PLACEHOLDER.sub("", settings.path)):
            problems.append(((key, "path"), "a { without its } (or the reverse)"))
        for source in settings.placeholders():
            problems += expression_problems((key, "path"), source, VARIABLES)
        for name, source in item.map.items():
            problems += expression_problems(("map", name), source, VARIABLES)
        if item.reply is not None:  # only the adapter knows what `response` holds
            for name, source in item.reply.map.items():
                problems += expression_problems(("reply", "map", name), source, REPLY_VARIABLES)
        return problems

    def check_inbound(self, item: Inbound, catalog: SchemaCatalog) -> Problems:
        return [((item.adapter,), "the jsonl adapter only writes: use it under outbound")]

    def check_lookup(self, item: LookupItem, catalog: SchemaCatalog) -> Problems:
        return [((item.adapter,), "the jsonl adapter only writes: use it under outbound")]

    def check_flows(self, flows: FlowSet, catalog: SchemaCatalog) -> list[str]:
        return []  # no settings outside its items

    def runtime(self, context: AdapterContext) -> "JsonlRuntime":
        return JsonlRuntime()


adapter: Adapter = JsonlAdapter()  # typed so that mypy checks it against the protocols
"""What the `jsonl` entry point of the `bus.adapters` group names."""


# -- 3. the runtime: one per `bus run` process ------------------------------------------------


class JsonlRuntime:
    """Made in every process where the package is installed, items or not: keep it cheap."""

    def add_outbound(self, item: Outbound) -> Delivery:
        settings = JsonlSettings.model_validate(item.config)  # checked by bus validate already
        file = item.origin.source.file  # "<...>" when the item was built in code
        folder = Path(file).parent if not file.startswith("<") else Path.cwd()
        return JsonlDelivery(
            settings.path, folder=folder, field_map=item.map, timeout=item.timeout.total_seconds()
        )

    def add_inbound(self, item: Inbound) -> None:
        raise ConfigError(f"{item.origin.where()}: the jsonl adapter only writes")

    def add_lookup(self, item: LookupItem) -> Lookup:
        raise ConfigError(f"{item.origin.where()}: the jsonl adapter only writes")

    def routes(self) -> Sequence[web.RouteDef]:
        return []  # nothing to serve on the inbound HTTP server

    async def run(self, stop: asyncio.Event) -> None:
        return  # no background work

    async def close(self) -> None:
        return  # nothing held between calls: each call opens and closes its file


# -- 4. the delivery: one event, one call -----------------------------------------------------


class JsonlDelivery:
    """Appends `{"id", "type", "key", "time", "data"}` and returns once it is on disk. `data`
    is the event's data, or the item's `map` (field -> expression) when it has one."""

    def __init__(
        self, template: str, *, folder: Path, field_map: Mapping[str, str], timeout: float
    ) -> None:
        self.template = template
        self.folder = folder
        self.timeout = timeout
        self._parts = {
            source: compile_expression(source)
            for source in (s.strip() for s in PLACEHOLDER.findall(template))
        }
        self._fields = {name: compile_expression(source) for name, source in field_map.items()}

    async def call(self, decoded: DecodedEvent) -> Response:
        event = decoded.event
        values = {"event": event.data, "attributes": attributes_of(event)}
        try:
            path = self.folder / PLACEHOLDER.sub(lambda p: self._fill(p, values), self.template)
            data: Mapping[str, Any] = event.data
            if self._fields:
                data = {name: e.evaluate_in(values) for name, e in self._fields.items()}
        except ExpressionError as error:
            raise PermanentDeliveryError(f"cannot build the line: {error}") from error
        line = {"id": event.id, "type": event.type, "key": event.key, "time": event.time}
        text = json_values.dumps({**line, "data": data}) + b"\n"  # Decimal, datetime: as text
        try:
            # Blocking file calls go to a thread, so that other keys' calls go on meanwhile.
            async with asyncio.timeout(self.timeout):  # the item's `timeout`
                offset = await asyncio.to_thread(append_durably, path, text)
        except TimeoutError as error:  # caught before OSError, of which it is one
            raise TransientDeliveryError(
                f"cannot append to {path}: no answer within {self.timeout:g} s"
            ) from error
        except OSError as error:
            raise classified(error, path) from error
        # A file has no status; 200 reads as "done" in metrics and journeys, as for HTTP.
        return Response(status=200, body={"path": str(path), "offset": offset})

    async def close(self) -> None:
        return

    def _fill(self, part: re.Match[str], values: Mapping[str, Any]) -> str:
        source = part.group(1).strip()
        value = json_values.json_ready(self._parts[source].evaluate_in(values))
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise PermanentDeliveryError(f"cannot build the path: {{{source}}} gave no text")
        text = str(value)
        if text in ("", ".", "..") or "/" in text or "\0" in text:
            # An event must not choose a file outside the template's folder.
            raise PermanentDeliveryError(
                f"cannot build the path: {{{source}}} is empty, '.', '..' or holds a '/'"
            )
        return text


def append_durably(path: Path, line: bytes) -> int:
    """Append `line` to `path` and return its offset, once fsync says it is on disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # whole lines, with other writers that lock too
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)  # leave no half line behind
            raise
    finally:
        os.close(fd)  # releases the lock
    if start == 0:  # a new file: its name must be durable too
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    return start


def classified(error: OSError, path: Path) -> DeliveryError:
    """The failure as the delivery runner reads it: transient (retried) or permanent."""
    code = errno.errorcode.get(error.errno or 0, "unknown")
    reason = f"cannot append to {path}: {error.strerror or error} ({code})"
    if error.errno in TRANSIENT_ERRNOS:
        return TransientDeliveryError(reason)
    return PermanentDeliveryError(reason)
