"""Self-contained schemas, their Parsing Canonical Form and CRC-64-AVRO fingerprints.

A schema file may refer to named types defined in other files. On the wire and in the schema
history, a schema must stand alone: each named type is defined where it first occurs and referred
to by full name afterwards, exactly as the Avro specification (and Java's `Schema.toString()`)
writes it, so that our fingerprints match every other Avro implementation's.
"""

from typing import Any

from fastavro.schema import fingerprint as _fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form

Schema = Any  # a JSON-shaped Avro schema: str, list or dict, as fastavro parses it

_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_FASTAVRO_KEYS = frozenset({"__fastavro_parsed", "__named_schemas"})


def self_contained(schema: Schema, named: dict[str, Schema]) -> Schema:
    """`schema` (parsed by fastavro with `named`) with every referenced named type inlined once."""
    return _inline(schema, named, set())


def _inline(schema: Schema, named: dict[str, Schema], defined: set[str]) -> Schema:
    if isinstance(schema, str):
        if schema in _PRIMITIVES or schema in defined:
            return schema
        if schema not in named:
            return schema  # fastavro already refused unknown names while parsing
        return _inline(named[schema], named, defined)
    if isinstance(schema, list):
        return [_inline(branch, named, defined) for branch in schema]
    result = {key: value for key, value in schema.items() if key not in _FASTAVRO_KEYS}
    kind = schema.get("type")
    if kind in ("record", "error", "enum", "fixed"):
        defined.add(schema["name"])
    if kind in ("record", "error"):
        result["fields"] = [
            {**field, "type": _inline(field["type"], named, defined)} for field in schema["fields"]
        ]
    elif kind == "array":
        result["items"] = _inline(schema["items"], named, defined)
    elif kind == "map":
        result["values"] = _inline(schema["values"], named, defined)
    elif isinstance(kind, dict | list):
        result["type"] = _inline(kind, named, defined)
    return result


def canonical_form(schema: Schema) -> str:
    """The Parsing Canonical Form of a self-contained schema."""
    form: str = to_parsing_canonical_form(schema)
    return form


def fingerprint(schema: Schema) -> bytes:
    """CRC-64-AVRO of the Parsing Canonical Form, as the 8 little-endian bytes that single-object
    encoding puts on the wire."""
    return bytes.fromhex(_fastavro_fingerprint(canonical_form(schema), "CRC-64-AVRO"))
