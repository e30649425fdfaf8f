"""Event data checked against its Avro schema, with errors that name the field path.

Each record schema becomes a pydantic model (built once per schema version), so input from JSON
or Python is checked and converted the way pydantic's lax mode does it: "12.50" becomes a Decimal
for a decimal field, an ISO 8601 string a datetime for a timestamp. Unknown fields are refused.
"""

import warnings
from collections.abc import Mapping
from datetime import date, datetime, time
from decimal import Decimal
from typing import Annotated, Any, Literal, Optional, Union
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic.json_schema import PydanticJsonSchemaWarning

from bus.errors import EventValidationError, SchemaError
from bus.events.canonical import Schema
from bus.events.catalog import SchemaCatalog, SchemaVersion
from bus.events.event import Event, new_event_id, now

_INT = Annotated[int, Field(ge=-(2**31), le=2**31 - 1)]
_LONG = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
_PRIMITIVES: dict[str, Any] = {
    "null": None,
    "boolean": bool,
    "int": _INT,
    "long": _LONG,
    "float": Annotated[float, Field(allow_inf_nan=False, ge=-3.4028235e38, le=3.4028235e38)],
    "double": Annotated[float, Field(allow_inf_nan=False)],
    "bytes": bytes,
    "string": str,
}
_LOGICAL: dict[str, Any] = {
    "timestamp-millis": datetime,
    "timestamp-micros": datetime,
    "local-timestamp-millis": datetime,
    "local-timestamp-micros": datetime,
    "date": date,
    "time-millis": time,
    "time-micros": time,
    "uuid": UUID,
}
_NAMED = ("record", "error", "enum", "fixed")
_models: dict[str, tuple[type[BaseModel], frozenset[str]]] = {}


def validated(version: SchemaVersion, data: Mapping[str, Any] | BaseModel) -> dict[str, Any]:
    """`data` checked against the schema and converted to what the Avro writer takes."""
    raw = data.model_dump(by_alias=True) if isinstance(data, BaseModel) else data
    model, names = _model(version)
    try:
        checked = model.model_validate(raw)
    except ValidationError as invalid:
        raise EventValidationError(version.full_name, _problems(invalid, names)) from invalid
    return checked.model_dump(by_alias=True)


def new_event(
    catalog: SchemaCatalog,
    event_type: str,
    data: Mapping[str, Any] | BaseModel,
    *,
    source: str,
    key: str | None = None,
    subject: str | None = None,
    event_id: str | None = None,
    time: datetime | None = None,
    extensions: Mapping[str, str] | None = None,
) -> Event:
    """An event of the current schema of `event_type`, its data checked and converted."""
    return Event(
        type=event_type,
        data=validated(catalog.current(event_type), data),
        source=source,
        id=event_id or new_event_id(),
        time=time or now(),
        subject=subject,
        key=key,
        extensions=extensions or {},
    )


def explain_invalid(version: SchemaVersion, data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Why the Avro writer refused `data`, by field path; empty if the model finds no fault."""
    model, names = _model(version)
    try:
        model.model_validate(data)
    except ValidationError as invalid:
        return _problems(invalid, names)
    return []


def json_schema(version: SchemaVersion) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12, as OpenAPI 3.1 uses) of the JSON data that
    `validated(version, data)` accepts, from the same model that checks it.

    Every Avro named type (record, enum, fixed) is a `$defs` entry under its full name, and
    docs are descriptions. The schema says what a JSON value becomes: `bytes` is a string whose
    UTF-8 encoding is the value (not base64), a decimal a number or numeric string within its
    precision and scale, a timestamp an ISO 8601 string. Unknown fields are refused
    (`additionalProperties: false`). Conversions that lax mode also makes but that no sender
    should rely on (`"12"` for an int, Unix time for a timestamp) are left out. Whatever the
    schema admits is accepted, but for two rules JSON Schema cannot state exactly, which the
    descriptions state instead: a decimal sent as a JSON number must not have more places than
    the scale, and a fixed's string must be exactly its size in UTF-8 bytes.
    """
    schema = version.schema
    if not isinstance(schema, dict) or schema.get("type") not in ("record", "error"):
        raise SchemaError(f"{version.full_name} is not a record; only records are event data")
    model, _ = _model(version)
    with warnings.catch_warnings():
        # A bytes default (code points 0-255 in Avro) has no JSON form: the schema omits it.
        warnings.simplefilter("ignore", PydanticJsonSchemaWarning)
        generated = model.model_json_schema(by_alias=True, mode="validation")
    writer = _JsonSchemaWriter(generated.get("$defs", {}))
    root = writer.record(schema, generated)
    document: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": version.full_name,
        **({"description": schema["doc"]} if schema.get("doc") else {}),
        **root,
    }
    if writer.defs:
        document["$defs"] = writer.defs
    return document


def _model(version: SchemaVersion) -> tuple[type[BaseModel], frozenset[str]]:
    """The model of a schema version, and every field name in it (to read error paths)."""
    cached = _models.get(version.identity)  # not the fingerprint: it ignores logical types
    if cached is None:
        named: dict[str, Any] = {}
        cached = (_build(version.schema, named), _field_names(version.schema))
        _models[version.identity] = cached
    return cached


def _field_names(schema: Schema) -> frozenset[str]:
    if isinstance(schema, list):
        return frozenset().union(*(_field_names(branch) for branch in schema))
    if not isinstance(schema, dict):
        return frozenset()
    names: set[str] = set()
    for field in schema.get("fields", ()):
        names.add(field["name"])
        names |= _field_names(field["type"])
    for key in ("items", "values"):
        if key in schema:
            names |= _field_names(schema[key])
    return frozenset(names)


def _build(schema: Schema, models: dict[str, Any]) -> Any:
    """The Python type for an Avro schema; `models` holds the named types seen so far."""
    if isinstance(schema, str):
        if schema in _PRIMITIVES:
            return _PRIMITIVES[schema]
        if schema in models:
            return models[schema]
        raise SchemaError(f"{schema} refers to itself; recursive schemas cannot be validated")
    if isinstance(schema, list):
        branches = [_build(branch, models) for branch in schema if branch != "null"]
        if not branches:
            return None
        joined = branches[0] if len(branches) == 1 else Union[tuple(branches)]  # noqa: UP007
        return Optional[joined] if "null" in schema else joined  # noqa: UP045
    return _build_complex(schema, models)


def _build_complex(schema: dict[str, Any], models: dict[str, Any]) -> Any:
    kind = schema["type"]
    logical = schema.get("logicalType")
    result: Any
    if logical == "decimal":
        places = schema.get("scale", 0)
        result = Annotated[
            Decimal,
            Field(max_digits=schema["precision"], decimal_places=places),
            # "12.500" has no more places than scale 2 in value, but the Avro writer refuses
            # its exponent: the same number, written at the schema's scale.
            AfterValidator(lambda value: value.quantize(Decimal(1).scaleb(-places))),
        ]
    elif logical in _LOGICAL:
        result = _LOGICAL[logical]
    elif kind in ("record", "error"):
        result = _record_model(schema, models)
    elif kind == "enum":
        result = Literal[tuple(schema["symbols"])]
    elif kind == "fixed":
        result = Annotated[bytes, Field(min_length=schema["size"], max_length=schema["size"])]
    elif kind == "array":
        result = list[_build(schema["items"], models)]  # type: ignore[misc]
    elif kind == "map":
        result = dict[str, _build(schema["values"], models)]  # type: ignore[misc]
    else:
        result = _build(kind, models)
    if kind in _NAMED and "name" in schema:  # later references by name get the same type
        models[schema["name"]] = result
    return result


def _record_model(schema: dict[str, Any], models: dict[str, Any]) -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for index, field in enumerate(schema["fields"]):
        annotation = _build(field["type"], models)
        # Aliased names, because Avro field names may clash with BaseModel's attributes.
        default = _default(field["type"], field["default"]) if "default" in field else ...
        fields[f"f{index}"] = (annotation, Field(default, alias=field["name"]))
    model: type[BaseModel] = create_model(
        schema["name"].rpartition(".")[2],
        __config__=ConfigDict(extra="forbid", validate_by_alias=True, validate_by_name=False),
        **fields,
    )
    return model


def _default(schema: Schema, value: Any) -> Any:
    """An Avro JSON default as the writer takes it: bytes defaults are strings of code points
    0-255, and a union's default belongs to its first branch."""
    if isinstance(schema, list):
        return _default(schema[0], value)
    kind = schema.get("type") if isinstance(schema, dict) else schema
    if kind in ("bytes", "fixed") and isinstance(value, str):
        raw = value.encode("latin-1")
        if isinstance(schema, dict) and schema.get("logicalType") == "decimal":
            unscaled = int.from_bytes(raw, "big", signed=True)
            return Decimal(unscaled).scaleb(-schema.get("scale", 0))
        return raw
    return value


def _problems(invalid: ValidationError, names: frozenset[str]) -> list[tuple[str, str]]:
    problems = []
    for error in invalid.errors(include_url=False):
        path = ""
        loc = error["loc"]
        for position, part in enumerate(loc):
            unknown_field = error["type"] == "extra_forbidden" and position == len(loc) - 1
            if isinstance(part, int):
                path += f"[{part}]"
            elif part in names or unknown_field:
                path += f".{part}" if path else part
            # anything else names a union branch or a map key, not a field of the input
        found = "" if error["type"] == "missing" else f" (found {error['input']!r:.60})"
        problems.append((path, f"{error['msg']}{found}"))
    return problems


_JSON_FORMATS = {"int": "int32", "long": "int64", "float": "float", "double": "double"}
_JSON_LOGICAL: dict[str, dict[str, Any]] = {
    "timestamp-millis": {
        "type": "string",
        "format": "date-time",
        "description": "ISO 8601 date and time, e.g. 2026-11-24T01:40:06.123Z (UTC when it has "
        "no offset), kept to the millisecond.",
    },
    "timestamp-micros": {
        "type": "string",
        "format": "date-time",
        "description": "ISO 8601 date and time, e.g. 2026-11-24T01:40:06.123456Z (UTC when it "
        "has no offset), kept to the microsecond.",
    },
    "local-timestamp-millis": {
        "type": "string",
        "format": "date-time",
        "description": "ISO 8601 local date and time, e.g. 2026-11-24T01:40:06.123, to the "
        "millisecond.",
    },
    "local-timestamp-micros": {
        "type": "string",
        "format": "date-time",
        "description": "ISO 8601 local date and time, e.g. 2026-11-24T01:40:06.123456, to the "
        "microsecond.",
    },
    "date": {"type": "string", "format": "date"},
    "time-millis": {"type": "string", "format": "time"},
    "time-micros": {"type": "string", "format": "time"},
    "uuid": {"type": "string", "format": "uuid"},
}


class _JsonSchemaWriter:
    """Walks an Avro schema and the JSON Schema pydantic generated from its model side by side
    (`_build` made one from the other, so they have the same shape), naming the definitions
    after the Avro types and saying what each JSON value becomes."""

    def __init__(self, generated_defs: dict[str, Any]) -> None:
        self._generated = generated_defs
        self.defs: dict[str, dict[str, Any]] = {}

    def convert(self, schema: Schema, node: dict[str, Any]) -> dict[str, Any]:
        if isinstance(schema, str):
            if schema in _PRIMITIVES:
                return _json_primitive(schema, node)
            return _json_ref(schema, node)  # a named type defined earlier in the schema
        if isinstance(schema, list):
            return self._union(schema, node)
        return self._complex(schema, node)

    def record(self, schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
        body = self._generated[node["$ref"].rpartition("/")[2]] if "$ref" in node else node
        properties: dict[str, Any] = {}
        for field in schema["fields"]:
            converted = self.convert(field["type"], body["properties"][field["name"]])
            if field.get("doc"):
                converted = _json_described(converted, field["doc"])
            properties[field["name"]] = converted
        result: dict[str, Any] = {"type": "object", "properties": properties}
        if body.get("required"):
            result["required"] = list(body["required"])
        result["additionalProperties"] = body.get("additionalProperties", True)
        return result

    def _union(self, schema: list[Any], node: dict[str, Any]) -> dict[str, Any]:
        branches = [branch for branch in schema if branch != "null"]
        nullable = len(branches) < len(schema)
        if not branches:
            return _json_plain(node)
        if len(branches) == 1 and not nullable:
            return self.convert(branches[0], node)
        options = [option for option in node.get("anyOf", [node]) if option != {"type": "null"}]
        if len(options) != len(branches):
            raise SchemaError(
                f"the union {schema} has branches that validate alike; give them distinct types"
            )
        converted = [self.convert(*pair) for pair in zip(branches, options, strict=True)]
        if nullable:
            converted.append({"type": "null"})
        return {"anyOf": converted, **_json_extras(node)}

    def _complex(self, schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
        kind = schema["type"]
        logical = schema.get("logicalType")
        result: dict[str, Any]
        if logical == "decimal":
            result = _json_decimal(schema.get("precision", 0), schema.get("scale", 0))
        elif logical in _JSON_LOGICAL:
            result = dict(_JSON_LOGICAL[logical])
        elif kind in ("record", "error"):
            result = self.record(schema, node)
        elif kind == "enum":
            result = {"type": "string", "enum": list(schema["symbols"])}
        elif kind == "fixed":
            size = schema["size"]
            result = {
                "type": "string",
                "minLength": (size + 3) // 4,
                "maxLength": size,
                "description": f"{size} bytes: a string whose UTF-8 encoding is exactly "
                f"{size} bytes long ({size} ASCII characters).",
            }
        elif kind == "array":
            result = {"type": "array", "items": self.convert(schema["items"], node["items"])}
        elif kind == "map":
            values = self.convert(schema["values"], node["additionalProperties"])
            result = {"type": "object", "additionalProperties": values}
        else:
            return self.convert(kind, node)
        if kind in _NAMED and "name" in schema:  # later references by name get the same type
            name = schema["name"]
            described = _json_described(result, schema["doc"]) if schema.get("doc") else result
            self.defs[name] = {"title": name, **described}
            return _json_ref(name, node)
        extras = _json_extras(node)
        if logical in _JSON_LOGICAL and not isinstance(extras.get("default"), str):
            extras.pop("default", None)  # an Avro default is a number: not what JSON carries
        return {**result, **extras}


def _json_primitive(kind: str, node: dict[str, Any]) -> dict[str, Any]:
    result = _json_plain(node)
    if kind == "bytes":
        result.pop("format", None)  # "binary" would say raw bytes; JSON carries text
        result["description"] = "Bytes: the UTF-8 encoding of the string (not base64)."
    elif kind in _JSON_FORMATS:
        result["format"] = _JSON_FORMATS[kind]
    return result


def _json_decimal(precision: int, scale: int) -> dict[str, Any]:
    """A number, or a string in plain notation, with at most `precision - scale` digits before
    the point and `scale` after it. A string with more places, even zeros ("12.500" for scale
    2), is refused: the Avro writer cannot store it at the schema's scale."""
    whole = precision - scale
    places = rf"(\.[0-9]{{0,{scale}}})?" if scale else r"\.?"
    return {
        "anyOf": [
            {"type": "number", "exclusiveMinimum": -(10**whole), "exclusiveMaximum": 10**whole},
            {"type": "string", "pattern": rf"^[+-]?(?=\.?[0-9])0*[0-9]{{0,{whole}}}{places}$"},
        ],
        "description": f"A decimal of at most {precision} digits, {scale} of them after the "
        'point, as a JSON number or a string such as "12.50".',
    }


def _json_ref(name: str, node: dict[str, Any]) -> dict[str, Any]:
    return {"$ref": f"#/$defs/{name}", **_json_extras(node)}


def _json_plain(node: dict[str, Any]) -> dict[str, Any]:
    """A generated node without pydantic's titles, which it makes from the aliases' spelling."""
    return {key: value for key, value in node.items() if key != "title"}


def _json_extras(node: dict[str, Any]) -> dict[str, Any]:
    return {"default": node["default"]} if "default" in node else {}


def _json_described(node: dict[str, Any], doc: str) -> dict[str, Any]:
    """`node` with `doc` first in its description, which comes right after its title if any."""
    known = node.get("description")
    text = f"{doc} {known}" if known else doc
    title = {"title": node["title"]} if "title" in node else {}
    return {**title, "description": text, **node} | {"description": text}
