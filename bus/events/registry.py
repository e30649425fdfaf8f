"""An async client for the Confluent Schema Registry REST API, cached for the hot path.

Every event a flow writes needs its schema's id and every event it reads needs the writer schema
behind an id, so answers the registry can never change are kept: an id names one schema forever,
and a schema once registered under a subject keeps its id.
"""

import asyncio
import json
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypeVar
from urllib.parse import quote

import aiohttp
from yarl import URL

from bus.errors import SchemaRegistryError

Version = int | Literal["latest"]

_MEDIA_TYPE = "application/vnd.schemaregistry.v1+json"
# The Accept header Confluent's own clients send, so any registry version picks its best format.
_ACCEPT = (
    "application/vnd.schemaregistry.v1+json,"
    " application/vnd.schemaregistry+json; q=0.9, application/json; q=0.5"
)
_NOT_A_REGISTRY = "check that the URL points at a Confluent-compatible schema registry"
_INCOMPATIBLE = (
    "the schema breaks the subject's compatibility rule; make the change compatible"
    " (e.g. give new fields defaults) or use a new subject"
)
_HINTS_BY_ERROR_CODE = {
    40401: "no schema is registered under this subject; register one first or check the name",
    40402: "the subject has no such version; list its versions with subject_versions()",
    40403: "the registry holds no such schema; check that writer and reader use one registry",
    42201: "the schema is not valid Avro; correct the schema text",
    42202: "a version is a positive integer or 'latest'",
    409: _INCOMPATIBLE,  # what older registries say; current Confluent sources say 40901
    40901: _INCOMPATIBLE,
}

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RegisteredSchema:
    """One version of a subject, as the registry stores it."""

    subject: str
    version: int
    id: int
    schema: str


@dataclass(frozen=True, slots=True)
class CompatibilityResult:
    is_compatible: bool
    messages: tuple[str, ...] = ()


class _OnceCache(Generic[K, V]):
    """Values that never change once known; concurrent first asks for a key share one fetch."""

    def __init__(self) -> None:
        self._values: dict[K, V] = {}
        self._pending: dict[K, asyncio.Task[V]] = {}

    def put(self, key: K, value: V) -> None:
        self._values.setdefault(key, value)

    async def get(self, key: K, fetch: Callable[[], Awaitable[V]]) -> V:
        if key in self._values:
            return self._values[key]
        task = self._pending.get(key)
        if task is None:
            task = asyncio.ensure_future(fetch())
            self._pending[key] = task
            task.add_done_callback(lambda done: self._settle(key, done))
        # Shielded: one caller giving up must not cancel the fetch the others wait for.
        return await asyncio.shield(task)

    def _settle(self, key: K, task: asyncio.Task[V]) -> None:
        del self._pending[key]
        # Failures are not kept: the next ask tries again.
        if not task.cancelled() and task.exception() is None:
            self._values[key] = task.result()


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    body: Any  # the decoded JSON, or None when the body is not JSON
    text: str

    @property
    def error_code(self) -> int | None:
        code = self.body.get("error_code") if isinstance(self.body, dict) else None
        return code if isinstance(code, int) else None


class SchemaRegistryClient:
    """Registers and fetches Avro schemas; every failure is a `SchemaRegistryError`.

    Without a `session` the client opens its own on first use and closes it in `close()`;
    a given session is shared with the rest of the bus and left open.
    """

    def __init__(
        self,
        url: str,
        *,
        session: aiohttp.ClientSession | None = None,
        auth: aiohttp.BasicAuth | None = None,
        timeout: float = 10.0,
    ) -> None:
        base, authorization = _split_credentials(URL(url), auth)
        if base.scheme not in ("http", "https") or not base.host:
            # Not echoed: without a scheme, "user:password@host" parses as scheme "user".
            raise SchemaRegistryError(
                "the schema registry URL is not an http(s) URL"
                " (hint: write it as http(s)://host:port, e.g. http://localhost:8081)"
            )
        self._base = base.with_query(None).with_fragment(None)
        self.url = str(self._base).rstrip("/")
        self._session = session
        self._owns_session = session is None
        self._authorization = authorization
        self._timeout = timeout
        self._closed = False
        self._schemas_by_id: _OnceCache[int, str] = _OnceCache()
        self._ids_by_schema: _OnceCache[tuple[str, str], int] = _OnceCache()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        if self._owns_session and self._session is not None:
            await self._session.close()

    async def register(self, subject: str, schema: str) -> int:
        """The id of `schema` under `subject`, registering it as a new version if needed."""
        operation = f"register schema under subject {subject!r}"

        async def fetch() -> int:
            answer = await self._send(
                "POST", ("subjects", subject, "versions"), operation, body=_schema_body(schema)
            )
            return self._field(operation, self._ok(operation, answer), "id", int)

        return await self._ids_by_schema.get((subject, _canonical(schema)), fetch)

    async def schema_by_id(self, schema_id: int) -> str:
        operation = f"get schema id {schema_id}"

        async def fetch() -> str:
            answer = await self._send("GET", ("schemas", "ids", str(schema_id)), operation)
            return self._field(operation, self._ok(operation, answer), "schema", str)

        return await self._schemas_by_id.get(schema_id, fetch)

    async def subject_versions(self, subject: str) -> list[int]:
        operation = f"list versions of subject {subject!r}"
        answer = await self._send("GET", ("subjects", subject, "versions"), operation)
        versions = self._ok(operation, answer)
        if not isinstance(versions, list) or not all(_is_int(v) for v in versions):
            raise self._error(
                operation, f"unexpected answer {answer.text[:200]!r}", _NOT_A_REGISTRY
            )
        return versions

    async def schema_version(self, subject: str, version: Version) -> RegisteredSchema:
        operation = f"get version {version} of subject {subject!r}"
        answer = await self._send("GET", ("subjects", subject, "versions", str(version)), operation)
        return self._registered(operation, self._ok(operation, answer))

    async def lookup(self, subject: str, schema: str) -> RegisteredSchema | None:
        """The version of `subject` that holds `schema`, or None when it is not registered."""
        operation = f"look up schema under subject {subject!r}"
        answer = await self._send(
            "POST", ("subjects", subject), operation, body=_schema_body(schema)
        )
        if answer.status == 404 and answer.error_code in (40401, 40403):
            return None
        found = self._registered(operation, self._ok(operation, answer))
        self._ids_by_schema.put((subject, _canonical(schema)), found.id)
        return found

    async def check_compatibility(
        self, subject: str, schema: str, version: Version = "latest"
    ) -> CompatibilityResult:
        """Whether `schema` may follow `version` of `subject` under the subject's rule."""
        operation = f"check compatibility with version {version} of subject {subject!r}"
        answer = await self._send(
            "POST",
            ("compatibility", "subjects", subject, "versions", str(version)),
            operation,
            body=_schema_body(schema),
            query={"verbose": "true"},
        )
        # Older registries answer 40401 for a subject with no versions; current ones say compatible.
        if version == "latest" and answer.status == 404 and answer.error_code == 40401:
            return CompatibilityResult(is_compatible=True)
        payload = self._ok(operation, answer)
        is_compatible = self._field(operation, payload, "is_compatible", bool)
        messages = payload.get("messages") or []
        if not isinstance(messages, list):
            raise self._error(
                operation, f"unexpected answer {answer.text[:200]!r}", _NOT_A_REGISTRY
            )
        return CompatibilityResult(is_compatible, tuple(str(m) for m in messages))

    async def _send(
        self,
        method: str,
        path: tuple[str, ...],
        operation: str,
        *,
        body: dict[str, str] | None = None,
        query: dict[str, str] | None = None,
    ) -> _Answer:
        if self._closed or (self._session is not None and self._session.closed):
            raise self._error(operation, "the client is closed", "create a new client")
        if self._session is None:
            self._session = aiohttp.ClientSession()
        # Quoted segment by segment: a subject may hold '/', '?', '%' or spaces.
        prefix = self._base.raw_path.rstrip("/")
        url = self._base.with_path(
            prefix + "/" + "/".join(quote(part, safe="") for part in path), encoded=True
        ).with_query(query)
        headers = {"Accept": _ACCEPT}
        if self._authorization is not None:
            headers["Authorization"] = self._authorization
        data = None
        if body is not None:
            headers["Content-Type"] = _MEDIA_TYPE
            data = json.dumps(body).encode()
        try:
            async with self._session.request(
                method,
                url,
                data=data,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            ) as response:
                raw = await response.read()
                status = response.status
        except TimeoutError:
            raise self._error(
                operation,
                f"no answer within {self._timeout:g} s",
                "check that the registry is healthy and reachable, or raise the timeout",
            ) from None
        except aiohttp.ClientConnectionError as failure:
            raise self._error(
                operation,
                f"cannot connect ({failure})",
                "check the schema registry URL and that it runs",
            ) from failure
        except aiohttp.ClientError as failure:
            raise self._error(
                operation, f"the request failed ({failure})", _NOT_A_REGISTRY
            ) from failure
        text = raw.decode("utf-8", errors="replace")
        try:
            decoded = json.loads(text) if text else None
        except ValueError:
            decoded = None
        return _Answer(status, decoded, text)

    def _ok(self, operation: str, answer: _Answer) -> Any:
        """The JSON of a successful answer; any other answer becomes the error to raise."""
        if answer.status >= 300:
            raise self._refusal(operation, answer)
        if answer.body is None:
            raise self._error(
                operation, f"HTTP {answer.status} with a body that is not JSON", _NOT_A_REGISTRY
            )
        return answer.body

    def _refusal(self, operation: str, answer: _Answer) -> SchemaRegistryError:
        code = answer.error_code
        if code is None:
            problem = f"HTTP {answer.status}: {answer.text[:200]!r}"
        else:
            problem = f"HTTP {answer.status}, error_code {code}: {answer.body.get('message')}"
        return self._error(operation, problem, self._hint(answer.status, code))

    def _hint(self, status: int, code: int | None) -> str:
        if code in _HINTS_BY_ERROR_CODE:
            return _HINTS_BY_ERROR_CODE[code]
        if status == 401:
            if self._authorization is None:
                return "the registry wants credentials; pass auth=aiohttp.BasicAuth(user, password)"
            return "the registry refused the configured credentials; check user and password"
        if status == 403:
            return "the credentials lack permission for this subject; ask for access"
        if status >= 500:
            return "the registry failed internally; retry, and read the registry's log"
        return _NOT_A_REGISTRY

    def _error(self, operation: str, problem: str, hint: str) -> SchemaRegistryError:
        return SchemaRegistryError(
            f"{operation} at schema registry {self.url} failed: {problem} (hint: {hint})"
        )

    def _field(self, operation: str, payload: Any, key: str, kind: type[T]) -> T:
        value = payload.get(key) if isinstance(payload, dict) else None
        if not isinstance(value, kind) or (kind is int and not _is_int(value)):
            raise self._error(
                operation,
                f"answer without a valid {key!r}: {str(payload)[:200]!r}",
                _NOT_A_REGISTRY,
            )
        return value

    def _registered(self, operation: str, payload: Any) -> RegisteredSchema:
        found = RegisteredSchema(
            subject=self._field(operation, payload, "subject", str),
            version=self._field(operation, payload, "version", int),
            id=self._field(operation, payload, "id", int),
            schema=self._field(operation, payload, "schema", str),
        )
        self._schemas_by_id.put(found.id, found.schema)
        return found


def _split_credentials(url: URL, auth: aiohttp.BasicAuth | None) -> tuple[URL, str | None]:
    """The URL without credentials, so it can appear in every error, and the Authorization value.

    A header rather than aiohttp's `auth=` request argument, which aiohttp 3.14 deprecates.
    """
    if url.raw_user is None and url.raw_password is None:
        return url, auth.encode() if auth is not None else None
    if auth is not None:
        raise SchemaRegistryError(
            "the schema registry URL holds credentials and auth is given too;"
            " pass the credentials one way only"
        )
    return url.with_user(None), aiohttp.encode_basic_auth(url.user or "", url.password or "")


def _schema_body(schema: str) -> dict[str, str]:
    return {"schema": schema, "schemaType": "AVRO"}


def _canonical(schema: str) -> str:
    """One text per schema however it is spaced or its keys ordered: neither changes its id."""
    try:
        return json.dumps(json.loads(schema), sort_keys=True, separators=(",", ":"))
    except ValueError:
        return schema  # the registry will refuse it; the raw text is as good a key as any


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
