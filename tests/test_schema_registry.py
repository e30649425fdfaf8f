"""SchemaRegistryClient against an in-memory Confluent-shaped registry over real sockets."""

import asyncio
import json
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest

from bus.errors import SchemaRegistryError
from bus.events.registry import CompatibilityResult, RegisteredSchema, SchemaRegistryClient
from tests.schema_registry_server import SchemaRegistryServer

REGISTER = "POST /subjects/{subject}/versions"
SCHEMA_BY_ID = "GET /schemas/ids/{id}"
LOOKUP = "POST /subjects/{subject}"

ORDER_FIELDS = [{"name": "id", "type": "string"}]
ORDER_V1 = json.dumps({"type": "record", "name": "Order", "fields": ORDER_FIELDS})
# Backward compatible: a reader with the new field fills it from the default.
ORDER_V2 = json.dumps(
    {
        "type": "record",
        "name": "Order",
        "fields": [*ORDER_FIELDS, {"name": "note", "type": "string", "default": ""}],
    }
)
# Not backward compatible: old records carry no amount and there is no default.
ORDER_BREAKING = json.dumps(
    {
        "type": "record",
        "name": "Order",
        "fields": [*ORDER_FIELDS, {"name": "amount", "type": "long"}],
    }
)
SUBJECT = "orders-value"


@pytest.fixture
async def registry() -> AsyncIterator[SchemaRegistryServer]:
    async with SchemaRegistryServer() as server:
        yield server


@pytest.fixture
async def client(registry: SchemaRegistryServer) -> AsyncIterator[SchemaRegistryClient]:
    async with SchemaRegistryClient(registry.url, timeout=5.0) as registry_client:
        yield registry_client


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_register_returns_the_id_and_fetches_nothing_twice(
    registry: SchemaRegistryServer, client: SchemaRegistryClient
) -> None:
    schema_id = await client.register(SUBJECT, ORDER_V1)

    assert schema_id == 1
    # Same schema, other spacing and key order: the same id, straight from the cache.
    respaced = json.dumps(json.loads(ORDER_V1), indent=2, sort_keys=True)
    assert await client.register(SUBJECT, ORDER_V1) == schema_id
    assert await client.register(SUBJECT, respaced) == schema_id
    assert registry.requests[REGISTER] == 1
    assert await client.subject_versions(SUBJECT) == [1]


async def test_registering_again_from_a_fresh_client_returns_the_same_id(
    registry: SchemaRegistryServer, client: SchemaRegistryClient
) -> None:
    first = await client.register(SUBJECT, ORDER_V1)
    async with SchemaRegistryClient(registry.url) as other:
        assert await other.register(SUBJECT, ORDER_V1) == first
    assert await client.subject_versions(SUBJECT) == [1]


async def test_schema_by_id_is_fetched_once(
    registry: SchemaRegistryServer, client: SchemaRegistryClient
) -> None:
    schema_id = await client.register(SUBJECT, ORDER_V1)

    text = await client.schema_by_id(schema_id)

    assert json.loads(text) == json.loads(ORDER_V1) | {"fields": [{"type": "string", "name": "id"}]}
    assert await client.schema_by_id(schema_id) == text
    assert registry.requests[SCHEMA_BY_ID] == 1


async def test_concurrent_first_asks_for_an_id_share_one_request(
    registry: SchemaRegistryServer, client: SchemaRegistryClient
) -> None:
    schema_id = await client.register(SUBJECT, ORDER_V1)
    registry.delay = 0.05  # every ask is in flight before the first answer

    texts = await asyncio.gather(*(client.schema_by_id(schema_id) for _ in range(10)))

    assert len(set(texts)) == 1
    assert registry.requests[SCHEMA_BY_ID] == 1


async def test_concurrent_first_registrations_share_one_request(
    registry: SchemaRegistryServer, client: SchemaRegistryClient
) -> None:
    registry.delay = 0.05

    ids = await asyncio.gather(*(client.register(SUBJECT, ORDER_V1) for _ in range(5)))

    assert ids == [1] * 5
    assert registry.requests[REGISTER] == 1


async def test_subject_versions_and_schema_version(client: SchemaRegistryClient) -> None:
    first = await client.register(SUBJECT, ORDER_V1)
    second = await client.register(SUBJECT, ORDER_V2)

    assert await client.subject_versions(SUBJECT) == [1, 2]
    latest = await client.schema_version(SUBJECT, "latest")
    assert latest == RegisteredSchema(SUBJECT, 2, second, latest.schema)
    assert json.loads(latest.schema)["fields"][1]["name"] == "note"
    oldest = await client.schema_version(SUBJECT, 1)
    assert (oldest.subject, oldest.version, oldest.id) == (SUBJECT, 1, first)


async def test_schema_version_fills_the_id_cache(
    registry: SchemaRegistryServer, client: SchemaRegistryClient
) -> None:
    schema_id = await client.register(SUBJECT, ORDER_V1)
    found = await client.schema_version(SUBJECT, "latest")

    assert await client.schema_by_id(schema_id) == found.schema
    assert registry.requests[SCHEMA_BY_ID] == 0


async def test_lookup_finds_registered_schemas_and_caches_their_id(
    registry: SchemaRegistryServer, client: SchemaRegistryClient
) -> None:
    async with SchemaRegistryClient(registry.url) as writer:
        schema_id = await writer.register(SUBJECT, ORDER_V1)

    found = await client.lookup(SUBJECT, ORDER_V1)

    assert found is not None
    assert (found.subject, found.version, found.id) == (SUBJECT, 1, schema_id)
    assert await client.register(SUBJECT, ORDER_V1) == schema_id
    assert registry.requests[REGISTER] == 1  # only the writer's


async def test_lookup_of_an_unregistered_schema_is_none(client: SchemaRegistryClient) -> None:
    assert await client.lookup(SUBJECT, ORDER_V1) is None  # no such subject (40401)
    await client.register(SUBJECT, ORDER_V1)
    assert await client.lookup(SUBJECT, ORDER_V2) is None  # no such schema (40403)


async def test_subjects_are_quoted_in_paths(client: SchemaRegistryClient) -> None:
    subject = "team a/orders?v=1#%41"

    schema_id = await client.register(subject, ORDER_V1)

    assert await client.subject_versions(subject) == [1]
    assert (await client.schema_version(subject, "latest")).subject == subject
    found = await client.lookup(subject, ORDER_V1)
    assert found is not None
    assert found.id == schema_id


async def test_compatibility(client: SchemaRegistryClient) -> None:
    assert await client.check_compatibility(SUBJECT, ORDER_V1) == CompatibilityResult(True, ())
    await client.register(SUBJECT, ORDER_V1)

    assert (await client.check_compatibility(SUBJECT, ORDER_V2)).is_compatible
    assert (await client.check_compatibility(SUBJECT, ORDER_V2, version=1)).is_compatible
    breaking = await client.check_compatibility(SUBJECT, ORDER_BREAKING)

    assert not breaking.is_compatible
    assert any(
        "READER_FIELD_MISSING_DEFAULT_VALUE" in m and "amount" in m for m in breaking.messages
    )
    assert "{oldSchemaVersion: 1}" in breaking.messages


async def test_compatibility_with_a_missing_version_fails(client: SchemaRegistryClient) -> None:
    await client.register(SUBJECT, ORDER_V1)

    with pytest.raises(SchemaRegistryError) as failure:
        await client.check_compatibility(SUBJECT, ORDER_V2, version=7)

    message = str(failure.value)
    assert "check compatibility with version 7 of subject 'orders-value'" in message
    assert "HTTP 404, error_code 40402: Version 7 not found." in message
    assert "hint: the subject has no such version" in message


async def test_unknown_subject(
    registry: SchemaRegistryServer, client: SchemaRegistryClient
) -> None:
    with pytest.raises(SchemaRegistryError) as failure:
        await client.subject_versions("nobody-value")

    message = str(failure.value)
    assert f"list versions of subject 'nobody-value' at schema registry {registry.url}" in message
    assert "HTTP 404, error_code 40401: Subject 'nobody-value' not found." in message
    assert "hint: no schema is registered under this subject" in message
    with pytest.raises(SchemaRegistryError, match="error_code 40401"):
        await client.schema_version("nobody-value", "latest")


async def test_unknown_id_is_not_cached(
    registry: SchemaRegistryServer, client: SchemaRegistryClient
) -> None:
    for _ in range(2):
        with pytest.raises(SchemaRegistryError) as failure:
            await client.schema_by_id(999)

    message = str(failure.value)
    assert f"get schema id 999 at schema registry {registry.url} failed" in message
    assert "HTTP 404, error_code 40403: Schema 999 not found" in message
    assert "hint: the registry holds no such schema" in message
    assert registry.requests[SCHEMA_BY_ID] == 2


async def test_invalid_schema(client: SchemaRegistryClient) -> None:
    with pytest.raises(SchemaRegistryError) as failure:
        await client.register(SUBJECT, '{"type": "record", "name": "Order"}')

    message = str(failure.value)
    assert "register schema under subject 'orders-value'" in message
    assert "HTTP 422, error_code 42201: Invalid schema" in message
    assert "hint: the schema is not valid Avro" in message


async def test_registering_an_incompatible_schema(client: SchemaRegistryClient) -> None:
    await client.register(SUBJECT, ORDER_V1)

    with pytest.raises(SchemaRegistryError) as failure:
        await client.register(SUBJECT, ORDER_BREAKING)

    message = str(failure.value)
    assert "HTTP 409, error_code 409: Schema being registered is incompatible" in message
    assert "hint: the schema breaks the subject's compatibility rule" in message
    assert await client.subject_versions(SUBJECT) == [1]


async def test_unreachable_registry() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    async with SchemaRegistryClient(url) as unreachable:
        with pytest.raises(SchemaRegistryError) as failure:
            await unreachable.register(SUBJECT, ORDER_V1)

    message = str(failure.value)
    assert f"register schema under subject 'orders-value' at schema registry {url}" in message
    assert "cannot connect" in message
    assert "hint: check the schema registry URL and that it runs" in message
    assert not isinstance(failure.value.__cause__, SchemaRegistryError)


async def test_timeout(registry: SchemaRegistryServer) -> None:
    registry.delay = 1.0
    async with SchemaRegistryClient(registry.url, timeout=0.1) as impatient:
        with pytest.raises(SchemaRegistryError) as failure:
            await impatient.schema_by_id(1)

    message = str(failure.value)
    assert f"get schema id 1 at schema registry {registry.url} failed" in message
    assert "no answer within 0.1 s" in message
    assert "raise the timeout" in message


# The constructor takes aiohttp.BasicAuth, which aiohttp 3.14 deprecates in favour of headers.
@pytest.mark.filterwarnings("ignore:BasicAuth is deprecated:DeprecationWarning")
async def test_basic_auth_is_sent_and_the_password_never_shown() -> None:
    password = "s3cret-Pa55word"
    async with SchemaRegistryServer(credentials=("bus", password)) as secured:
        async with SchemaRegistryClient(
            secured.url, auth=aiohttp.BasicAuth("bus", password)
        ) as authorized:
            assert await authorized.register(SUBJECT, ORDER_V1) == 1
            with pytest.raises(SchemaRegistryError) as unknown:
                await authorized.schema_by_id(42)

        # Credentials in the URL are used, and the URL shown without them.
        host = secured.url.removeprefix("http://")
        async with SchemaRegistryClient(f"http://bus:{password}@{host}") as from_url:
            assert await from_url.subject_versions(SUBJECT) == [1]
            with pytest.raises(SchemaRegistryError) as unknown_from_url:
                await from_url.schema_by_id(42)

        async with SchemaRegistryClient(
            secured.url, auth=aiohttp.BasicAuth("bus", password + "-wrong")
        ) as wrong:
            with pytest.raises(SchemaRegistryError) as refused:
                await wrong.subject_versions(SUBJECT)

        async with SchemaRegistryClient(secured.url) as anonymous:
            with pytest.raises(SchemaRegistryError) as anonymous_refused:
                await anonymous.subject_versions(SUBJECT)

    assert "HTTP 401, error_code 401: Unauthorized" in str(refused.value)
    assert "refused the configured credentials" in str(refused.value)
    assert "pass auth=aiohttp.BasicAuth" in str(anonymous_refused.value)
    for failure in (unknown, unknown_from_url, refused, anonymous_refused):
        assert secured.url in str(failure.value)
        assert password not in str(failure.value)
        assert password not in repr(failure.value)


async def test_a_shared_session_is_left_open(registry: SchemaRegistryServer) -> None:
    async with aiohttp.ClientSession() as session:
        shared = SchemaRegistryClient(registry.url, session=session)
        assert await shared.register(SUBJECT, ORDER_V1) == 1
        await shared.close()

        assert not session.closed
        async with session.get(f"{registry.url}/subjects/{SUBJECT}/versions") as response:
            assert await response.json(content_type=None) == [1]
        with pytest.raises(SchemaRegistryError, match="the client is closed"):
            await shared.schema_by_id(1)


async def test_an_owned_session_is_closed(registry: SchemaRegistryServer) -> None:
    async with SchemaRegistryClient(registry.url) as owner:
        await owner.register(SUBJECT, ORDER_V1)

    with pytest.raises(SchemaRegistryError, match="the client is closed"):
        await owner.subject_versions(SUBJECT)


@pytest.mark.parametrize("url", ["localhost:8081", "bus:s3cret@localhost:8081"])
def test_a_url_that_is_not_http_is_refused_without_showing_it(url: str) -> None:
    with pytest.raises(SchemaRegistryError, match="not an http") as failure:
        SchemaRegistryClient(url)

    assert "s3cret" not in str(failure.value)
