"""Schema compatibility against a baseline: avro's reader/writer rules, located as field paths."""

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import avro.compatibility
import avro.schema
import pytest
from fastavro.schema import parse_schema

from bus.errors import SchemaError
from bus.events.canonical import self_contained
from bus.events.catalog import SchemaCatalog, SchemaVersion
from bus.events.compatibility import (
    Mode,
    Policy,
    Report,
    Violation,
    check,
    check_catalogs,
    load_baseline,
)

AVRO_DATA = Path(__file__).parent / "data" / "avro"
NAMESPACE = "com.acme.test"
GIT = shutil.which("git")


def record(name: str, *fields: dict[str, Any], namespace: str = NAMESPACE) -> dict[str, Any]:
    return {"type": "record", "name": name, "namespace": namespace, "fields": list(fields)}


def write_schemas(folder: Path, *schemas: dict[str, Any]) -> Path:
    """Each named type in its own file, where the catalog expects it."""
    for schema in schemas:
        full_name = f"{schema['namespace']}.{schema['name']}"
        path = folder.joinpath(*full_name.split(".")).with_suffix(".avsc")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(schema, indent=2))
    return folder


def catalog(folder: Path, *schemas: dict[str, Any]) -> SchemaCatalog:
    folder.mkdir(parents=True, exist_ok=True)
    return SchemaCatalog.load(write_schemas(folder, *schemas))


def pair(
    tmp_path: Path, old: list[dict[str, Any]], new: list[dict[str, Any]]
) -> tuple[SchemaVersion, SchemaVersion]:
    """(new, old) versions of the first schema in each list; the others are what it refers to."""
    before = catalog(tmp_path / "old" / "schemas", *old)
    after = catalog(tmp_path / "new" / "schemas", *new)
    name = f"{new[0]['namespace']}.{new[0]['name']}"
    return after.current(name), before.current(name)


def avro_says_compatible(new: SchemaVersion, old: SchemaVersion, mode: Mode) -> bool:
    """The verdict of the `avro` package's checker (the specification's algorithm, as in Java)."""
    checker = avro.compatibility.ReaderWriterCompatibilityChecker()
    pairs = {
        Mode.BACKWARD: [(new, old)],
        Mode.FORWARD: [(old, new)],
        Mode.FULL: [(new, old), (old, new)],
        Mode.NONE: [],
    }[mode]
    return all(
        checker.get_compatibility(spec_parsed(reader), spec_parsed(writer)).compatibility
        is avro.compatibility.SchemaCompatibilityType.compatible
        for reader, writer in pairs
    )


def spec_parsed(version: SchemaVersion) -> avro.schema.Schema:
    """The version as avro's checker should see it. The specification (and Java's parser) reads
    a named type's alias relative to the type's namespace, but avro's Python checker compares the
    writer's full name with the aliases as written, so they are qualified here first."""
    return avro.schema.parse(json.dumps(qualified_aliases(version.schema)))


def qualified_aliases(schema: Any, namespace: str = "") -> Any:
    if isinstance(schema, list):
        return [qualified_aliases(branch, namespace) for branch in schema]
    if not isinstance(schema, dict):
        return schema
    result = dict(schema)
    if schema.get("type") in ("record", "error", "enum", "fixed"):
        name = schema["name"]
        if "." not in name:
            name = ".".join(filter(None, [schema.get("namespace", namespace), name]))
        namespace = name.rpartition(".")[0]
        if "aliases" in schema:
            result["aliases"] = [
                alias if "." in alias or not namespace else f"{namespace}.{alias}"
                for alias in schema["aliases"]
            ]
    for key in ("type", "items", "values"):
        if isinstance(schema.get(key), dict | list):
            result[key] = qualified_aliases(schema[key], namespace)
    if "fields" in schema:  # field aliases stay plain: they are names, not full names
        result["fields"] = [
            {**entry, "type": qualified_aliases(entry["type"], namespace)}
            for entry in schema["fields"]
        ]
    return result


def checked(new: SchemaVersion, old: SchemaVersion, mode: Mode) -> list[Violation]:
    """Our findings, after making sure our verdict is avro's."""
    violations = check(new, old, mode)
    assert (not violations) == avro_says_compatible(new, old, mode), violations
    return violations


def lines(new: SchemaVersion, old: SchemaVersion, mode: Mode) -> list[str]:
    return [violation.line() for violation in checked(new, old, mode)]


ORDER = f"{NAMESPACE}.Order"


# --- Fields -------------------------------------------------------------------------------------


def test_adding_a_field_with_a_default_is_compatible_both_ways(tmp_path: Path) -> None:
    new, old = pair(
        tmp_path,
        [record("Order", {"name": "id", "type": "string"})],
        [
            record(
                "Order",
                {"name": "id", "type": "string"},
                {"name": "note", "type": ["null", "string"], "default": None},
            )
        ],
    )
    for mode in Mode:
        assert checked(new, old, mode) == []


def test_adding_a_field_without_a_default_breaks_backward_only(tmp_path: Path) -> None:
    new, old = pair(
        tmp_path,
        [record("Order", {"name": "id", "type": "string"})],
        [record("Order", {"name": "id", "type": "string"}, {"name": "email", "type": "string"})],
    )
    assert checked(new, old, Mode.BACKWARD) == [
        Violation(
            ORDER,
            "email",
            "BACKWARD: reader field has no default",
            "the writer has no field 'email' and the reader gives it no default",
        )
    ]
    assert checked(new, old, Mode.FORWARD) == []
    assert lines(new, old, Mode.FULL) == [
        f"{ORDER}: email: BACKWARD: reader field has no default "
        "(the writer has no field 'email' and the reader gives it no default)"
    ]


def test_removing_a_field_without_a_default_breaks_forward_at_the_old_field(
    tmp_path: Path,
) -> None:
    # The old schema is the reader under FORWARD: the location points into it, not into the new.
    new, old = pair(
        tmp_path,
        [record("Order", {"name": "id", "type": "string"}, {"name": "legacy", "type": "int"})],
        [record("Order", {"name": "id", "type": "string"})],
    )
    assert checked(new, old, Mode.BACKWARD) == []
    assert checked(new, old, Mode.FORWARD) == [
        Violation(
            ORDER,
            "legacy",
            "FORWARD: reader field has no default",
            "the writer has no field 'legacy' and the reader gives it no default",
        )
    ]


def test_int_to_long_is_a_promotion_for_readers_of_the_new_schema_only(tmp_path: Path) -> None:
    new, old = pair(
        tmp_path,
        [record("Order", {"name": "quantity", "type": "int"})],
        [record("Order", {"name": "quantity", "type": "long"})],
    )
    assert checked(new, old, Mode.BACKWARD) == []
    assert lines(new, old, Mode.FORWARD) == [
        f"{ORDER}: quantity: FORWARD: reader type cannot read writer type "
        "(reader type: int not compatible with writer type: long)"
    ]


def test_string_to_int_breaks_both_ways(tmp_path: Path) -> None:
    new, old = pair(
        tmp_path,
        [record("Order", {"name": "id", "type": "string"})],
        [record("Order", {"name": "id", "type": "int"})],
    )
    assert lines(new, old, Mode.FULL) == [
        f"{ORDER}: id: BACKWARD: reader type cannot read writer type "
        "(reader type: int not compatible with writer type: string)",
        f"{ORDER}: id: FORWARD: reader type cannot read writer type "
        "(reader type: string not compatible with writer type: int)",
    ]
    assert checked(new, old, Mode.NONE) == []


def test_renaming_a_field_with_an_alias_keeps_backward(tmp_path: Path) -> None:
    new, old = pair(
        tmp_path,
        [record("Order", {"name": "name", "type": "string"})],
        [record("Order", {"name": "customerName", "aliases": ["name"], "type": "string"})],
    )
    assert checked(new, old, Mode.BACKWARD) == []
    # The old reader knows no alias: it misses its field "name".
    assert checked(new, old, Mode.FORWARD) == [
        Violation(
            ORDER,
            "name",
            "FORWARD: reader field has no default",
            "the writer has no field 'name' and the reader gives it no default",
        )
    ]


# --- Enums --------------------------------------------------------------------------------------


def status(*symbols: str, default: str | None = None) -> dict[str, Any]:
    enum: dict[str, Any] = {"type": "enum", "name": "Status", "symbols": list(symbols)}
    if default is not None:
        enum["default"] = default
    return record("Order", {"name": "status", "type": enum})


def test_adding_enum_symbols_breaks_forward_and_names_them(tmp_path: Path) -> None:
    new, old = pair(
        tmp_path, [status("OPEN", "SHIPPED")], [status("OPEN", "SHIPPED", "LOST", "HELD")]
    )
    assert checked(new, old, Mode.BACKWARD) == []
    assert checked(new, old, Mode.FORWARD) == [
        Violation(ORDER, "status", "FORWARD: reader enum lacks writer symbols", "HELD, LOST")
    ]


def test_adding_an_enum_symbol_is_forward_compatible_when_the_old_enum_has_a_default(
    tmp_path: Path,
) -> None:
    new, old = pair(
        tmp_path,
        [status("UNKNOWN", "OPEN", default="UNKNOWN")],
        [status("UNKNOWN", "OPEN", "LOST", default="UNKNOWN")],
    )
    assert checked(new, old, Mode.FULL) == []


# --- Nesting ------------------------------------------------------------------------------------

ADDRESS_V1 = record("Address", {"name": "city", "type": "string"}, namespace="com.acme.common")
ADDRESS_V2 = record(
    "Address",
    {"name": "city", "type": "string"},
    {"name": "postalCode", "type": "string"},
    namespace="com.acme.common",
)


def customer(**extra_fields: Any) -> dict[str, Any]:
    fields = [{"name": "id", "type": "string"}]
    fields += [{"name": name, "type": kind} for name, kind in extra_fields.items()]
    return record("Customer", *fields)


def test_a_nested_record_field_is_reported_with_its_path(tmp_path: Path) -> None:
    # Address lives in its own file, referred to by full name: the catalog inlines it.
    new, old = pair(
        tmp_path,
        [customer(address="com.acme.common.Address"), ADDRESS_V1],
        [customer(address="com.acme.common.Address"), ADDRESS_V2],
    )
    assert lines(new, old, Mode.BACKWARD) == [
        f"{NAMESPACE}.Customer: address.postalCode: BACKWARD: reader field has no default "
        "(the writer has no field 'postalCode' and the reader gives it no default)"
    ]


def test_array_items_and_map_values_appear_in_the_path(tmp_path: Path) -> None:
    def order(amount: str) -> dict[str, Any]:
        money = record("Money", {"name": "amount", "type": amount})
        line = record(
            "Line", {"name": "sku", "type": "string"}, {"name": "unitPrice", "type": money}
        )
        return record(
            "Order",
            {"name": "lines", "type": {"type": "array", "items": line}},
            {"name": "totals", "type": {"type": "map", "values": f"{NAMESPACE}.Money"}},
        )

    new, old = pair(tmp_path, [order("double")], [order("float")])
    # Money is reported wherever it is used: inside the array and as the map's values.
    assert [(v.field, v.rule) for v in checked(new, old, Mode.BACKWARD)] == [
        ("lines[].unitPrice.amount", "BACKWARD: reader type cannot read writer type"),
        ("totals{}.amount", "BACKWARD: reader type cannot read writer type"),
    ]
    new_map_only, old_map_only = pair(
        tmp_path / "map",
        [record("Order", {"name": "totals", "type": {"type": "map", "values": "double"}})],
        [record("Order", {"name": "totals", "type": {"type": "map", "values": "float"}})],
    )
    assert [v.field for v in checked(new_map_only, old_map_only, Mode.BACKWARD)] == ["totals{}"]


def test_making_a_field_optional_breaks_forward_at_that_field(tmp_path: Path) -> None:
    # avro checks each branch of the writer's union without passing the location on; the
    # finding must still land on the field, not on the root.
    new, old = pair(
        tmp_path,
        [record("Order", {"name": "id", "type": "string"}, {"name": "note", "type": "string"})],
        [
            record(
                "Order",
                {"name": "id", "type": "string"},
                {"name": "note", "type": ["null", "string"], "default": None},
            )
        ],
    )
    assert checked(new, old, Mode.BACKWARD) == []
    assert checked(new, old, Mode.FORWARD) == [
        Violation(
            ORDER,
            "note",
            "FORWARD: reader type cannot read writer type",
            "reader type: string not compatible with writer type: null",
        )
    ]


def test_widening_a_union_breaks_forward_only(tmp_path: Path) -> None:
    new, old = pair(
        tmp_path,
        [record("Order", {"name": "ref", "type": ["null", "string"]})],
        [record("Order", {"name": "ref", "type": ["null", "string", "long"]})],
    )
    assert checked(new, old, Mode.BACKWARD) == []
    assert checked(new, old, Mode.FORWARD) == [
        Violation(
            ORDER,
            "ref",
            "FORWARD: reader union lacks writer branch",
            "no branch of the reader's union reads the writer's long",
        )
    ]


def test_a_record_inside_a_union_is_reported_with_the_field_that_broke(tmp_path: Path) -> None:
    # Not "the union lacks a branch": the reader's branch of the same name says what broke.
    new, old = pair(
        tmp_path,
        [customer(billing=["null", "com.acme.common.Address"]), ADDRESS_V1],
        [customer(billing=["null", "com.acme.common.Address"]), ADDRESS_V2],
    )
    assert checked(new, old, Mode.BACKWARD) == [
        Violation(
            f"{NAMESPACE}.Customer",
            "billing.postalCode",
            "BACKWARD: reader field has no default",
            "the writer has no field 'postalCode' and the reader gives it no default",
        ),
    ]
    assert checked(new, old, Mode.FORWARD) == []


def test_a_record_made_optional_and_changed_is_explained_too(tmp_path: Path) -> None:
    new, old = pair(
        tmp_path,
        [customer(billing="com.acme.common.Address"), ADDRESS_V1],
        [customer(billing=["null", "com.acme.common.Address"]), ADDRESS_V2],
    )
    assert [(v.field, v.rule) for v in checked(new, old, Mode.BACKWARD)] == [
        ("billing.postalCode", "BACKWARD: reader field has no default"),
    ]


def test_a_shared_record_is_reported_wherever_it_is_used(tmp_path: Path) -> None:
    shared = customer(home="com.acme.common.Address", billing=["null", "com.acme.common.Address"])
    new, old = pair(tmp_path, [shared, ADDRESS_V1], [shared, ADDRESS_V2])
    assert [v.field for v in checked(new, old, Mode.BACKWARD)] == [
        "home.postalCode",
        "billing.postalCode",
    ]


def test_several_findings_keep_their_own_messages_and_locations(tmp_path: Path) -> None:
    new, old = pair(
        tmp_path,
        [record("Order", {"name": "a", "type": "int"}, {"name": "b", "type": "boolean"})],
        [
            record(
                "Order",
                {"name": "a", "type": "string"},
                {"name": "b", "type": "bytes"},
                {"name": "c", "type": "int"},
            )
        ],
    )
    assert [(v.field, v.detail) for v in checked(new, old, Mode.BACKWARD)] == [
        ("a", "reader type: string not compatible with writer type: int"),
        ("b", "reader type: bytes not compatible with writer type: boolean"),
        ("c", "the writer has no field 'c' and the reader gives it no default"),
    ]


def test_a_renamed_record_is_a_name_mismatch_at_the_root(tmp_path: Path) -> None:
    old = SchemaVersion.of(record("Order", {"name": "id", "type": "string"}), version=1, source="o")
    renamed = record("Purchase", {"name": "id", "type": "string"})
    new = SchemaVersion.of(renamed, version=2, source="n")
    assert [(v.field, v.rule) for v in checked(new, old, Mode.BACKWARD)] == [
        ("<root>", "BACKWARD: type name differs")
    ]


def parsed(schema: dict[str, Any], number: int) -> SchemaVersion:
    """A version as the catalog makes it: names qualified, aliases as written."""
    return SchemaVersion.of(
        self_contained(parse_schema(schema, named_schemas={}), {}), version=number, source="-"
    )


@pytest.mark.parametrize("alias", ["Old", f"{NAMESPACE}.Old"])
def test_a_type_alias_is_relative_to_the_types_namespace(alias: str) -> None:
    old = parsed(record("Old", {"name": "id", "type": "string"}), 1)
    new = parsed({**record("New", {"name": "id", "type": "string"}), "aliases": [alias]}, 2)
    assert checked(new, old, Mode.BACKWARD) == []
    # The old reader knows nothing of the new name.
    assert [(v.field, v.rule) for v in checked(new, old, Mode.FORWARD)] == [
        ("<root>", "FORWARD: type name differs")
    ]


def test_a_relative_alias_does_not_match_the_name_in_another_namespace() -> None:
    elsewhere = record("Old", {"name": "id", "type": "string"}, namespace="com.acme.other")
    old = parsed(elsewhere, 1)
    new = parsed({**record("New", {"name": "id", "type": "string"}), "aliases": ["Old"]}, 2)
    assert checked(new, old, Mode.BACKWARD) == [
        Violation(
            f"{NAMESPACE}.New",
            "<root>",
            "BACKWARD: type name differs",
            f"reader {NAMESPACE}.New cannot read writer com.acme.other.Old; "
            "add com.acme.other.Old to the reader's aliases",
        )
    ]


def test_a_nested_type_renamed_with_a_relative_alias_reads_its_old_name(tmp_path: Path) -> None:
    # The catalog qualifies the enum's name by the record's namespace, not its aliases.
    state = {"type": "enum", "name": "State", "aliases": ["Status"], "symbols": ["OPEN"]}
    new, old = pair(
        tmp_path, [status("OPEN")], [record("Order", {"name": "status", "type": state})]
    )
    assert new.schema["fields"][0]["type"]["name"] == f"{NAMESPACE}.State"
    assert checked(new, old, Mode.BACKWARD) == []
    assert [v.field for v in checked(new, old, Mode.FORWARD)] == ["status"]


# --- Avro's own resolution pair -----------------------------------------------------------------


def test_avro_bigrecord_reader_reads_its_writer(tmp_path: Path) -> None:
    writer = tmp_path / "writer"
    reader = tmp_path / "reader"
    for folder, source in ((writer, "bigrecord.writer.avsc"), (reader, "bigrecord_r.reader.avsc")):
        folder.mkdir()
        shutil.copy(AVRO_DATA / source, folder / "RootRecord.avsc")
    new = SchemaCatalog.load(reader).current("RootRecord")
    old = SchemaCatalog.load(writer).current("RootRecord")

    assert checked(new, old, Mode.BACKWARD) == []
    # The other way round, the writer's schema reads everything but its last field, "null",
    # which the reader's schema dropped and for which it has no default.
    assert checked(new, old, Mode.FORWARD) == [
        Violation(
            "RootRecord",
            "null",
            "FORWARD: reader field has no default",
            "the writer has no field 'null' and the reader gives it no default",
        )
    ]


# --- Policy -------------------------------------------------------------------------------------


def test_policy_without_a_file_is_backward_everywhere(tmp_path: Path) -> None:
    policy = Policy.load(tmp_path)
    assert policy == Policy()
    assert policy.mode_for("com.acme.orders.OrderPlaced") is Mode.BACKWARD


def test_policy_longest_dotted_prefix_wins(tmp_path: Path) -> None:
    (tmp_path / "compatibility.toml").write_text(
        'default = "forward"\n'
        "[namespaces]\n"
        '"com.acme.payments" = "FULL"\n'
        '"com.acme.payments.cards" = "NONE"\n'
        '"com.acme.crm.CustomerChanged" = "BACKWARD"\n'
        'com.acme.erp = "NONE"\n'  # unquoted: nested TOML tables, read as the dotted name
    )
    policy = Policy.load(tmp_path)
    assert policy.default is Mode.FORWARD
    assert policy.mode_for("com.acme.payments.PaymentOutcome") is Mode.FULL
    assert policy.mode_for("com.acme.payments.cards.CardAdded") is Mode.NONE
    assert policy.mode_for("com.acme.paymentsx.Y") is Mode.FORWARD
    assert policy.mode_for("com.acme.payments") is Mode.FULL
    assert policy.mode_for("com.acme.crm.CustomerChanged") is Mode.BACKWARD
    assert policy.mode_for("com.acme.crm.CustomerStatus") is Mode.FORWARD
    assert policy.mode_for("com.acme.erp.CustomerUpsertRequest") is Mode.NONE


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('default = "SIDEWAYS"\n', r"default = 'SIDEWAYS'.*BACKWARD, FORWARD, FULL, NONE"),
        (
            '[namespaces]\n"com.acme.x" = "BACKWARDS"\n',
            r"namespaces\.\"com\.acme\.x\" = 'BACKWARDS'.*BACKWARD, FORWARD, FULL, NONE",
        ),
        ('[namespaces]\n"com.acme.x" = 3\n', r"= 3 is not a compatibility mode"),
        ("default = \n", r"not valid TOML"),
        ('defualt = "FULL"\n', r"unknown key 'defualt'.*BACKWARD, FORWARD, FULL, NONE"),
        ('namespaces = "FULL"\n', r"namespaces must be a table"),
    ],
)
def test_policy_errors_name_the_file_key_and_allowed_values(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "compatibility.toml"
    path.write_text(text)
    with pytest.raises(SchemaError, match=expected) as raised:
        Policy.load(tmp_path)
    assert str(path) in str(raised.value)


# --- Catalogs -----------------------------------------------------------------------------------


def test_check_catalogs_reports_every_status(tmp_path: Path) -> None:
    same = record("Same", {"name": "id", "type": "string"})
    baseline = catalog(
        tmp_path / "old",
        same,
        record("Grown", {"name": "id", "type": "string"}),
        record("Broken", {"name": "id", "type": "string"}),
        record("Gone", {"name": "id", "type": "string"}),
        record("Free", {"name": "id", "type": "string"}, namespace="com.acme.lab"),
        record("Dropped", {"name": "id", "type": "string"}, namespace="com.acme.lab"),
    )
    current = catalog(
        tmp_path / "new",
        {**same, "doc": "Docs are not part of the canonical form."},
        record(
            "Grown",
            {"name": "id", "type": "string"},
            {"name": "note", "type": "string", "default": ""},
        ),
        record("Broken", {"name": "id", "type": "string"}, {"name": "more", "type": "string"}),
        record("Fresh", {"name": "id", "type": "string"}),
        record("Free", {"name": "id", "type": "int"}, namespace="com.acme.lab"),
    )
    policy = Policy(namespaces={"com.acme.lab": Mode.NONE})

    reports = check_catalogs(current, baseline, policy)

    assert [(r.full_name, r.mode, r.status, r.ok) for r in reports] == [
        ("com.acme.lab.Dropped", Mode.NONE, "removed", True),
        ("com.acme.lab.Free", Mode.NONE, "unchecked", True),
        (f"{NAMESPACE}.Broken", Mode.BACKWARD, "incompatible", False),
        (f"{NAMESPACE}.Fresh", Mode.BACKWARD, "new", True),
        (f"{NAMESPACE}.Gone", Mode.BACKWARD, "removed", False),
        (f"{NAMESPACE}.Grown", Mode.BACKWARD, "compatible", True),
        (f"{NAMESPACE}.Same", Mode.BACKWARD, "unchanged", True),
    ]
    broken = reports[2]
    assert broken.violations == (
        Violation(
            f"{NAMESPACE}.Broken",
            "more",
            "BACKWARD: reader field has no default",
            "the writer has no field 'more' and the reader gives it no default",
        ),
    )
    (gone,) = reports[4].violations
    assert (gone.field, gone.rule) == ("<root>", "BACKWARD: type removed")
    assert "Gone.avsc" in gone.detail
    assert '"com.acme.test.Gone" = "NONE"' in gone.detail


def test_report_defaults_to_no_violations() -> None:
    assert Report("a.B", Mode.FULL, "new").ok


def amount(kind: Any, **extra: Any) -> dict[str, Any]:
    return record(
        "Order", {"name": "id", "type": "string"}, {"name": "amount", "type": kind, **extra}
    )


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        (
            {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2},
            {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 4},
            ("amount", "decimal(precision=10, scale=2) became decimal(precision=10, scale=4)"),
        ),
        (
            {"type": "long", "logicalType": "timestamp-millis"},
            {"type": "long", "logicalType": "timestamp-micros"},
            ("amount", "timestamp-millis became timestamp-micros"),
        ),
        (
            {"type": "array", "items": ["null", "long"]},
            {"type": "array", "items": ["null", {"type": "long", "logicalType": "time-micros"}]},
            ("amount[]", "plain long became time-micros"),
        ),
    ],
)
@pytest.mark.parametrize("mode", [Mode.BACKWARD, Mode.FULL])
def test_a_logical_type_changed_behind_the_same_fingerprint_is_a_violation(
    tmp_path: Path, before: Any, after: Any, expected: tuple[str, str], mode: Mode
) -> None:
    field, change = expected
    baseline = catalog(tmp_path / "old", amount(before))
    current = catalog(tmp_path / "new", amount(after))
    new, old = current.current(ORDER), baseline.current(ORDER)
    assert new.fingerprint == old.fingerprint
    assert checked(new, old, mode) == []  # resolution (avro's too) ignores logical types

    (report,) = check_catalogs(current, baseline, Policy(default=mode))

    assert (report.status, len(report.violations)) == ("incompatible", 1)
    violation = report.violations[0]
    assert (violation.field, violation.rule) == (field, f"{mode}: logical type changed")
    assert violation.detail.startswith(change)
    assert "cannot tell the two versions apart" in violation.detail
    assert "add a new field (or a new type)" in violation.detail


@pytest.mark.parametrize(
    "extra",
    [{"aliases": ["total"]}, {"default": 0}, {"order": "descending"}, {"x-owner": "billing"}],
)
def test_a_change_invisible_on_the_wire_but_for_logical_types_is_compatible(
    tmp_path: Path, extra: dict[str, Any]
) -> None:
    # Not "unchanged", which would hide that the released schema differs from the file.
    baseline = catalog(tmp_path / "old", amount("int"))
    current = catalog(tmp_path / "new", amount("int", **extra))
    assert current.current(ORDER).fingerprint == baseline.current(ORDER).fingerprint
    assert checked(current.current(ORDER), baseline.current(ORDER), Mode.FULL) == []
    for mode in (Mode.BACKWARD, Mode.FULL):
        (report,) = check_catalogs(current, baseline, Policy(default=mode))
        assert (report.status, report.violations) == ("compatible", ())


class History:
    """A schemas folder whose Order is edited and released in turn, as `bus schemas release`
    does, with copies of the folder as it was, to serve as baselines."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.schemas = root / "schemas"
        self.schemas.mkdir(parents=True)

    def edit(self, *fields: dict[str, Any]) -> None:
        write_schemas(self.schemas, record("Order", *fields))

    def release(self, *fields: dict[str, Any]) -> None:
        self.edit(*fields)
        assert SchemaCatalog.load(self.schemas).release()

    def copy(self, label: str) -> SchemaCatalog:
        return SchemaCatalog.load(shutil.copytree(self.schemas, self.root / label))

    def current(self) -> SchemaCatalog:
        return SchemaCatalog.load(self.schemas)


A_INT = {"name": "a", "type": "int"}
A_STRING = {"name": "a", "type": "string", "default": ""}
FROM_V1 = Violation(
    ORDER,
    "a",
    "BACKWARD (from released v1): reader type cannot read writer type",
    "reader type: string not compatible with writer type: int",
)


@pytest.fixture
def history(tmp_path: Path) -> History:
    """v1 {a: int} and v2 {} released; each step alone is compatible both ways."""
    made = History(tmp_path)
    made.release(A_INT)
    made.release()
    return made


@pytest.mark.parametrize("mode", [Mode.BACKWARD, Mode.FULL])
def test_the_current_version_must_read_every_released_version(history: History, mode: Mode) -> None:
    baseline = history.copy("v2")
    history.edit(A_STRING)
    current = history.current()
    v1, v2, v3 = current.versions(ORDER)
    assert (v1.version, v2.version, v3.version, v3.released) == (1, 2, 3, False)
    assert checked(v3, v2, mode) == []
    assert checked(v3, v1, Mode.BACKWARD) != []

    (report,) = check_catalogs(current, baseline, Policy(default=mode))

    assert (report.status, report.violations) == ("incompatible", (FROM_V1,))
    # Released, v3 is still checked against v1.
    history.release(A_STRING)
    (report,) = check_catalogs(history.current(), baseline, Policy(default=mode))
    assert (report.status, report.violations) == ("incompatible", (FROM_V1,))


def test_an_unchanged_schema_that_cannot_read_an_older_release_is_reported(
    history: History,
) -> None:
    history.release(A_STRING)
    (report,) = check_catalogs(history.current(), history.copy("v3"), Policy())
    assert (report.status, report.violations) == ("incompatible", (FROM_V1,))


def test_released_versions_are_not_checked_under_forward_or_none(history: History) -> None:
    baseline = history.copy("v2")
    history.release(A_STRING)
    current = history.current()
    assert [r.status for r in check_catalogs(current, baseline, Policy(Mode.FORWARD))] == [
        "compatible"
    ]
    assert [r.status for r in check_catalogs(current, baseline, Policy(Mode.NONE))] == ["unchecked"]


def test_a_finding_against_the_baseline_is_not_repeated_for_the_same_release(
    tmp_path: Path,
) -> None:
    history = History(tmp_path)
    history.release(A_INT)
    baseline = history.copy("v1")
    history.edit({"name": "a", "type": "string"})
    (report,) = check_catalogs(history.current(), baseline, Policy())
    assert report.violations == (
        Violation(
            ORDER,
            "a",
            "BACKWARD: reader type cannot read writer type",
            "reader type: string not compatible with writer type: int",
        ),
    )


# --- Baselines ----------------------------------------------------------------------------------


def test_baseline_from_a_folder(tmp_path: Path) -> None:
    folder = catalog(tmp_path / "released", record("Order", {"name": "id", "type": "string"})).root
    baseline = load_baseline(str(folder), tmp_path / "elsewhere")
    assert baseline.names() == [ORDER]


needs_git = pytest.mark.skipif(GIT is None, reason="git is not installed")


def git(repo: Path, *args: str) -> str:
    assert GIT is not None
    done = subprocess.run(
        [GIT, "-c", "user.name=Test", "-c", "user.email=test@example.com", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


@pytest.fixture
def isolated_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep git from finding a repository above tmp_path, and from reading the user's config."""
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


@pytest.fixture
def repo(tmp_path: Path, isolated_git: None) -> Path:
    """A git repository holding a README, with no schemas committed yet."""
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q")
    (root / "README").write_text("hello\n")
    git(root, "add", "README")
    git(root, "commit", "-q", "-m", "start")
    return root


def version_one() -> dict[str, Any]:
    return record("Order", {"name": "id", "type": "string"})


def version_two() -> dict[str, Any]:
    return record("Order", {"name": "id", "type": "string"}, {"name": "email", "type": "string"})


@needs_git
def test_git_baseline_follows_the_working_state(repo: Path) -> None:
    schemas = repo / "schemas"
    schemas.mkdir()

    # Uncommitted schemas: compare with HEAD, which has no schemas folder yet.
    write_schemas(schemas, version_one())
    assert load_baseline(None, schemas).names() == []

    # Clean after committing them: compare with HEAD~1, which still has none.
    git(repo, "add", "schemas")
    git(repo, "commit", "-q", "-m", "v1")
    assert load_baseline(None, schemas).names() == []

    # Edited again: HEAD holds v1, which v2 breaks.
    write_schemas(schemas, version_two())
    baseline = load_baseline(None, schemas)
    assert baseline.current(ORDER).source == "HEAD:schemas/com/acme/test/Order.avsc"
    reports = check_catalogs(SchemaCatalog.load(schemas), baseline, Policy())
    assert [r.status for r in reports] == ["incompatible"]

    # Committed: HEAD~1 is v1 still.
    git(repo, "commit", "-q", "-am", "v2")
    baseline = load_baseline(None, schemas)
    assert baseline.current(ORDER).source == "HEAD~1:schemas/com/acme/test/Order.avsc"
    assert [r.status for r in check_catalogs(SchemaCatalog.load(schemas), baseline, Policy())] == [
        "incompatible"
    ]

    # An explicit revision: HEAD itself is v2.
    head = load_baseline("HEAD", schemas)
    assert check_catalogs(SchemaCatalog.load(schemas), head, Policy())[0].status == "unchanged"


@needs_git
@pytest.mark.usefixtures("isolated_git")
def test_git_baseline_without_a_previous_commit_is_empty(tmp_path: Path) -> None:
    root = tmp_path / "first"
    schemas = write_schemas(root / "schemas", version_one())
    git(root, "init", "-q")
    assert load_baseline(None, schemas).names() == []  # dirty, and no HEAD at all
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "first")
    assert load_baseline(None, schemas).names() == []  # clean, and no HEAD~1


@needs_git
def test_an_unknown_revision_says_how_to_fix_it(repo: Path) -> None:
    schemas = repo / "schemas"
    schemas.mkdir()
    with pytest.raises(SchemaError, match=r"--against 'no-such-branch' is neither.*git fetch"):
        load_baseline("no-such-branch", schemas)
    with pytest.raises(SchemaError, match="neither"):
        load_baseline("--output=/tmp/x", schemas)
    with pytest.raises(SchemaError, match=r"'no-such-branch' is not a folder, and .* not inside"):
        load_baseline("no-such-branch", repo.parent)


@pytest.mark.usefixtures("isolated_git")
def test_without_git_a_folder_is_required(tmp_path: Path) -> None:
    schemas = tmp_path / "schemas"
    schemas.mkdir()
    with pytest.raises(SchemaError, match="not inside a git repository; pass --against DIR"):
        load_baseline(None, schemas)
