"""The OpenAPI document of the inbound endpoints: valid OpenAPI 3.1, and true to what the
endpoints accept (the request schemas agree with `bus.events.validation.validated`)."""

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from adapters.rest.openapi import (
    EndpointDoc,
    PublishDoc,
    SecurityDoc,
    openapi_document,
)
from bus.errors import EventValidationError, SchemaError
from bus.events.catalog import SchemaCatalog, SchemaVersion
from bus.events.validation import json_schema, validated

FORMATS = Draft202012Validator.FORMAT_CHECKER
ROOT = Path(__file__).resolve().parents[1]
CATALOG = SchemaCatalog.load(ROOT / "schemas")
WEBHOOKS = Path(__file__).parent / "data" / "webhooks"
CUSTOMER = CATALOG.current("com.acme.crm.CustomerChanged")
ORDER = CATALOG.current("com.acme.orders.OrderPlaced")
RECORDS = [v for v in CATALOG if v.current and v.schema["type"] == "record"]


def order(**changes: Any) -> dict[str, Any]:
    """An OrderPlaced as a caller sends it: decimals as strings and numbers, ISO 8601 times."""
    data: dict[str, Any] = {
        "orderId": "o-1",
        "customerId": "c-42",
        "channel": "WEB",
        "lines": [
            {"sku": "A-1", "quantity": 2, "unitPrice": {"amount": "19.99", "currency": "EUR"}},
            {
                "sku": "B-2",
                "description": "spare part",
                "quantity": 1,
                "unitPrice": {"amount": 0.5, "currency": "EUR"},
            },
        ],
        "total": {"amount": "40.48", "currency": "EUR"},
        "shippingAddress": {
            "line1": "Unter den Linden 1",
            "city": "Berlin",
            "postalCode": "10117",
            "country": "DE",
        },
        "billingAddress": None,
        "metadata": {"campaign": "spring"},
        "placedAt": "2026-11-24T01:40:06.123Z",
    }
    return {**data, **changes}


def customer(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "customerId": "c-42",
        "change": "UPDATED",
        "email": "ada@example.com",
        "name": "Ada Lovelace",
        "phone": None,
        "status": "ACTIVE",
        "address": {
            "line1": "12 St James's Square",
            "line2": None,
            "city": "London",
            "postalCode": "SW1Y 4JH",
            "region": "Greater London",
            "country": "GB",
        },
        "tags": ["vip"],
        "attributes": {"segment": "enterprise"},
        "changedAt": "2026-11-24T01:40:06Z",
    }
    return {**data, **changes}


def publish_doc(
    versions: list[SchemaVersion] | None = None, security: SecurityDoc | None = None
) -> PublishDoc:
    chosen = RECORDS if versions is None else versions
    return PublishDoc(
        prefix="/events",
        schemas={v.full_name: (v, f"topic.{v.full_name}") for v in chosen},
        security=security,
        max_body_bytes=1_048_576,
    )


def webhook(
    event_map: Mapping[str, str],
    *,
    name: str = "stripe-customer",
    method: str = "POST",
    path: str = "/hooks/stripe",
    event: SchemaVersion = CUSTOMER,
    security: SecurityDoc | None = None,
) -> EndpointDoc:
    return EndpointDoc(
        name=name,
        method=method,
        path=path,
        event=event,
        topic="crm.customer-changed.v1",
        event_map=event_map,
        security=security,
        max_body_bytes=65_536,
        description="Customers from Stripe.",
    )


def document(
    endpoints: list[EndpointDoc], publish: PublishDoc | None = None, **options: Any
) -> dict[str, Any]:
    result = openapi_document(endpoints, publish, version="1.2.3", **options)
    validate(copy.deepcopy(result))  # OpenAPI 3.1, schemas included
    json.dumps(result)  # plain JSON, as GET /openapi.json serves it
    return result


def validator(doc: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    """A validator (formats checked) for a schema inside `doc`, whose refs point into it."""
    resource = Resource.from_contents(doc, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource("urn:openapi", resource)
    return Draft202012Validator(_absolute(schema), registry=registry, format_checker=FORMATS)


def _absolute(node: Any) -> Any:
    """`schema` with its document-relative refs made absolute (urn:openapi#/...)."""
    if isinstance(node, dict):
        result = {key: _absolute(value) for key, value in node.items()}
        if isinstance(node.get("$ref"), str) and node["$ref"].startswith("#/"):
            result["$ref"] = "urn:openapi" + node["$ref"]
        return result
    if isinstance(node, list):
        return [_absolute(item) for item in node]
    return node


def request_schema(doc: dict[str, Any], path: str, method: str = "post") -> dict[str, Any]:
    schema: dict[str, Any] = doc["paths"][path][method]["requestBody"]["content"][
        "application/json"
    ]["schema"]
    return schema


def accepted_by_validator(version: SchemaVersion, data: dict[str, Any]) -> bool:
    try:
        validated(version, data)
    except EventValidationError:
        return False
    return True


# --- the whole document ------------------------------------------------------------------------


def test_a_document_of_everything_is_valid_openapi_3_1() -> None:
    secured = {
        "/a": SecurityDoc("api_key_header", "X-Api-Key"),
        "/b": SecurityDoc("api_key_query", "key"),
        "/c": SecurityDoc("basic"),
        "/d": SecurityDoc("hmac", "X-Hub-Signature-256"),
    }
    endpoints = [
        webhook({"customerId": "query.id"}, name=path, path=path, security=security)
        for path, security in secured.items()
    ]
    endpoints.append(
        webhook(
            {"customerId": "path.id"},
            name="e",
            path="/e/{id}",
            method="PUT",
            security=SecurityDoc("jwt"),
        )
    )
    endpoints.append(webhook({"orderId": "body.order.id"}, name="f", path="/f", event=ORDER))
    doc = document(endpoints, publish_doc(), server_url="https://bus.example.com")
    assert doc["openapi"].startswith("3.1.")
    assert doc["info"] == {**doc["info"], "title": "bus inbound API", "version": "1.2.3"}
    assert doc["servers"] == [{"url": "https://bus.example.com"}]
    assert set(doc["paths"]) >= {"/a", "/e/{id}", "/events/com.acme.orders.OrderPlaced"}
    assert len([p for p in doc["paths"] if p.startswith("/events/")]) == len(RECORDS)
    for key in doc["components"]["schemas"]:
        assert all(c.isalnum() or c in "._-" for c in key)
    # every named Avro type is a component under its full name
    assert {
        "com.acme.orders.OrderPlaced",
        "com.acme.orders.OrderLine",
        "com.acme.orders.SalesChannel",
        "com.acme.common.Money",
        "com.acme.common.Address",
        "com.acme.crm.CustomerStatus",
    } <= set(doc["components"]["schemas"])


def test_no_endpoints_make_an_empty_but_valid_document() -> None:
    doc = document([], None)
    assert doc["paths"] == {}


def test_operations_answer_with_an_event_id_or_a_problem() -> None:
    doc = document([webhook({"customerId": "body.id"})])
    operation = doc["paths"]["/hooks/stripe"]["post"]
    responses = operation["responses"]
    assert set(responses) == {"202", "400", "413", "415", "422", "503"}  # no security: no 401
    components = doc["components"]
    accepted = components["responses"]["Accepted"]["content"]["application/json"]["schema"]
    assert components["schemas"]["Accepted"]["properties"]["id"]["type"] == "string"
    assert accepted == {"$ref": "#/components/schemas/Accepted"}
    problem = components["schemas"]["Problem"]
    assert set(problem["properties"]) == {"type", "title", "status", "detail", "instance"}
    for status in ("400", "415", "503"):
        name = responses[status]["$ref"].rpartition("/")[2]
        assert set(components["responses"][name]["content"]) == {"application/problem+json"}
    assert "65536 bytes" in responses["413"]["description"]
    unavailable = components["responses"]["ServiceUnavailable"]
    assert unavailable["headers"]["Retry-After"] == {"$ref": "#/components/headers/Retry-After"}
    assert components["headers"]["Retry-After"]["schema"]["type"] == "integer"
    invalid = components["responses"]["UnprocessableContent"]["content"]
    assert invalid["application/problem+json"]["schema"]["$ref"].endswith("/ValidationProblem")
    assert operation["x-bus-topic"] == "crm.customer-changed.v1"
    assert operation["x-bus-event-type"] == "com.acme.crm.CustomerChanged"
    assert operation["operationId"] == "stripe-customer"

    # what the server sends for a 422 (bus.http.problem.Problem.body) fits the schema
    body = {
        "type": "tag:bus.dev,2026:problem:invalid-event",
        "title": "Invalid event",
        "status": 422,
        "detail": "the event does not match its schema",
        "instance": "/hooks/stripe",
        "errors": [{"field": "lines[0].quantity", "problem": "Input should be a valid integer"}],
    }
    check = validator(doc, {"$ref": "#/components/schemas/ValidationProblem"})
    assert check.is_valid(body)
    assert not check.is_valid({k: v for k, v in body.items() if k != "errors"})


def test_idempotency_key_is_documented_on_every_post() -> None:
    doc = document(
        [webhook({"customerId": "body.id"}), webhook({}, name="put", method="PUT", path="/p")],
        publish_doc([ORDER]),
    )
    ref = {"$ref": "#/components/parameters/Idempotency-Key"}
    assert ref in doc["paths"]["/hooks/stripe"]["post"]["parameters"]
    assert ref in doc["paths"]["/events/com.acme.orders.OrderPlaced"]["post"]["parameters"]
    assert ref not in doc["paths"]["/p"]["put"].get("parameters", [])
    parameter = doc["components"]["parameters"]["Idempotency-Key"]
    assert parameter["in"] == "header"
    assert parameter["required"] is False
    assert "same event id" in parameter["description"]


def test_clashing_operations_are_refused() -> None:
    with pytest.raises(ValueError, match="POST /hooks/stripe"):
        openapi_document([webhook({}), webhook({}, name="other")], None, version="1")
    with pytest.raises(ValueError, match="named 'stripe-customer'"):
        openapi_document([webhook({}), webhook({}, path="/other")], None, version="1")


# --- the publish API ---------------------------------------------------------------------------


def test_publish_body_is_exactly_the_event_schema() -> None:
    doc = document([], publish_doc([ORDER, CUSTOMER]))
    operation = doc["paths"]["/events/com.acme.orders.OrderPlaced"]["post"]
    assert request_schema(doc, "/events/com.acme.orders.OrderPlaced") == {
        "$ref": "#/components/schemas/com.acme.orders.OrderPlaced"
    }
    assert operation["x-bus-topic"] == "topic.com.acme.orders.OrderPlaced"
    assert operation["x-bus-event-type"] == "com.acme.orders.OrderPlaced"
    # the component is json_schema(version), its $defs lifted into components
    own = json_schema(ORDER)
    component = doc["components"]["schemas"]["com.acme.orders.OrderPlaced"]
    lifted = json.loads(json.dumps(component).replace("#/components/schemas/", "#/$defs/"))
    assert lifted == {k: v for k, v in own.items() if k not in ("$schema", "$defs")}
    for name, definition in own["$defs"].items():
        placed = json.dumps(doc["components"]["schemas"][name])
        assert json.loads(placed.replace("#/components/schemas/", "#/$defs/")) == definition
    # unknown fields are refused, as the validator refuses them
    assert component["additionalProperties"] is False
    assert doc["components"]["schemas"]["com.acme.common.Address"]["additionalProperties"] is False


def test_publish_paths_follow_the_prefix() -> None:
    for prefix, path in [("/events/", "/events/x"), ("api/v1", "/api/v1/x"), ("", "/x")]:
        publish = PublishDoc(prefix, {"x": (ORDER, "t")}, None, 10)
        assert list(document([], publish)["paths"]) == [path]


@pytest.mark.parametrize(("version", "data"), [(ORDER, order()), (CUSTOMER, customer())])
def test_real_events_validate_against_the_published_schema(
    version: SchemaVersion, data: dict[str, Any]
) -> None:
    doc = document([], publish_doc())
    check = validator(doc, request_schema(doc, f"/events/{version.full_name}"))
    assert accepted_by_validator(version, data)
    assert list(check.iter_errors(data)) == []
    # and the smallest event, with every default left out
    required = {key: data[key] for key in json_schema(version)["required"]}
    assert accepted_by_validator(version, required)
    assert check.is_valid(required)


def _line(**changes: Any) -> dict[str, Any]:
    line = order()["lines"][0]
    return {**line, **changes}


BAD_ORDERS = {
    "unknown field": order(coupon="SPRING"),
    "unknown nested field": order(shippingAddress={**order()["shippingAddress"], "floor": "3"}),
    "missing required": {k: v for k, v in order().items() if k != "customerId"},
    "missing nested required": order(total={"amount": "1.00"}),
    "wrong type": order(orderId=42),
    "wrong nested type": order(lines=[_line(quantity="two")]),
    "fraction for an int": order(lines=[_line(quantity=1.5)]),
    "int out of range": order(lines=[_line(quantity=2**31)]),
    "null where not nullable": order(customerId=None),
    "unknown enum symbol": order(channel="FAX"),
    "too many decimal places": order(total={"amount": "40.485", "currency": "EUR"}),
    "too many whole digits": order(total={"amount": "1" * 17, "currency": "EUR"}),
    "too large a number": order(total={"amount": 1e16, "currency": "EUR"}),
    "not a decimal": order(total={"amount": "forty", "currency": "EUR"}),
    "not a timestamp": order(placedAt="yesterday"),
    "not a list": order(lines={"sku": "A-1"}),
    "map of numbers": order(metadata={"campaign": 7}),
}


@pytest.mark.parametrize("name", BAD_ORDERS)
def test_bad_bodies_are_refused_by_the_schema_and_the_validator(name: str) -> None:
    doc = document([], publish_doc([ORDER]))
    check = validator(doc, request_schema(doc, "/events/com.acme.orders.OrderPlaced"))
    assert not accepted_by_validator(ORDER, BAD_ORDERS[name])
    assert not check.is_valid(BAD_ORDERS[name])


@pytest.mark.parametrize(
    "amount", ["12.50", "0012.5", "-3", "+7.1", ".5", "5.", "9999999999999999.99", 12, 0.1]
)
def test_decimals_the_schema_admits_are_accepted(amount: Any) -> None:
    data = order(total={"amount": amount, "currency": "EUR"})
    doc = document([], publish_doc([ORDER]))
    check = validator(doc, request_schema(doc, "/events/com.acme.orders.OrderPlaced"))
    assert check.is_valid(data)
    assert accepted_by_validator(ORDER, data)


# --- json_schema itself, over every kind of Avro type ------------------------------------------

PROBE = SchemaVersion.of(
    {
        "type": "record",
        "name": "test.Probe",
        "doc": "Every kind of type.",
        "fields": [
            {"name": "raw", "type": "bytes"},
            {"name": "hash", "type": {"type": "fixed", "name": "test.Hash", "size": 4}},
            {
                "name": "price",
                "type": {"type": "bytes", "logicalType": "decimal", "precision": 5, "scale": 2},
            },
            {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "day", "type": {"type": "int", "logicalType": "date"}},
            {"name": "clock", "type": {"type": "int", "logicalType": "time-millis"}},
            {"name": "ref", "type": {"type": "string", "logicalType": "uuid"}},
            {"name": "ratio", "type": "double"},
            {"name": "count", "type": "long"},
            {"name": "flag", "type": "boolean"},
            {
                "name": "choice",
                "type": [
                    "null",
                    "int",
                    "string",
                    {
                        "type": "record",
                        "name": "test.Inner",
                        "fields": [{"name": "a", "type": "int"}],
                    },
                ],
            },
            {
                "name": "kind",
                "type": {"type": "enum", "name": "test.Kind", "symbols": ["A", "B"], "doc": "K."},
            },
            {"name": "kind2", "type": "test.Kind", "default": "A", "doc": "Again."},
            {"name": "inner", "type": ["null", "test.Inner"], "default": None},
            {"name": "byKey", "type": {"type": "map", "values": ["null", "test.Kind"]}},
            {"name": "list", "type": {"type": "array", "items": "test.Inner"}, "default": []},
        ],
    },
    version=1,
    source="test",
)


def probe(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "raw": "hello",
        "hash": "abcd",
        "price": "123.45",
        "at": "2026-11-24T01:40:06.123+01:00",
        "day": "2026-11-24",
        "clock": "01:40:06Z",
        "ref": "12345678-1234-5678-1234-567812345678",
        "ratio": 0.5,
        "count": 2**40,
        "flag": True,
        "choice": {"a": 1},
        "kind": "B",
        "byKey": {"x": "A", "y": None},
    }
    return {**data, **changes}


def test_json_schema_says_what_each_json_value_becomes() -> None:
    schema = json_schema(PROBE)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == "test.Probe"
    assert schema["description"] == "Every kind of type."
    assert set(schema["$defs"]) == {"test.Hash", "test.Inner", "test.Kind"}
    fields = schema["properties"]
    assert fields["raw"]["type"] == "string"
    assert "format" not in fields["raw"]  # not "binary": the string's UTF-8 bytes are the value
    assert "UTF-8" in fields["raw"]["description"]
    assert schema["$defs"]["test.Hash"]["maxLength"] == 4
    assert {branch["type"] for branch in fields["price"]["anyOf"]} == {"number", "string"}
    assert fields["at"] == {**fields["at"], "type": "string", "format": "date-time"}
    assert fields["day"]["format"] == "date"
    assert fields["clock"]["format"] == "time"
    assert fields["ref"]["format"] == "uuid"
    assert fields["count"] == {**fields["count"], "type": "integer", "format": "int64"}
    assert fields["choice"]["anyOf"][-1] == {"type": "null"}
    assert {"$ref": "#/$defs/test.Inner"} in fields["choice"]["anyOf"]
    assert schema["$defs"]["test.Kind"] == {
        "title": "test.Kind",
        "description": "K.",
        "type": "string",
        "enum": ["A", "B"],
    }
    assert fields["kind2"] == {"$ref": "#/$defs/test.Kind", "default": "A", "description": "Again."}
    assert fields["byKey"]["additionalProperties"]["anyOf"][0] == {"$ref": "#/$defs/test.Kind"}
    assert fields["list"]["items"] == {"$ref": "#/$defs/test.Inner"}
    assert schema["additionalProperties"] is False
    assert "Ratio" not in json.dumps(schema)  # none of pydantic's made-up titles
    assert set(schema["required"]) == set(fields) - {"kind2", "inner", "list"}


GOOD_PROBES = [
    probe(),
    probe(choice=None, inner={"a": 2}, list=[{"a": 3}], kind2="B"),
    probe(choice=7, price=-999.99, at="2026-11-24T01:40:06Z", raw=""),
    probe(choice="text", price="0.5", hash="wxyz"),
]
BAD_PROBES = [
    probe(kind="C"),
    probe(byKey={"x": "C"}),
    probe(choice={"a": 1, "b": 2}),
    probe(choice=2**31),
    probe(price="1234.5"),
    probe(price=1000),
    probe(hash="abcde"),
    probe(count=2**63),
    probe(ratio="half"),
    probe(flag="perhaps"),
    probe(inner={"b": 1}),
    probe(extra=1),
    {k: v for k, v in probe().items() if k != "flag"},
]


@pytest.mark.parametrize("data", GOOD_PROBES)
def test_what_the_json_schema_admits_the_validator_accepts(data: dict[str, Any]) -> None:
    check = Draft202012Validator(json_schema(PROBE), format_checker=FORMATS)
    assert list(check.iter_errors(data)) == []
    assert accepted_by_validator(PROBE, data)


@pytest.mark.parametrize("data", BAD_PROBES)
def test_what_the_validator_refuses_the_json_schema_refuses(data: dict[str, Any]) -> None:
    check = Draft202012Validator(json_schema(PROBE), format_checker=FORMATS)
    assert not check.is_valid(data)
    assert not accepted_by_validator(PROBE, data)


def test_every_catalog_schema_is_a_valid_json_schema() -> None:
    for version in RECORDS:
        Draft202012Validator.check_schema(json_schema(version))


def test_json_schema_of_an_enum_is_refused() -> None:
    with pytest.raises(SchemaError, match="not a record"):
        json_schema(CATALOG.current("com.acme.crm.CustomerStatus"))


def test_two_versions_of_a_named_type_get_two_components() -> None:
    older = copy.deepcopy(ORDER.schema)
    address = older["fields"][5]["type"]
    assert address["name"] == "com.acme.common.Address"
    address["fields"] = [f for f in address["fields"] if f["name"] != "region"]
    old = SchemaVersion.of(older, version=0, source="test")  # not current
    doc = document(
        [webhook({"orderId": "body.shipping"}, name="old", event=old)], publish_doc([ORDER])
    )
    schemas = doc["components"]["schemas"]
    assert "region" in schemas["com.acme.common.Address"]["properties"]
    assert "region" not in schemas["com.acme.common.Address-2"]["properties"]
    # the types that refer to the older one are copies too, referring to it
    assert "com.acme.orders.OrderPlaced-2" in schemas
    assert schemas["com.acme.orders.OrderPlaced-2"]["properties"]["shippingAddress"] == {
        "$ref": "#/components/schemas/com.acme.common.Address-2"
    }
    # the unchanged ones are shared
    assert "com.acme.common.Money-2" not in schemas


# --- webhook bodies derived from the mapping ---------------------------------------------------

STRIPE_MAP = {
    "customerId": "body.data.object.id",
    "change": '"CREATED"',
    "email": 'has(body.data.object.email) ? body.data.object.email : ""',
    "name": "body.data.object.name",
    "phone": "body . data . object . phone",
    "status": "body.data.object.status",
    "address": "body.data.object.address",
    "changedAt": "timestamp(int(body.created) * 1000)",
}


def test_bare_body_paths_carry_the_event_field_schema() -> None:
    doc = document([webhook(STRIPE_MAP)], publish_doc([CUSTOMER]))
    body = request_schema(doc, "/hooks/stripe")
    assert body["type"] == "object"
    assert body["additionalProperties"] is True
    assert body["required"] == ["data"]
    data = body["properties"]["data"]
    assert data["required"] == ["object"]
    obj = data["properties"]["object"]
    fields = obj["properties"]
    assert fields["id"] == {"type": "string", "description": "Becomes the event's `customerId`."}
    assert fields["name"]["type"] == "string"
    assert fields["address"]["anyOf"][0] == {"$ref": "#/components/schemas/com.acme.common.Address"}
    assert fields["status"]["$ref"] == "#/components/schemas/com.acme.crm.CustomerStatus"
    assert "default" not in fields["status"]
    # required: no default and not nullable; phone and address take null, status has a default
    assert obj["required"] == ["id", "name"]
    # computed expressions read paths whose values may be anything
    assert fields["email"] == {}
    assert body["properties"]["created"] == {}


def test_the_real_stripe_payload_fits_the_derived_body() -> None:
    doc = document([webhook(STRIPE_MAP)])
    check = validator(doc, request_schema(doc, "/hooks/stripe"))
    payload = json.loads((WEBHOOKS / "stripe" / "customer.created.event.json").read_text())
    assert list(check.iter_errors(payload)) == []
    del payload["data"]["object"]["id"]
    assert not check.is_valid(payload)
    payload["data"]["object"]["id"] = 42
    assert not check.is_valid(payload)


def test_paths_in_literals_comments_and_index_keys() -> None:
    event_map = {
        "customerId": 'body["customer-id"]',
        "name": "body['person'].first + ' body.not_a_path ' + body.person[\"last name\"]",
        "email": "body.contact.email // body.commented_out",
        "changedAt": "body.when",
    }
    body = request_schema(document([webhook(event_map)]), "/hooks/stripe")
    assert set(body["properties"]) == {"customer-id", "person", "contact", "when"}
    assert body["properties"]["customer-id"]["type"] == "string"
    assert body["properties"]["person"]["properties"] == {"first": {}, "last name": {}}
    assert body["properties"]["when"]["format"] == "date-time"
    assert body["required"] == ["contact", "customer-id", "when"]


def test_a_path_both_mapped_and_read_meets_both() -> None:
    event_map = {"address": "body.address", "name": "body.address.name + body.name"}
    body = request_schema(document([webhook(event_map)]), "/hooks/stripe")
    address = body["properties"]["address"]
    assert address["allOf"][0]["anyOf"][0]["$ref"].endswith("com.acme.common.Address")
    assert address["allOf"][1] == {"type": "object", "properties": {"name": {}}}


def test_nested_event_fields_and_the_whole_body() -> None:
    event_map = {"shippingAddress": "body", "total.amount": "body.amount", "lines": "body.lines"}
    doc = document([webhook(event_map, event=ORDER)])
    body = request_schema(doc, "/hooks/stripe")
    whole, shape = body["allOf"]
    assert whole["$ref"] == "#/components/schemas/com.acme.common.Address"
    assert shape["required"] == ["amount", "lines"]
    assert {b["type"] for b in shape["properties"]["amount"]["anyOf"]} == {"number", "string"}
    assert shape["properties"]["lines"]["items"]["$ref"].endswith("com.acme.orders.OrderLine")


def test_query_header_and_path_parameters() -> None:
    event_map = {
        "customerId": "path.id",
        "email": 'query.email + headers["X-Request-Id"]',
        "name": "headers.x_name + headers['Authorization'] + headers['x-hub-signature-256']",
        "phone": "headers['idempotency-key']",
    }
    endpoint = webhook(
        event_map,
        path="/hooks/{tenant}/customers/{id:[0-9]+}",
        security=SecurityDoc("hmac", "X-Hub-Signature-256"),
    )
    doc = document([endpoint])
    assert list(doc["paths"]) == ["/hooks/{tenant}/customers/{id}"]
    parameters = doc["paths"]["/hooks/{tenant}/customers/{id}"]["post"]["parameters"]
    by_name = {(p.get("in"), p.get("name")): p for p in parameters if "name" in p}
    assert set(by_name) == {
        ("path", "tenant"),
        ("path", "id"),
        ("query", "email"),
        ("header", "X-Request-Id"),
        ("header", "x_name"),
    }  # Authorization, the signature header and Idempotency-Key are described elsewhere
    assert by_name["path", "id"]["required"] is True
    assert by_name["path", "id"]["schema"] == {"type": "string", "pattern": "^(?:[0-9]+)$"}
    assert "`customerId`" in by_name["path", "id"]["description"]
    assert by_name["path", "tenant"]["required"] is True
    assert by_name["query", "email"]["required"] is False
    assert by_name["header", "X-Request-Id"]["required"] is False
    assert all(p["schema"]["type"] == "string" for p in by_name.values())


# --- security ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("security", "key", "scheme"),
    [
        (
            SecurityDoc("api_key_header", "X-Api-Key"),
            "apiKey-X-Api-Key",
            {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
        ),
        (
            SecurityDoc("api_key_query", "api_key"),
            "apiKeyQuery-api_key",
            {"type": "apiKey", "in": "query", "name": "api_key"},
        ),
        (SecurityDoc("basic"), "basic", {"type": "http", "scheme": "basic"}),
        (
            SecurityDoc("jwt", description="Tokens from https://login.example.com."),
            "jwt",
            {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
        ),
        (
            SecurityDoc("hmac", "Stripe-Signature"),
            "hmac-Stripe-Signature",
            {"type": "apiKey", "in": "header", "name": "Stripe-Signature"},
        ),
    ],
)
def test_security_schemes(security: SecurityDoc, key: str, scheme: dict[str, Any]) -> None:
    doc = document([webhook({"customerId": "body.id"}, security=security)])
    schemes = doc["components"]["securitySchemes"]
    assert schemes[key] == {**scheme, "description": schemes[key]["description"]}
    assert security.description in schemes[key]["description"]
    if security.kind == "hmac":
        assert "HMAC signature of the raw request body" in schemes[key]["description"]
    operation = doc["paths"]["/hooks/stripe"]["post"]
    assert operation["security"] == [{key: []}]
    assert "401" in operation["responses"]
    assert ("403" in operation["responses"]) == (security.kind == "jwt")


def test_one_scheme_serves_many_operations() -> None:
    key = SecurityDoc("api_key_header", "X-Api-Key")
    doc = document(
        [webhook({}, security=key), webhook({}, name="two", path="/two", security=key)],
        publish_doc([ORDER], security=SecurityDoc("jwt")),
    )
    assert set(doc["components"]["securitySchemes"]) == {"apiKey-X-Api-Key", "jwt"}
    publish = doc["paths"]["/events/com.acme.orders.OrderPlaced"]["post"]
    assert publish["security"] == [{"jwt": []}]
    assert "403" in publish["responses"]
    assert "security" not in document([webhook({})])["paths"]["/hooks/stripe"]["post"]


def test_a_named_scheme_needs_its_name() -> None:
    with pytest.raises(ValueError, match="hmac security scheme needs the name"):
        openapi_document([webhook({}, security=SecurityDoc("hmac"))], None, version="1")


def test_credentials_are_no_parameters_of_their_own() -> None:
    event_map = {"customerId": "query.key + query.other", "name": "headers['X-Api-Key']"}
    by_query = webhook(event_map, security=SecurityDoc("api_key_query", "key"))
    parameters = document([by_query])["paths"]["/hooks/stripe"]["post"]["parameters"]
    assert [(p.get("in"), p.get("name")) for p in parameters if "name" in p] == [
        ("query", "other"),
        ("header", "X-Api-Key"),
    ]
    by_header = webhook(event_map, security=SecurityDoc("api_key_header", "x-api-key"))
    parameters = document([by_header])["paths"]["/hooks/stripe"]["post"]["parameters"]
    assert [(p.get("in"), p.get("name")) for p in parameters if "name" in p] == [
        ("query", "key"),
        ("query", "other"),
    ]
