"""Event data checked against its Avro schema, with errors that name the field path.

Each record schema becomes a pydantic model (built once per schema version), so input from JSON
or Python is checked and converted the way pydantic's lax mode does it: "12.50" becomes a Decimal
for a decimal field, an ISO 8601 string a datetime for a timestamp. Unknown fields are refused.
"""

from collections.abc import Mapping
from datetime import date, datetime, time
from decimal import Decimal
from typing import Annotated, Any, Literal, Optional, Union
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

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
        result = Annotated[Decimal, Field(max_digits=schema["precision"], decimal_places=places)]
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
