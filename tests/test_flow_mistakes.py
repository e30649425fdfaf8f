"""`bus run` on flow files with the common mistakes: a clear error, exit 1, nothing started.

test_flow_files.py checks each common mistake's message as the loader and the validator word it
(YAML syntax, unknown key, wrong type, unknown step, bad expression, topic missing, duplicate
names, unknown schema type, unset ${ENV}); this checks the whole command against the real broker
for one mistake of each stage: it names file, line and column, exits 1, and neither listens on
its HTTP port nor joins a consumer group.
"""

import asyncio
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from tests.conftest import free_port
from tests.flow_harness import ROOT

FLOW = """\
http:
  port: {port}
inbound:
  - name: hooks
    rest: {{path: /hooks}}
    event:
      type: com.acme.crm.CustomerChanged
      map: {{customerId: body.id, change: '"UPDATED"', email: body.email, name: body.name,
             changedAt: body.at}}
    topic: mistakes.in
mediation:
  - name: mistaken
    from: mistakes.in
    to: mistakes.out
    steps:
      - filter: event.email != ""
"""

# One of each stage that refuses a file (YAML, interpolation, the model, the validator): the
# wording of every other mistake is test_flow_files.py's, and `bus run` shares its path.
MISTAKES = [
    pytest.param(("map: {{customerId", "map: {{{{customerId"), [], id="yaml-syntax"),
    pytest.param(
        ("to: mistakes.out", "to: ${{MISTAKES_UNSET_TOPIC}}"),
        ["MISTAKES_UNSET_TOPIC"],
        id="unset-env",
    ),
    pytest.param(
        ("      - filter:", "      - filtre:"),
        ["unknown step (did you mean filter?)"],
        id="unknown-step",
    ),
    pytest.param(('!= ""', '!= "" &&'), ["steps[0].filter"], id="bad-expression"),
]


async def groups(bootstrap_servers: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        return {group[0] for group in await admin.list_consumer_groups()}
    finally:
        await admin.close()


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize(("change", "said"), MISTAKES)
async def test_a_mistaken_flow_file_is_refused_and_nothing_starts(
    tmp_path: Path, bootstrap_servers: str, change: tuple[str, str], said: list[str]
) -> None:
    port = free_port()
    before, after = (part.format(port=port) for part in change)
    text = FLOW.format(port=port)
    assert before in text
    flow = tmp_path / "flow.yaml"
    flow.write_text(text.replace(before, after, 1))
    environ = {k: v for k, v in os.environ.items() if k != "MISTAKES_UNSET_TOPIC"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bus", "run", str(flow),
        cwd=ROOT,
        env={**environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers,
             "BUS_SCHEMAS_DIR": str(ROOT / "schemas")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):
        # Polled while it runs: a mistaken run must not listen even for a moment.
        while process.returncode is None:
            assert not listening(port), "bus run listened although its flow file is wrong"
            try:
                await asyncio.wait_for(process.wait(), 0.05)
            except TimeoutError:
                continue
        _, error = await process.communicate()
    stderr = error.decode()
    assert process.returncode == 1, stderr
    assert re.search(re.escape(str(flow)) + r":\d+:\d+: ", stderr), stderr  # file:line:column
    for word in said:
        assert word in stderr, stderr
    assert "Traceback" not in stderr, stderr
    assert "bus.mistaken" not in await groups(bootstrap_servers)
