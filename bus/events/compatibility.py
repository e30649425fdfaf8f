"""May the schemas as they are now replace a baseline (a git revision or a folder) safely?

The rules are the Avro specification's schema resolution (what Java's `SchemaCompatibility` and
the `avro` package's checker decide), walked here so that each finding names its field:

- BACKWARD: consumers on the new schema read events written with the old one (reader = new).
- FORWARD: consumers still on the old schema read events written with the new one (reader = old).
- FULL: both. NONE: no check.

The mode comes from `schemas/compatibility.toml`, per namespace prefix (see `Policy`).
"""

import io
import shutil
import subprocess
import tarfile
import tempfile
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from bus.errors import SchemaError
from bus.events.canonical import Schema
from bus.events.catalog import SchemaCatalog, SchemaVersion

POLICY_FILE = "compatibility.toml"
ROOT_FIELD = "<root>"


class Mode(StrEnum):
    BACKWARD = "BACKWARD"
    FORWARD = "FORWARD"
    FULL = "FULL"
    NONE = "NONE"


# The one-way checks each mode is made of, each named by the mode that checks only that way.
_DIRECTIONS: dict[Mode, tuple[Mode, ...]] = {
    Mode.BACKWARD: (Mode.BACKWARD,),
    Mode.FORWARD: (Mode.FORWARD,),
    Mode.FULL: (Mode.BACKWARD, Mode.FORWARD),
    Mode.NONE: (),
}

_ALLOWED_MODES = ", ".join(mode.value for mode in Mode)

Status = Literal["new", "unchanged", "compatible", "incompatible", "removed", "unchecked"]


@dataclass(frozen=True)
class Policy:
    """Which mode applies to which schema: the longest matching namespace prefix, else `default`.

    A prefix matches whole dotted parts: "com.acme.payments" covers com.acme.payments.Refund and
    com.acme.payments.cards.CardAdded, not com.acme.paymentsx.Y. A full name works as a prefix too.
    """

    default: Mode = Mode.BACKWARD
    namespaces: Mapping[str, Mode] = field(default_factory=dict)

    def mode_for(self, full_name: str) -> Mode:
        matches = [
            prefix
            for prefix in self.namespaces
            if full_name == prefix or full_name.startswith(prefix + ".")
        ]
        if not matches:
            return self.default
        return self.namespaces[max(matches, key=len)]

    @classmethod
    def load(cls, schemas_dir: Path) -> "Policy":
        """Read `<schemas_dir>/compatibility.toml`; without that file every schema is BACKWARD.

        The file holds `default = "BACKWARD"` and a `[namespaces]` table such as
        `"com.acme.payments" = "FULL"`.
        """
        path = schemas_dir / POLICY_FILE
        if not path.is_file():
            return cls()
        try:
            data = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise SchemaError(f"{path}: not valid TOML ({error})") from error
        unknown = sorted(set(data) - {"default", "namespaces"})
        if unknown:
            raise SchemaError(
                f'{path}: unknown key {unknown[0]!r}; the file holds `default = "BACKWARD"` '
                f"and a [namespaces] table, with modes {_ALLOWED_MODES}"
            )
        default = _parse_mode(path, "default", data.get("default", Mode.BACKWARD.value))
        table = data.get("namespaces", {})
        if not isinstance(table, dict):
            raise SchemaError(
                f"{path}: namespaces must be a table, "
                '[namespaces] then lines such as "com.acme.payments" = "FULL"'
            )
        namespaces = {
            prefix: _parse_mode(path, f'namespaces."{prefix}"', value)
            for prefix, value in _dotted(table).items()
        }
        return cls(default=default, namespaces=namespaces)


def _dotted(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The table with nested tables flattened: an unquoted `com.acme.payments = "FULL"` is TOML
    for nested tables, and means the same as the quoted key."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            flat.update(_dotted(value, name))
        else:
            flat[name] = value
    return flat


def _parse_mode(path: Path, key: str, value: object) -> Mode:
    if isinstance(value, str) and value.upper() in Mode.__members__:
        return Mode(value.upper())
    raise SchemaError(
        f"{path}: {key} = {value!r} is not a compatibility mode; use {_ALLOWED_MODES}"
    )


@dataclass(frozen=True)
class Violation:
    """One reason why a schema cannot replace its baseline."""

    schema: str  # full name of the schema checked
    field: str  # e.g. address.postalCode, lines[].unitPrice.amount, metadata{}, or <root>
    rule: str  # the direction that failed and what it needs, e.g. "BACKWARD: reader field ..."
    detail: str  # the checker's own words

    def line(self) -> str:
        return f"{self.schema}: {self.field}: {self.rule} ({self.detail})"


@dataclass(frozen=True)
class Report:
    """The verdict on one full name: `status` says what changed, `violations` what breaks."""

    full_name: str
    mode: Mode
    status: Status
    violations: tuple[Violation, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.violations


def check(new: SchemaVersion, old: SchemaVersion, mode: Mode) -> list[Violation]:
    """Why `new` cannot replace `old` under `mode`; empty when it can. Under FULL, the BACKWARD
    findings come first."""
    violations: list[Violation] = []
    for direction in _DIRECTIONS[mode]:
        reader, writer = (new, old) if direction is Mode.BACKWARD else (old, new)
        violations += _resolved(new.full_name, reader, writer, str(direction))
    return violations


def _resolved(
    name: str, reader: SchemaVersion, writer: SchemaVersion, label: str
) -> list[Violation]:
    """Why `reader` cannot read what `writer` wrote, each rule prefixed with `label`."""
    resolution = _Resolution(_named_types(reader.schema), _named_types(writer.schema))
    return [
        Violation(name, path or ROOT_FIELD, f"{label}: {rule}", detail)
        for path, rule, detail in resolution.problems(reader.schema, writer.schema, "")
    ]


def check_catalogs(current: SchemaCatalog, baseline: SchemaCatalog, policy: Policy) -> list[Report]:
    """One report per full name in either catalog, sorted by name.

    A type whose schema file is gone is "removed", and a violation unless its mode is NONE:
    events of that type may still sit in topics and consumers may still expect it, which no
    reader/writer check can vouch for. Allow a deliberate removal with NONE for its namespace
    (or its full name) in compatibility.toml.

    "unchanged" means the same schema but for docs (`SchemaVersion.identity`). Under NONE a
    changed type is "unchecked", and a removed one "removed" without a violation.

    Under BACKWARD and FULL the current version must also read every released version in the
    current catalog's history, not only the baseline: decoding resolves an old event's writer
    version straight to the current reader, so a chain of steps that are each compatible
    (drop field `a`, then add `a` again with another type) can still break old events.
    """
    now, before = set(current.names()), set(baseline.names())
    reports = []
    for name in sorted(now | before):
        mode = policy.mode_for(name)
        if name not in before:
            report = Report(name, mode, "new")
        elif name not in now:
            report = _removed(baseline.current(name), mode)
        else:
            report = _compared(current.current(name), baseline.current(name), mode)
        if name in now and Mode.BACKWARD in _DIRECTIONS[mode]:
            report = _with_history(report, current)
        reports.append(report)
    return reports


def _with_history(report: Report, catalog: SchemaCatalog) -> Report:
    """`report` plus what keeps the current version from reading older released versions.

    A finding already reported (against the baseline, or against an older release) is left out:
    when the baseline is itself one of the releases, every finding would otherwise show twice.
    """
    reader = catalog.current(report.full_name)
    seen = {
        _problem(violation)
        for violation in report.violations
        if violation.rule.startswith(f"{Mode.BACKWARD}: ")  # FORWARD's reader is another one
    }
    found: list[Violation] = []
    for writer in catalog.versions(report.full_name):
        if writer.current or not writer.released:
            continue
        label = f"{Mode.BACKWARD} (from released v{writer.version})"
        for violation in _resolved(report.full_name, reader, writer, label):
            if _problem(violation) not in seen:
                seen.add(_problem(violation))
                found.append(violation)
    if not found:
        return report
    return replace(report, status="incompatible", violations=(*report.violations, *found))


def _problem(violation: Violation) -> tuple[str, str, str]:
    """A violation without the direction or release its rule names, for telling repeats."""
    return violation.field, violation.rule.partition(": ")[2], violation.detail


def _removed(old: SchemaVersion, mode: Mode) -> Report:
    if mode is Mode.NONE:
        return Report(old.full_name, mode, "removed")
    violation = Violation(
        schema=old.full_name,
        field=ROOT_FIELD,
        rule=f"{mode}: type removed",
        detail=(
            f"{old.source} is gone, but consumers may still meet or expect the type; restore it, "
            f'or allow its removal with "{old.full_name}" = "NONE" under [namespaces] in '
            f"{POLICY_FILE}"
        ),
    )
    return Report(old.full_name, mode, "removed", (violation,))


def _compared(new: SchemaVersion, old: SchemaVersion, mode: Mode) -> Report:
    if new.identity == old.identity:
        return Report(new.full_name, mode, "unchanged")
    if mode is Mode.NONE:
        return Report(new.full_name, mode, "unchecked")
    violations = check(new, old, mode)
    if new.fingerprint == old.fingerprint:
        violations += _logical_type_changes(new, old, mode)
    status: Status = "incompatible" if violations else "compatible"
    return Report(new.full_name, mode, status, tuple(violations))


# Single-object encoding names a writer schema by its fingerprint alone, and the canonical form
# behind it drops logical types: two versions that differ only there are one version to readers.
_BINARY_AND_LOGICAL_KEYS = frozenset(
    {"type", "name", "fields", "items", "values", "symbols", "size"}
    | {"logicalType", "precision", "scale"}
)


def _logical_type_changes(new: SchemaVersion, old: SchemaVersion, mode: Mode) -> list[Violation]:
    """Where a version with the same fingerprint changed a logical type (or its parameters)."""
    change = _first_difference(_binary_and_logical(new.schema), _binary_and_logical(old.schema))
    if change is None:
        return []  # only defaults, aliases, order or other attributes: the normal check decides
    path, now, before = change
    return [
        Violation(
            new.full_name,
            path or ROOT_FIELD,
            f"{mode}: logical type changed",
            f"{_logical(before)} became {_logical(now)} without changing the fingerprint, so "
            "readers cannot tell the two versions apart and would read either one's events as "
            "the other's; add a new field (or a new type) instead of changing the logical type",
        )
    ]


def _binary_and_logical(schema: Schema) -> Schema:
    """The schema reduced to what the wire shows plus its logical types; a type left with only
    its "type" becomes that type, as the canonical form writes it."""
    if isinstance(schema, list):
        return [_binary_and_logical(branch) for branch in schema]
    if not isinstance(schema, dict):
        return schema
    reduced = {
        key: _binary_and_logical(value)
        for key, value in schema.items()
        if key in _BINARY_AND_LOGICAL_KEYS and key != "fields"
    }
    if "fields" in schema:
        reduced["fields"] = [
            {"name": entry["name"], "type": _binary_and_logical(entry["type"])}
            for entry in schema["fields"]
        ]
    return reduced["type"] if reduced.keys() == {"type"} else reduced


def _first_difference(now: Schema, before: Schema, path: str = "") -> tuple[str, Any, Any] | None:
    """The field path of the first difference, with both sides there. The fingerprints match, so
    both have the same shape and can be walked side by side."""
    if now == before:
        return None
    if isinstance(now, list) and isinstance(before, list) and len(now) == len(before):
        pairs = [(path, a, b) for a, b in zip(now, before, strict=True)]
    elif isinstance(now, dict) and isinstance(before, dict) and _own(now) == _own(before):
        pairs = [
            (where, a, b)
            for (where, a), (_, b) in zip(_inside(now, path), _inside(before, path), strict=True)
        ]
    else:
        return path, now, before
    found = (_first_difference(a, b, where) for where, a, b in pairs)
    return next((difference for difference in found if difference is not None), None)


def _inside(schema: dict[str, Any], path: str) -> list[tuple[str, Schema]]:
    """The types a type contains, each with its field path."""
    if "fields" in schema:
        return [
            (f"{path}.{entry['name']}" if path else entry["name"], entry["type"])
            for entry in schema["fields"]
        ]
    if "items" in schema:
        return [(path + "[]", schema["items"])]
    if "values" in schema:
        return [(path + "{}", schema["values"])]
    if isinstance(schema["type"], dict | list):
        return [(path, schema["type"])]
    return []


def _own(schema: dict[str, Any]) -> dict[str, Any]:
    """A type's attributes without the types it contains."""
    return {
        key: value
        for key, value in schema.items()
        if key not in ("fields", "items", "values")
        and not (key == "type" and isinstance(value, dict | list))
    } | {"fields": len(schema.get("fields", ()))}


def _logical(schema: Schema) -> str:
    """E.g. decimal(precision=10, scale=2), timestamp-millis, or "plain long"."""
    if isinstance(schema, dict) and "logicalType" in schema:
        parameters = ", ".join(
            f"{key}={schema[key]}" for key in ("precision", "scale") if key in schema
        )
        return (
            f"{schema['logicalType']}({parameters})" if parameters else str(schema["logicalType"])
        )
    return f"plain {_kind(schema)}"


# --- Avro's schema resolution rules, located as field paths ------------------------------------
#
# avro.compatibility's checker gives the same verdicts (the tests hold it as their oracle), but it
# merges its findings into one set of messages and one of locations, so it cannot say which field
# broke which rule; walking the rules here keeps each finding with its field.

_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_PROMOTIONS = {
    ("long", "int"),
    ("float", "int"),
    ("float", "long"),
    ("double", "int"),
    ("double", "long"),
    ("double", "float"),
    ("bytes", "string"),
    ("string", "bytes"),
}  # (reader, writer) pairs that the specification promotes
_NAMED_KINDS = ("record", "error", "enum", "fixed")
Problem = tuple[str, str, str]  # field path, rule, detail


class _Resolution:
    """Can a reader schema read what a writer schema wrote? Each problem with its field path."""

    def __init__(self, reader_named: dict[str, Any], writer_named: dict[str, Any]) -> None:
        self._reader_named = reader_named
        self._writer_named = writer_named
        self._open: set[tuple[str, str]] = set()  # named pairs being compared: recursion stops

    def problems(self, reader: Schema, writer: Schema, path: str) -> list[Problem]:
        reader = self._reader_named.get(reader, reader) if isinstance(reader, str) else reader
        writer = self._writer_named.get(writer, writer) if isinstance(writer, str) else writer
        if isinstance(writer, list):
            return [p for branch in writer for p in self._branch(reader, branch, path)]
        if isinstance(reader, list):
            return self._branch(reader, writer, path)
        return self._same_kind(reader, writer, path)

    def _same_kind(self, reader: Schema, writer: Schema, path: str) -> list[Problem]:
        reader_kind, writer_kind = _kind(reader), _kind(writer)
        if reader_kind != writer_kind:
            if reader_kind in _PRIMITIVES and (reader_kind, writer_kind) in _PROMOTIONS:
                return []
            return [
                (
                    path,
                    "reader type cannot read writer type",
                    f"reader type: {reader_kind} not compatible with writer type: {writer_kind}",
                )
            ]
        if reader_kind == "array":
            return self.problems(reader["items"], writer["items"], path + "[]")
        if reader_kind == "map":
            return self.problems(reader["values"], writer["values"], path + "{}")
        if reader_kind in _NAMED_KINDS:
            return self._named(reader, writer, path)
        return []

    def _branch(self, reader: Schema, writer: Schema, path: str) -> list[Problem]:
        """A writer's (branch) value read by a reader that may be a union: the first reader
        branch that reads it resolves it; if none does, the branch of the same name explains."""
        if not isinstance(reader, list):
            return self.problems(reader, writer, path)
        attempts = [self.problems(branch, writer, path) for branch in reader]
        if any(not attempt for attempt in attempts):
            return []
        writer_name = self._name(writer, self._writer_named)
        for branch, attempt in zip(reader, attempts, strict=True):
            if writer_name and self._name(branch, self._reader_named) == writer_name:
                return attempt
        kind = _kind(self._writer_named.get(writer, writer) if isinstance(writer, str) else writer)
        return [
            (
                path,
                "reader union lacks writer branch",
                f"no branch of the reader's union reads the writer's {writer_name or kind}",
            )
        ]

    def _named(self, reader: dict[str, Any], writer: dict[str, Any], path: str) -> list[Problem]:
        # As the specification and Java have it: the unqualified names match, or the writer's
        # full name is one of the reader's aliases, which are relative to the reader's namespace.
        reader_name, writer_name = _full_name(reader), _full_name(writer)
        namespace = reader_name.rpartition(".")[0]
        aliases = {
            alias if "." in alias or not namespace else f"{namespace}.{alias}"
            for alias in reader.get("aliases", ())
        }
        if (
            writer_name.rpartition(".")[2] != reader_name.rpartition(".")[2]
            and writer_name not in aliases
        ):
            return [
                (
                    path,
                    "type name differs",
                    f"reader {reader_name} cannot read writer {writer_name}; add "
                    f"{writer_name} to the reader's aliases",
                )
            ]
        pair = (reader["name"], writer["name"])
        if pair in self._open:
            return []
        self._open.add(pair)
        try:
            return self._named_body(reader, writer, path)
        finally:
            self._open.discard(pair)

    def _named_body(
        self, reader: dict[str, Any], writer: dict[str, Any], path: str
    ) -> list[Problem]:
        kind = reader["type"]
        if kind == "enum":
            missing = sorted(set(writer["symbols"]) - set(reader["symbols"]))
            if missing and "default" not in reader:
                return [(path, "reader enum lacks writer symbols", ", ".join(missing))]
            return []
        if kind == "fixed":
            if reader["size"] != writer["size"]:
                return [
                    (
                        path,
                        "fixed size differs",
                        f"reader size {reader['size']}, writer size {writer['size']}",
                    )
                ]
            return []
        written = {entry["name"]: entry for entry in writer["fields"]}
        problems: list[Problem] = []
        for entry in reader["fields"]:
            here = f"{path}.{entry['name']}" if path else entry["name"]
            match = next(
                (
                    written[name]
                    for name in (entry["name"], *entry.get("aliases", ()))
                    if name in written
                ),
                None,
            )
            if match is not None:
                problems += self.problems(entry["type"], match["type"], here)
            elif "default" not in entry:
                problems.append(
                    (
                        here,
                        "reader field has no default",
                        f"the writer has no field {entry['name']!r} and the reader "
                        "gives it no default",
                    )
                )
        return problems

    @staticmethod
    def _name(schema: Schema, named: dict[str, Any]) -> str | None:
        schema = named.get(schema, schema) if isinstance(schema, str) else schema
        return schema.get("name") if isinstance(schema, dict) else None


def _full_name(schema: dict[str, Any]) -> str:
    """A named type's full name: the catalog's schemas carry it in "name" already."""
    name: str = schema["name"]
    namespace = schema.get("namespace")
    return f"{namespace}.{name}" if namespace and "." not in name else name


def _kind(schema: Schema) -> str:
    if isinstance(schema, str):
        return schema
    kind = schema["type"]
    return _kind(kind) if isinstance(kind, dict | list) else str(kind)


def _named_types(schema: Schema) -> dict[str, Any]:
    """Named types by full name, as defined where they first occur in a self-contained schema."""
    named: dict[str, Any] = {}
    pending = [schema]
    while pending:
        node = pending.pop()
        if isinstance(node, list):
            pending.extend(node)
        elif isinstance(node, dict):
            if node.get("type") in _NAMED_KINDS:
                named.setdefault(node["name"], node)
            pending.extend(node[key] for key in ("type", "items", "values") if key in node)
            pending.extend(node.get("fields", []))
    return named


# --- The baseline -------------------------------------------------------------------------------


def load_baseline(against: str | None, schemas_dir: Path) -> SchemaCatalog:
    """The catalog to compare with: `against` is a schemas folder or a git revision.

    Without `against`: HEAD's schemas when the folder has uncommitted changes (the usual case
    while editing), else HEAD~1's (checking the last commit, as CI does). A revision that lacks
    the folder, or an implicit one that does not exist (a first commit, a shallow clone), gives an
    empty baseline, in which every schema is new. A folder of that name wins over a revision.
    """
    if against is not None and Path(against).is_dir():
        return SchemaCatalog.load(Path(against))
    git = _Git.find(schemas_dir, against)
    folder = schemas_dir.resolve().relative_to(git.root).as_posix()
    if against is None:
        revision = "HEAD" if git.has_changes(folder) else "HEAD~1"
        commit = git.commit(revision)
        if commit is None:
            return SchemaCatalog([], Path(_label(revision, folder)))
    else:
        revision = against
        commit = git.commit(revision)
        if commit is None:
            raise SchemaError(
                f"--against {against!r} is neither a folder nor a git revision of {git.root}; "
                "pass a schemas folder, or a commit, branch or tag that exists here "
                "(git fetch it first, or deepen a shallow clone with git fetch --deepen)"
            )
    return git.catalog_at(commit, folder, _label(revision, folder))


def _label(revision: str, folder: str) -> str:
    """How the baseline's files are named in messages: git's own `<revision>:<path>` syntax."""
    return f"{revision}:{folder}" if folder != "." else f"{revision}:"


@dataclass(frozen=True)
class _Git:
    executable: str
    root: Path

    @classmethod
    def find(cls, schemas_dir: Path, against: str | None) -> "_Git":
        how = "pass --against DIR, a folder holding the schemas to compare with"
        if not schemas_dir.is_dir():
            raise SchemaError(f"schema folder {schemas_dir} does not exist; create it or set it")
        executable = shutil.which("git")
        if executable is None:
            raise SchemaError(f"git is not installed, so no git baseline can be read; {how}")
        found = subprocess.run(
            [executable, "rev-parse", "--show-toplevel"],
            cwd=schemas_dir,
            capture_output=True,
            text=True,
            check=False,
        )
        if found.returncode != 0:
            given = f"--against {against!r} is not a folder, and " if against else ""
            raise SchemaError(f"{given}{schemas_dir} is not inside a git repository; {how}")
        return cls(executable, Path(found.stdout.strip()).resolve())

    def run(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        # --literal-pathspecs: a folder named like "schemas[v2]" is a path, not a pattern
        return subprocess.run(
            [self.executable, "--literal-pathspecs", *args],
            cwd=self.root,
            capture_output=True,
            check=False,
        )

    def checked(self, *args: str) -> bytes:
        done = self.run(*args)
        if done.returncode != 0:
            error = done.stderr.decode(errors="replace").strip()
            raise SchemaError(f"git {' '.join(args)} failed in {self.root}: {error}")
        return done.stdout

    def has_changes(self, folder: str) -> bool:
        return bool(self.checked("status", "--porcelain", "--untracked-files=all", "--", folder))

    def commit(self, revision: str) -> str | None:
        # --end-of-options: a revision given as "--something" must not become an option
        done = self.run(
            "rev-parse", "--verify", "--quiet", "--end-of-options", f"{revision}^{{commit}}"
        )
        return done.stdout.decode().strip() if done.returncode == 0 else None

    def catalog_at(self, commit: str, folder: str, label: str) -> SchemaCatalog:
        if not self.checked("ls-tree", "--name-only", commit, "--", folder).strip():
            return SchemaCatalog([], Path(label))
        archive = self.checked("archive", "--format=tar", commit, "--", folder)
        with tempfile.TemporaryDirectory(prefix="bus-baseline-") as temporary:
            with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
                tar.extractall(temporary, filter="data")
            extracted = Path(temporary) / folder
            try:
                catalog = SchemaCatalog.load(extracted)
            except SchemaError as error:
                raise SchemaError(str(error).replace(str(extracted), label)) from error
            return _relabelled(catalog, extracted, label)


def _relabelled(catalog: SchemaCatalog, extracted: Path, label: str) -> SchemaCatalog:
    """The catalog with its sources named `<revision>:<path>`, not by the deleted extraction."""
    separator = "" if label.endswith(":") else "/"

    def source(version: SchemaVersion) -> str:
        inside = Path(version.source).relative_to(extracted).as_posix()
        return f"{label}{separator}{inside}"

    return SchemaCatalog(
        [replace(version, source=source(version)) for version in catalog], Path(label)
    )
