"""An in-memory Confluent Schema Registry over real HTTP, for the endpoints bus uses.

Status codes, error codes, messages and JSON shapes follow Confluent's server
(io.confluent.kafka.schemaregistry.rest.resources.*, rest.exceptions.Errors). Compatibility is
BACKWARD, Confluent's default: the new schema must read what the latest version wrote.
"""

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Self

import avro.errors
import avro.schema
from aiohttp import encode_basic_auth, web
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

MEDIA_TYPE = "application/vnd.schemaregistry.v1+json"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RegistryError(Exception):
    """A refusal in Confluent's shape: HTTP status plus {"error_code", "message"}."""

    def __init__(self, status: int, error_code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message


def answer(payload: object, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(payload), content_type=MEDIA_TYPE)


class SchemaRegistryServer:
    """Start with `async with SchemaRegistryServer() as registry:`, then use `registry.url`.

    `requests` counts requests per route ("GET /schemas/ids/{id}"), so tests can prove what a
    client did not ask; `delay` makes every answer that late; `credentials` demands Basic auth.
    """

    def __init__(self, *, credentials: tuple[str, str] | None = None) -> None:
        self.requests: Counter[str] = Counter()
        self.delay = 0.0
        self._authorization = encode_basic_auth(*credentials) if credentials else None
        self._schemas: list[str] = []  # id - 1 -> canonical text, shared by all subjects
        self._subjects: dict[str, list[int]] = {}  # subject -> ids by version - 1
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> Self:
        app = web.Application(middlewares=[self._count, self._authenticate, self._refusals])
        app.router.add_post("/subjects/{subject}/versions", self._register)
        app.router.add_get("/subjects/{subject}/versions", self._versions)
        app.router.add_get("/subjects/{subject}/versions/{version}", self._version)
        app.router.add_post("/subjects/{subject}", self._lookup)
        app.router.add_get("/schemas/ids/{id}", self._schema_by_id)
        app.router.add_post(
            "/compatibility/subjects/{subject}/versions/{version}", self._compatibility
        )
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)  # port 0: the OS picks a free one
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _count(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route.resource
        self.requests[f"{request.method} {route.canonical if route else request.path}"] += 1
        await asyncio.sleep(self.delay)
        return await handler(request)

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self._authorization and request.headers.get("Authorization") != self._authorization:
            return web.Response(
                status=401,
                text=json.dumps({"error_code": 401, "message": "Unauthorized"}),
                content_type=MEDIA_TYPE,
                headers={"WWW-Authenticate": 'Basic realm="SchemaRegistry"'},
            )
        return await handler(request)

    @web.middleware
    async def _refusals(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except RegistryError as refusal:
            body = {"error_code": refusal.error_code, "message": refusal.message}
            return answer(body, refusal.status)
        except web.HTTPNotFound:
            return answer({"error_code": 404, "message": "HTTP 404 Not Found"}, 404)

    async def _register(self, request: web.Request) -> web.Response:
        subject = request.match_info["subject"]
        text, parsed = await _read_schema(request)
        versions = self._subjects.get(subject, [])
        for schema_id in versions:
            if self._schemas[schema_id - 1] == text:
                return answer({"id": schema_id})
        if versions:
            problems = _backward_problems(parsed, self._schemas[versions[-1] - 1], len(versions))
            if problems:
                raise RegistryError(
                    409,
                    409,
                    "Schema being registered is incompatible with an earlier schema for subject"
                    f' "{subject}", details: [{", ".join(problems)}]',
                )
        if text not in self._schemas:
            self._schemas.append(text)
        schema_id = self._schemas.index(text) + 1
        self._subjects.setdefault(subject, []).append(schema_id)
        return answer({"id": schema_id})

    async def _versions(self, request: web.Request) -> web.Response:
        return answer(list(range(1, len(self._versions_of(request)) + 1)))

    async def _version(self, request: web.Request) -> web.Response:
        subject = request.match_info["subject"]
        versions = self._versions_of(request)
        version = _version_number(request.match_info["version"], len(versions))
        if not 1 <= version <= len(versions):
            raise RegistryError(404, 40402, f"Version {version} not found.")
        return answer(self._entity(subject, version))

    async def _lookup(self, request: web.Request) -> web.Response:
        subject = request.match_info["subject"]
        text, _ = await _read_schema(request)
        versions = self._versions_of(request)
        for version, schema_id in enumerate(versions, start=1):
            if self._schemas[schema_id - 1] == text:
                return answer(self._entity(subject, version))
        raise RegistryError(404, 40403, "Schema not found")

    async def _schema_by_id(self, request: web.Request) -> web.Response:
        raw = request.match_info["id"]
        if not raw.isdigit() or not 1 <= int(raw) <= len(self._schemas):
            raise RegistryError(404, 40403, f"Schema {raw} not found")
        return answer({"schema": self._schemas[int(raw) - 1]})

    async def _compatibility(self, request: web.Request) -> web.Response:
        versions = self._subjects.get(request.match_info["subject"], [])
        raw_version = request.match_info["version"]
        version = _version_number(raw_version, len(versions))
        if not 1 <= version <= len(versions) and raw_version != "latest":
            raise RegistryError(404, 40402, f"Version {version} not found.")
        verbose = request.query.get("verbose") == "true"
        try:
            _, parsed = await _read_schema(request)
        except RegistryError as invalid:
            if not verbose:
                raise
            return answer({"is_compatible": False, "messages": [invalid.message]})
        problems = (
            _backward_problems(parsed, self._schemas[versions[version - 1] - 1], version)
            if versions
            else []  # nothing registered yet, so nothing to break
        )
        body: dict[str, Any] = {"is_compatible": not problems}
        if verbose:
            body["messages"] = problems
        return answer(body)

    def _versions_of(self, request: web.Request) -> list[int]:
        subject = request.match_info["subject"]
        if subject not in self._subjects:
            raise RegistryError(404, 40401, f"Subject '{subject}' not found.")
        return self._subjects[subject]

    def _entity(self, subject: str, version: int) -> dict[str, Any]:
        schema_id = self._subjects[subject][version - 1]
        return {
            "subject": subject,
            "version": version,
            "id": schema_id,
            "schema": self._schemas[schema_id - 1],
        }


async def _read_schema(request: web.Request) -> tuple[str, avro.schema.Schema]:
    """The posted schema in the registry's canonical text, which is what it stores and compares."""
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise RegistryError(400, 400, "Unrecognized request body: not a JSON object")
    schema_type = body.get("schemaType") or "AVRO"
    if schema_type != "AVRO":
        raise RegistryError(422, 42201, f"Invalid schema type {schema_type}")
    text = body.get("schema")
    if not isinstance(text, str) or not text:
        raise RegistryError(422, 42201, "Empty schema")
    try:
        parsed = avro.schema.parse(text)
    except avro.errors.SchemaParseException as invalid:
        raise RegistryError(422, 42201, f"Invalid schema {text}: {invalid}") from None
    return str(parsed), parsed


def _version_number(raw: str, latest: int) -> int:
    if raw in ("latest", "-1"):
        return latest
    if not raw.isdigit() or int(raw) < 1:
        raise RegistryError(
            422,
            42202,
            f"The specified version '{raw}' is not a valid version id. Allowed values are"
            ' between [1, 2^31-1] and the string "latest"',
        )
    return int(raw)


def _backward_problems(reader: avro.schema.Schema, writer_text: str, version: int) -> list[str]:
    """Confluent's verbose messages: one per incompatibility, then which version was checked."""
    result = ReaderWriterCompatibilityChecker().get_compatibility(
        reader, avro.schema.parse(writer_text)
    )
    if result.compatibility is SchemaCompatibilityType.compatible:
        return []
    where = ", ".join(sorted(result.locations))
    detail = ", ".join(sorted(result.messages))
    problems = [
        f"{{errorType:'{kind.name.upper()}', description:'incompatible at {where}',"
        f" additionalInfo:'{detail}'}}"
        for kind in dict.fromkeys(result.incompatibilities)
    ]
    return [*problems, f"{{oldSchemaVersion: {version}}}", f"{{oldSchema: '{writer_text}'}}"]
