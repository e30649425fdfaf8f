"""A third-party adapter, installed as a real package: examples/adapters/bus-jsonl.

uv builds and installs it into a folder of its own (about a second; uv fetches the build
backend, hatchling, from PyPI once and caches it), and bus finds it as it finds any adapter,
through its `bus.adapters` entry point: `bus validate` and `bus run` run as processes with that
folder on PYTHONPATH, `bus run` against the session's Kafka broker.
"""

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bus.events.event import Event
from bus.events.publisher import Publisher
from bus.flows.dead_letters import DeadLetter
from tests.flow_harness import CATALOG, bus_run_process, read_records, write_flow

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "examples" / "adapters" / "bus-jsonl"
EXAMPLE = PACKAGE / "example.yaml"
ADAPTER = PACKAGE / "src" / "bus_jsonl" / "adapter.py"
UV = ROOT / ".tools" / "bin" / "uv"  # what `make setup` installs


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the installed package: its code and its dist-info (entry points)."""
    uv = str(UV) if UV.exists() else shutil.which("uv")
    if uv is None:
        pytest.fail(f"uv is needed to install {PACKAGE.name}; run `make setup`")
    target = tmp_path_factory.mktemp("site")
    # --refresh-package: built afresh from the working tree, never a wheel cached from before.
    command = [uv, "pip", "install", "--quiet", "--no-deps", "--refresh-package", "bus-jsonl"]
    command += ["--python", sys.executable, "--target", str(target), str(PACKAGE)]
    installed = subprocess.run(
        command,
        env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr
    assert (target / "bus_jsonl" / "adapter.py").exists()
    return target


def python_path(site: Path) -> str:
    return os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))


def bus_validate(*files: Path, site: Path | None) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "BUS_SCHEMAS_DIR": str(ROOT / "schemas")}
    if site is not None:
        environ["PYTHONPATH"] = python_path(site)
    return subprocess.run(
        [sys.executable, "-m", "bus", "validate", *map(str, files)],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_bus_validate_finds_the_adapter_by_its_entry_point(site: Path) -> None:
    valid = bus_validate(EXAMPLE, site=site)
    assert valid.returncode == 0, valid.stderr
    assert "1 file(s) valid: 0 inbound, 0 mediation, 1 outbound" in valid.stdout
    # Found through the site folder: this venv does not have it, unless someone installed it
    # there as the package's README shows (without either: "no adapter named 'jsonl' ...").


def test_bus_validate_reports_bad_settings_with_file_and_line(site: Path, tmp_path: Path) -> None:
    bad = write_flow(
        tmp_path,
        """\
outbound:
  - name: misspelt
    from: t
    jsonl: {paht: out.jsonl}
  - name: wrong-name
    from: t
    jsonl:
      path: "out/{evnt.change}.jsonl"
  - name: unclosed
    from: t
    jsonl: {path: "out/{event.change.jsonl"}
    map: {status: response.status}
  - name: number-path
    from: t
    jsonl: {path: 42}
""",
    )
    found = bus_validate(bad, site=site)
    assert found.returncode == 1
    lines = found.stderr.splitlines()[1:]  # after "Error: flow files have a problem:"
    expected = [
        (4, "outbound[0].jsonl.paht: unknown key (did you mean path?)"),
        (4, "outbound[0].jsonl.path: required key is missing"),
        (8, "outbound[1].jsonl.path: expression 'evnt.change' does not compile: unknown name"),
        (11, "outbound[2].jsonl.path: a { without its }"),
        (12, "outbound[2].map.status: expression 'response.status' does not compile"),
        (15, "outbound[3].jsonl.path: expected a valid string, found 42"),
    ]
    for line, words in expected:
        assert any(
            problem.startswith(f"{bad}:{line}:") and words in problem for problem in lines
        ), (line, words, lines)


def customer(number: int, change: str) -> dict[str, Any]:
    return {
        "customerId": f"c-{number}",
        "change": change,
        "email": f"c-{number}@example.com",
        "name": "Ada Lovelace",
        "changedAt": "2026-11-24T01:40:06.123Z",
    }


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def until(done: Callable[[], bool], within: float = 30.0) -> None:
    async with asyncio.timeout(within):
        while not done():  # noqa: ASYNC110 -- another process writes the files
            await asyncio.sleep(0.1)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
async def test_bus_run_appends_each_event_once_and_dead_letters_what_cannot_be_written(
    site: Path,
    bootstrap_servers: str,
    topic_name: Callable[[str], str],
    create_topics: Callable[..., Awaitable[None]],
    tmp_path: Path,
) -> None:
    topic = topic_name("changes")
    await create_topics(topic)
    run = uuid.uuid4().hex[:8]
    archive, full = f"jsonl-archive-{run}", f"jsonl-full-{run}"
    out = tmp_path / "archive"
    (out / "DELETED.jsonl").mkdir(parents=True)  # a folder where the file should be
    flow = write_flow(
        tmp_path,
        f"""
outbound:
  - name: {archive}
    from: {topic}
    jsonl: {{path: "{out}/{{event.change}}.jsonl"}}
  - name: {full}
    from: {topic}
    jsonl: {{path: /dev/full}}   # every write fails: No space left on device
""",
    )
    changes = [(1, "UPDATED"), (2, "CREATED"), (3, "UPDATED"), (4, "DELETED"), (1, "UPDATED")]
    async with bus_run_process(
        flow,
        tmp_path / "bus.log",
        KAFKA_BOOTSTRAP_SERVERS=bootstrap_servers,
        PYTHONPATH=python_path(site),
    ):
        async with Publisher(bootstrap_servers, CATALOG, source="/test/crm") as publisher:
            sent = [
                await publisher.publish(
                    topic, "com.acme.crm.CustomerChanged", customer(n, change), key=f"c-{n}"
                )
                for n, change in changes
            ]
        await until(
            lambda: (
                len(read_lines(out / "UPDATED.jsonl")) + len(read_lines(out / "CREATED.jsonl")) >= 4
            )
        )
        archive_letters = await read_records(bootstrap_servers, f"{archive}.dlq", 1)
        full_letters = await read_records(bootstrap_servers, f"{full}.dlq", len(sent))
    # bus run stopped cleanly, having committed: what is in the files now is all there is.

    def line(event: Event) -> dict[str, Any]:
        return {
            "id": event.id,
            "type": "com.acme.crm.CustomerChanged",
            "key": event.key,
            "time": event.time.isoformat() if event.time else None,
            "data": {
                **customer(int(str(event.key)[2:]), str(event.data["change"])),
                "changedAt": "2026-11-24T01:40:06.123000+00:00",
                "phone": None,
                "status": "ACTIVE",
                "address": None,
                "tags": [],
                "attributes": {},
            },
        }

    updated = read_lines(out / "UPDATED.jsonl")
    assert sorted(updated, key=lambda x: x["id"]) == sorted(
        (line(e) for e in sent if e.data["change"] == "UPDATED"), key=lambda x: x["id"]
    )
    # one key's events in their order
    assert [x["id"] for x in updated if x["key"] == "c-1"] == [sent[0].id, sent[4].id]
    assert read_lines(out / "CREATED.jsonl") == [line(sent[1])]

    (letter,) = [DeadLetter.from_headers(record.headers) for record in archive_letters]
    assert letter is not None
    assert archive_letters[0].key == b"c-4"
    assert letter.error_type == "PermanentDeliveryError"
    assert f"cannot append to {out}/DELETED.jsonl: Is a directory (EISDIR)" in letter.error
    assert letter.attempts == 1  # permanent: not retried

    assert sorted(record.key for record in full_letters) == sorted(
        str(e.key).encode() for e in sent
    )
    for record in full_letters:
        letter = DeadLetter.from_headers(record.headers)
        assert letter is not None
        assert letter.flow == full
        assert letter.error_type == "PermanentDeliveryError"
        assert "cannot append to /dev/full: No space left on device (ENOSPC)" in letter.error
        assert letter.attempts == 1


def blocks(markdown: Path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", markdown.read_text(), re.DOTALL)


def test_the_docs_quote_the_code_as_it_is() -> None:
    """What docs/adapters/writing.md and the package's README quote is the code itself."""
    guide = ROOT / "docs" / "adapters" / "writing.md"
    quoted = {
        "class Adapter(Protocol):": ROOT / "bus" / "plugins.py",
        "class AdapterRuntime(Protocol):": ROOT / "bus" / "plugins.py",
        "class Delivery(Protocol):": ROOT / "bus" / "delivery" / "contract.py",
        "class JsonlSettings(Block):": ADAPTER,
        "def check_outbound(": ADAPTER,
        "async def call(": ADAPTER,
        "adapter: Adapter = ": ADAPTER,
    }
    checked = 0
    for block in blocks(guide, "python"):
        source = next((path for start, path in quoted.items() if block.startswith(start)), None)
        if source is not None:
            text = source.read_text()
            assert block in text or textwrap.indent(block, "    ") in text, block
            checked += 1
    assert checked == len(quoted)
    pyprojects = (ROOT / "pyproject.toml").read_text() + (PACKAGE / "pyproject.toml").read_text()
    for block in blocks(guide, "toml"):
        assert block in pyprojects, block
    (example,) = blocks(PACKAGE / "README.md", "yaml")
    assert example in EXAMPLE.read_text()
