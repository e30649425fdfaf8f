"""`bus schemas list|release|check` as a user runs them."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def bus(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bus", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_list_on_the_repository() -> None:
    listed = bus("schemas", "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert len(lines) == 12  # 11 schemas, and PaymentOutcome's v1 kept for reading
    assert lines[2].split() == [
        "com.acme.crm.CustomerChanged",
        "v1",
        "9d5e84d7a97bdc19",
        "released",
    ]


def test_list_json_names_every_version() -> None:
    listed = bus("schemas", "list", "--json")
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert {row["name"] for row in rows} >= {"com.acme.orders.OrderPlaced"}
    assert all(row["released"] for row in rows)
    older = [(row["name"], row["version"]) for row in rows if not row["current"]]
    assert older == [("com.acme.payments.PaymentOutcome", 1)]
    assert all(len(row["fingerprint"]) == 16 for row in rows)


@pytest.fixture
def schemas(tmp_path: Path) -> Path:
    copy = tmp_path / "schemas"
    shutil.copytree(ROOT / "schemas", copy)
    return copy


def test_release_records_a_changed_schema_as_the_next_version(schemas: Path) -> None:
    path = schemas / "com" / "acme" / "common" / "Money.avsc"
    money = json.loads(path.read_text())
    money["fields"].append({"name": "note", "type": ["null", "string"], "default": None})
    path.write_text(json.dumps(money))

    listed = bus("schemas", "--dir", str(schemas), "list").stdout
    assert "unreleased: run `bus schemas release`" in listed
    released = bus("schemas", "--dir", str(schemas), "release")
    assert released.returncode == 0, released.stderr
    # Money changed, and so did every type that embeds it.
    assert sorted(line.split("/history/")[1] for line in released.stdout.splitlines()) == [
        "com.acme.common.Money/v2.avsc",
        "com.acme.erp.CustomerUpsertRequest/v2.avsc",
        "com.acme.erp.InvoiceCreated/v2.avsc",
        "com.acme.orders.OrderLine/v2.avsc",
        "com.acme.orders.OrderPlaced/v2.avsc",
        "com.acme.payments.PaymentOutcome/v3.avsc",
        "com.acme.payments.PaymentRequested/v2.avsc",
    ]
    history = json.loads((schemas / "history" / "com.acme.common.Money" / "v2.avsc").read_text())
    assert history["fields"][-1]["name"] == "note"
    listed = bus("schemas", "--dir", str(schemas), "list").stdout.splitlines()
    money_lines = [line for line in listed if "Money" in line or line.startswith(" ")]
    assert money_lines[0].split()[:2] == ["com.acme.common.Money", "v2"]
    assert bus("schemas", "--dir", str(schemas), "release").stdout.strip() == (
        "every schema is released already"
    )


def test_a_broken_schema_file_is_one_clear_line(schemas: Path) -> None:
    (schemas / "com" / "acme" / "crm" / "Broken.avsc").write_text('{"type": "record",\n "name": ')
    listed = bus("schemas", "--dir", str(schemas), "list")
    assert listed.returncode == 1
    assert "Broken.avsc:2:10: not valid JSON" in listed.stderr
    assert "Traceback" not in listed.stderr


def test_a_misplaced_schema_file_says_where_it_belongs(schemas: Path) -> None:
    shutil.move(
        schemas / "com" / "acme" / "common" / "Money.avsc", schemas / "com" / "acme" / "Money.avsc"
    )
    listed = bus("schemas", "--dir", str(schemas), "list")
    assert listed.returncode == 1
    assert f"com.acme.common.Money belongs in {schemas}/com/acme/common/Money.avsc" in listed.stderr


def test_an_unknown_type_reference_names_file_and_type(schemas: Path) -> None:
    (schemas / "com" / "acme" / "common" / "Address.avsc").unlink()
    listed = bus("schemas", "--dir", str(schemas), "list")
    assert listed.returncode == 1
    assert "unknown type 'com.acme.common.Address'" in listed.stderr
    assert "CustomerChanged.avsc" in listed.stderr


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


def test_check_against_the_last_commit(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "schemas", tmp_path / "schemas")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "schemas")
    git(tmp_path, "commit", "-qm", "schemas")
    path = tmp_path / "schemas" / "com" / "acme" / "orders" / "OrderLine.avsc"
    line = json.loads(path.read_text())

    line["fields"].append({"name": "giftWrap", "type": "boolean", "default": False})
    path.write_text(json.dumps(line))
    compatible = bus("schemas", "check", cwd=tmp_path)
    assert compatible.returncode == 0, compatible.stderr
    assert "com.acme.orders.OrderLine: compatible (BACKWARD)" in compatible.stdout

    line["fields"].append({"name": "warehouse", "type": "string"})
    path.write_text(json.dumps(line))
    broken = bus("schemas", "check", cwd=tmp_path)
    assert broken.returncode == 1
    assert (
        "com.acme.orders.OrderPlaced: lines[].warehouse: BACKWARD: reader field has no default"
        in broken.stdout
    )
    assert "com.acme.orders.OrderLine: warehouse: BACKWARD: reader field has no default" in (
        broken.stdout
    )
    # Against a folder instead of a revision: the repository's own schemas.
    against = bus("schemas", "check", "--against", str(ROOT / "schemas"), cwd=tmp_path)
    assert against.returncode == 1
    assert "2 incompatible" in against.stderr
