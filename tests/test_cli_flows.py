"""`bus validate` and `bus schema-json` as a user runs them."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bus(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bus", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_validate_the_examples() -> None:
    # All the files together, as `make run` runs them (a lookup and the names span the files).
    # They need no environment: each ${NAME:-default} in them defaults to the demo's value.
    files = sorted(str(path.relative_to(ROOT)) for path in (ROOT / "examples/flows").glob("*.yaml"))
    validated = bus("validate", *files)
    assert validated.returncode == 0, validated.stderr
    assert validated.stdout.strip() == "3 file(s) valid: 2 inbound, 4 mediation, 6 outbound"


def test_the_readmes_flow_example_is_valid(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"## Writing a flow.*?```yaml\n(.*?)```", readme, re.DOTALL)
    assert example is not None, "README.md: the flow example under 'Writing a flow' is gone"
    flows = tmp_path / "flows.yaml"
    flows.write_text(example.group(1))
    validated = bus(
        "validate",
        str(flows),
        CRM_WEBHOOK_SECRET="s",
        VIP_DESK_URL="https://vip.example",
        VIP_DESK_TOKEN="t",
    )
    assert validated.returncode == 0, validated.stderr
    assert validated.stdout.strip() == "1 file(s) valid: 1 inbound, 1 mediation, 1 outbound"


def test_validate_names_file_line_and_key(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "mediation:\n"
        "  - name: broken\n"
        "    from: in.v1\n"
        "    to: out.v1\n"
        "    steps:\n"
        "      - filter: event.email ==\n"
        "      - transform:\n"
        "          to: com.acme.erp.CustomerUpsert\n"
        "          map: {customerId: event.customerId}\n"
    )
    validated = bus("validate", str(broken))
    assert validated.returncode == 1
    assert f"{broken}:6:9: mediation[0].steps[0].filter: expression " in validated.stderr
    assert (
        f"{broken}:8:11: mediation[0].steps[1].transform.to: no schema named " in validated.stderr
    )
    assert "com.acme.erp.CustomerUpsertRequest" in validated.stderr  # the suggestion


def test_schema_json_describes_the_file() -> None:
    printed = bus("schema-json")
    assert printed.returncode == 0, printed.stderr
    schema = json.loads(printed.stdout)
    assert {"inbound", "mediation", "outbound"} <= set(schema["properties"])


def test_validate_refuses_a_split_that_is_not_a_field_path(tmp_path: Path) -> None:
    flow = tmp_path / "split.yaml"
    flow.write_text(
        "mediation:\n"
        "  - name: lines\n"
        "    from: orders.v1\n"
        "    to: lines.v1\n"
        "    steps:\n"
        "      - split: event.lines.filter(l, l.quantity > 0)\n"
    )
    validated = bus("validate", str(flow))
    assert validated.returncode == 1
    assert f"{flow}:6:9: mediation[0].steps[0].split: " in validated.stderr
    assert "must name an array field, e.g. event.lines" in validated.stderr


def test_run_refuses_a_flow_that_cannot_start_before_connecting(tmp_path: Path) -> None:
    flow = tmp_path / "lookup.yaml"
    flow.write_text(
        "mediation:\n"
        "  - name: enriched\n"
        "    from: in.v1\n"
        "    to: out.v1\n"
        "    steps:\n"
        "      - python: json:no_such_function\n"  # the module exists: only importing tells
    )
    ran = subprocess.run(
        [sys.executable, "-m", "bus", "run", str(flow)],
        cwd=ROOT,
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ran.returncode == 1
    assert f"{flow}:5:5: mediation flow 'enriched': module 'json' has no function" in ran.stderr
    assert "does not answer" not in ran.stderr


def test_validate_refuses_admin_auth_that_bus_run_would_refuse(tmp_path: Path) -> None:
    flow = tmp_path / "admin.yaml"
    flow.write_text(
        "observability:\n"
        "  admin:\n"
        "    port: 9180\n"
        "    auth:\n"
        "      api_key: {header: X Admin Key, keys: [admin-key-3f9c]}\n"
    )
    validated = bus("validate", str(flow))
    assert validated.returncode == 1
    assert f"{flow}:5:17: observability.admin.auth.api_key.header: " in validated.stderr
    assert "admin-key-3f9c" not in validated.stderr


def test_validate_refuses_an_admin_api_open_to_the_network(tmp_path: Path) -> None:
    flow = tmp_path / "admin.yaml"
    flow.write_text("observability:\n  admin:\n    host: 0.0.0.0\n")
    validated = bus("validate", str(flow))
    assert validated.returncode == 1
    # The missing key is placed at its parent, and named with the fix.
    assert (
        f"{flow}:2:3: observability.admin.auth: missing, while the admin API would listen on "
        "0.0.0.0, which is not a loopback address" in validated.stderr
    )
    assert "set observability.admin.auth (e.g. auth: {api_key:" in validated.stderr
    assert "or host: 127.0.0.1" in validated.stderr

    flow.write_text("observability:\n  admin:\n    host: 127.0.0.1\n")
    validated = bus("validate", str(flow))
    assert validated.returncode == 0, validated.stderr
