"""The schema catalog: every canonical schema in `schemas/`, and every released older version.

Layout (see docs/events.md):
- `schemas/<namespace as folders>/<Name>.avsc` holds the current version of one named type; it may
  refer to named types in other files by full name. Engineers evolve it in place.
- `schemas/history/<full name>/v<N>.avsc` holds version N exactly as it was released, self-contained
  (named types inlined), written by `bus schemas release`. Readers look writer schemas up here by
  fingerprint, so events written by an older producer stay readable after the file moved on.
"""

import difflib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import avro.errors
import avro.schema
from fastavro.schema import SchemaParseException, UnknownType, parse_schema

from bus.errors import SchemaError
from bus.events.canonical import Schema, canonical_form, fingerprint, self_contained

HISTORY_DIR = "history"
_VERSION_FILE = re.compile(r"v([1-9]\d*)\.avsc")
_NAMED_KINDS = ("record", "error", "enum", "fixed")


@dataclass(frozen=True)
class SchemaVersion:
    """One version of one named type, parsed and self-contained."""

    full_name: str
    version: int
    current: bool  # the version in the schema file, which producers write
    released: bool  # recorded in schemas/history
    schema: Schema  # self-contained JSON shape: what is released and sent to a registry
    parsed: Schema  # the same, parsed once by fastavro for the codec's hot path
    canonical_form: str
    fingerprint: bytes  # 8 bytes, little-endian CRC-64-AVRO, as on the wire
    source: str  # the file it came from, or where else it was found

    @classmethod
    def of(
        cls,
        schema: Schema,
        *,
        version: int,
        source: str,
        current: bool = False,
        released: bool = False,
    ) -> "SchemaVersion":
        """A version of a self-contained schema, parsed and fingerprinted once."""
        return cls(
            full_name=schema["name"],
            version=version,
            current=current,
            released=released,
            schema=schema,
            parsed=parse_schema(schema, named_schemas={}),
            canonical_form=canonical_form(schema),
            fingerprint=fingerprint(schema),
            source=source,
        )

    @property
    def fingerprint_hex(self) -> str:
        return self.fingerprint.hex()

    def to_json(self) -> str:
        """The self-contained schema as compact JSON text."""
        return json.dumps(self.schema, separators=(",", ":"))

    @cached_property
    def field_names(self) -> frozenset[str]:
        """The record's own field names (empty for an enum or fixed)."""
        return frozenset(field["name"] for field in self.schema.get("fields", ()))

    @cached_property
    def identity(self) -> str:
        """What makes two versions the same: everything but documentation. The fingerprint is
        not enough: the canonical form drops logical types, defaults and aliases."""
        return json.dumps(_without_docs(self.schema), sort_keys=True, separators=(",", ":"))


class SchemaCatalog:
    """Schemas by full name (current and older versions) and by fingerprint."""

    def __init__(self, versions: Iterable[SchemaVersion], root: Path) -> None:
        self.root = root
        self._versions: dict[str, list[SchemaVersion]] = {}
        self._current: dict[str, SchemaVersion] = {}
        self._by_fingerprint: dict[bytes, SchemaVersion] = {}
        for version in sorted(versions, key=lambda v: (v.full_name, v.version, v.current)):
            self._versions.setdefault(version.full_name, []).append(version)
            # Versions that differ only in what the canonical form drops (defaults, aliases)
            # share a fingerprint and read alike; the newest stands for them.
            self._by_fingerprint[version.fingerprint] = version
            if version.current:
                self._current[version.full_name] = version
        self._names = frozenset(self._current)

    @classmethod
    def load(cls, root: Path) -> "SchemaCatalog":
        """Parse every schema under `root`; any problem raises SchemaError naming the file."""
        if not root.is_dir():
            raise SchemaError(f"schema folder {root} does not exist; create it or set its path")
        released = _load_history(root / HISTORY_DIR)
        versions: list[SchemaVersion] = []
        for name, (schema, source) in _load_current(root).items():
            history = released.pop(name, [])
            current = SchemaVersion.of(schema, version=0, source=str(source), current=True)
            same = next((v for v in history if v.identity == current.identity), None)
            number = same.version if same else max((v.version for v in history), default=0) + 1
            versions.extend(v for v in history if v is not same)
            versions.append(replace(current, version=number, released=same is not None))
        # A released type whose file is gone stays readable: old events may still carry it.
        for history in released.values():
            versions.extend(history)
        return cls(versions, root)

    def names(self) -> list[str]:
        """Full names of the types that have a current schema file."""
        return sorted(self._names)

    def has_current(self, full_name: str) -> bool:
        return full_name in self._names

    def current(self, full_name: str) -> SchemaVersion:
        """The version producers write: the schema file's, released or not."""
        version = self._current.get(full_name)
        if version is None:
            close = difflib.get_close_matches(full_name, self.names(), n=3, cutoff=0.85)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise SchemaError(
                f"no schema named {full_name!r} in {self.root}{hint} "
                "(a schema's name is its namespace and name, e.g. com.acme.crm.CustomerChanged)"
            )
        return version

    def versions(self, full_name: str) -> list[SchemaVersion]:
        """Every known version of a type, by version number (released, then the current one)."""
        return list(self._versions.get(full_name, []))

    def by_fingerprint(self, value: bytes) -> SchemaVersion | None:
        return self._by_fingerprint.get(value)

    def unreleased(self) -> list[SchemaVersion]:
        return [version for version in self if not version.released]

    def release(self) -> list[Path]:
        """Write a history file for every unreleased current version; return the files."""
        written = []
        for version in self.unreleased():
            target = self.root / HISTORY_DIR / version.full_name / f"v{version.version}.avsc"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(version.schema, indent=2) + "\n")
            written.append(target)
        return written

    def __iter__(self) -> Iterator[SchemaVersion]:
        for versions in self._versions.values():
            yield from versions


def _without_docs(schema: Schema) -> Schema:
    if isinstance(schema, list):
        return [_without_docs(branch) for branch in schema]
    if isinstance(schema, dict):
        return {key: _without_docs(value) for key, value in schema.items() if key != "doc"}
    return schema


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise SchemaError(
            f"{path}:{error.lineno}:{error.colno}: not valid JSON ({error.msg})"
        ) from error
    except UnicodeDecodeError as error:
        raise SchemaError(
            f"{path}: not UTF-8 text ({error.reason} at byte {error.start})"
        ) from error
    except OSError as error:
        raise SchemaError(f"{path}: cannot be read: {error.strerror}") from error


def _strict(schema: Schema, path: Path) -> Schema:
    """fastavro is lenient; Java is not. Refuse here what other readers would refuse later,
    and arrays of zero-size items, whose element count costs nothing to forge."""
    try:
        avro.schema.parse(json.dumps(schema))
    except (avro.errors.AvroException, TypeError, ValueError) as error:
        raise SchemaError(f"{path}: not a valid Avro schema: {error}") from error
    for node in _nodes(schema):
        if isinstance(node, dict) and node.get("type") in ("array", "map"):
            inner = node["items" if node["type"] == "array" else "values"]
            if inner == "null" or (isinstance(inner, dict) and inner.get("fields") == []):
                raise SchemaError(
                    f"{path}: an {node['type']} of null or of empty records carries no data; "
                    "give its elements a type with content"
                )
        if isinstance(node, list) and not node:
            raise SchemaError(f"{path}: a union needs at least one branch")
    return schema


def _nodes(schema: Schema) -> Iterator[Schema]:
    yield schema
    if isinstance(schema, list):
        for branch in schema:
            yield from _nodes(branch)
    elif isinstance(schema, dict):
        for key in ("type", "items", "values"):
            if isinstance(schema.get(key), dict | list):
                yield from _nodes(schema[key])
        for field in schema.get("fields", ()):
            yield from _nodes(field["type"])


def _load_current(root: Path) -> dict[str, tuple[Schema, Path]]:
    """Parse the schema files in dependency order, whatever order the files come in."""
    pending: dict[Path, Any] = {
        path: _read_json(path)
        for path in sorted(root.rglob("*.avsc"))
        if path.relative_to(root).parts[0] != HISTORY_DIR
    }
    named: dict[str, Schema] = {}
    defined_in: dict[str, Path] = {}
    parsed: dict[str, tuple[Schema, Path]] = {}
    while pending:
        before = len(pending)
        unknown: dict[Path, str] = {}
        for path, raw in list(pending.items()):
            attempt = dict(named)  # fastavro registers names as it goes; keep failures out
            try:
                schema = parse_schema(raw, named_schemas=attempt)
            except UnknownType as missing:
                unknown[path] = missing.name
                continue
            except (SchemaParseException, TypeError, KeyError, ValueError) as error:
                raise SchemaError(f"{path}: not a valid Avro schema: {error}") from error
            name = _check_file_name(root, path, schema)
            # fastavro lets a later definition of a name replace an earlier one silently.
            for redefined in (n for n in named if attempt[n] is not named[n]):
                raise SchemaError(
                    f"{path}: defines {redefined} again; it is already defined in "
                    f"{defined_in[redefined]} (refer to it by name instead)"
                )
            defined_in.update((n, path) for n in attempt.keys() - named.keys())
            named = attempt
            parsed[name] = (schema, path)
            del pending[path]
        if len(pending) == before:
            problems = "; ".join(f"{path}: unknown type {name!r}" for path, name in unknown.items())
            raise SchemaError(
                f"{problems} (refer to types in other files by full name, "
                "e.g. com.acme.common.Address, and check that their files exist)"
            )
    return {
        name: (_strict(self_contained(schema, named), path), path)
        for name, (schema, path) in parsed.items()
    }


def _check_file_name(root: Path, path: Path, schema: Schema) -> str:
    if not isinstance(schema, dict) or schema.get("type") not in _NAMED_KINDS:
        raise SchemaError(
            f"{path}: a schema file holds one named type (record, enum or fixed), "
            f"not {json.dumps(schema)[:60]}"
        )
    name: str = schema["name"]
    expected = Path(*name.split(".")).with_suffix(".avsc")
    if path.relative_to(root) != expected:
        raise SchemaError(f"{path}: {name} belongs in {root / expected}; move or rename the file")
    return name


def _load_history(folder: Path) -> dict[str, list[SchemaVersion]]:
    released: dict[str, list[SchemaVersion]] = {}
    if not folder.is_dir():
        return released
    for path in sorted(folder.glob("*/*.avsc")):
        match = _VERSION_FILE.fullmatch(path.name)
        if match is None:
            raise SchemaError(f"{path}: history files are named v<N>.avsc, e.g. v1.avsc")
        try:
            schema = parse_schema(_read_json(path), named_schemas={})
        except (SchemaParseException, UnknownType, TypeError, KeyError, ValueError) as error:
            raise SchemaError(f"{path}: not a valid self-contained Avro schema: {error}") from error
        name = schema.get("name") if isinstance(schema, dict) else None
        if name != path.parent.name:
            raise SchemaError(f"{path}: holds {name}, but its folder says {path.parent.name}")
        clean = _strict(self_contained(schema, {}), path)
        number = int(match.group(1))
        released.setdefault(name, []).append(
            SchemaVersion.of(clean, version=number, source=str(path), released=True)
        )
    return released
