"""The `bus` command line."""

import asyncio
import json
import logging
import os
import signal
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from bus import __version__, event_loop
from bus.admin.process import dead_letter_topics
from bus.admin.top import top
from bus.cli_support import checked_flows, reachable_kafka, say, settings_for
from bus.config import BusSettings, load_settings
from bus.errors import BusError, ConfigError
from bus.events.catalog import SchemaCatalog
from bus.events.codec import EventCodec
from bus.events.compatibility import Policy, check_catalogs, load_baseline
from bus.flows.build import build_flow
from bus.flows.dlq import StoredLetter, mark_replayed, read_letter, read_letters, replay
from bus.flows.loading import load_flow_files
from bus.flows.model import FlowSet, default_dlq
from bus.flows.runtime import run_flows, select
from bus.flows.validation import flow_file_json_schema
from bus.kafka_security import PLAINTEXT
from bus.local_kafka import local_kafka_from
from bus.local_kafka.readiness import answers_metadata
from bus.telemetry.hub import Telemetry
from bus.telemetry.logs import configure_logging
from bus.telemetry.secrets import secrets_of
from bus.telemetry.trace_command import trace

log = logging.getLogger("bus.run")
EXIT_NOT_RUNNING = 3  # as LSB init scripts' `status` says "not running"


class _BusGroup(click.Group):
    """Turns every BusError into one clear line on stderr and exit status 1, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BusError as error:
            raise click.ClickException(str(error)) from error


@click.group(cls=_BusGroup)
@click.version_option(__version__, prog_name="bus")
def main() -> None:
    """bus: an enterprise service bus on Apache Kafka and Avro."""


FlowFiles = click.Path(exists=True, dir_okay=False, path_type=Path)


@main.command()
@click.argument("files", nargs=-1, required=True, type=FlowFiles)
@click.option(
    "--only",
    multiple=True,
    metavar="NAME",
    help="Run only this inbound, mediation or outbound item (repeatable).",
)
@click.option(
    "--shutdown-grace",
    default=30.0,
    show_default=True,
    help="Seconds to finish in-flight work after SIGINT/SIGTERM.",
)
def run(files: tuple[Path, ...], only: tuple[str, ...], shutdown_grace: float) -> None:
    """Run the inbound endpoints, mediation flows and outbound deliveries of FILES until
    SIGINT or SIGTERM.

    Kafka is the flow files' `kafka.bootstrap_servers`, else KAFKA_BOOTSTRAP_SERVERS, else the
    local broker (started if needed). TLS and SASL: KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_* and
    KAFKA_SSL_* (docs/operations.md); a broker refusing them stops the run at once.
    """
    settings = load_settings()
    flows, catalog = checked_flows(files, settings)
    settings = settings_for(flows, settings)
    configure_logging(flows.observability.logs, secrets_of(flows))
    event_loop.run(_run_flows(flows, catalog, settings, only, shutdown_grace), settings.event_loop)


async def _run_flows(
    flows: FlowSet,
    catalog: SchemaCatalog,
    settings: BusSettings,
    only: tuple[str, ...],
    shutdown_grace: float,
) -> None:
    stop = asyncio.Event()

    def on_signal(signum: signal.Signals) -> None:
        if stop.is_set():  # a second Ctrl-C: stop now, whatever is in flight
            log.warning("stopping at once: in-flight work is not committed")
            os._exit(130)
        # When the stop began, in the log: what was started before it is finished, not after.
        log.info(
            "%s: stopping; in-flight work gets %g s to finish (a second signal stops at once)",
            signum.name,
            shutdown_grace,
        )
        stop.set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    names = select(flows, only)
    # Build once before connecting: a flow that cannot start should say so before anything else.
    declared = {item.name: _lookup_not_started for item in flows.lookups}
    for flow in flows.mediation:
        if flow.name in names:
            build_flow(flow, catalog, EventCodec(catalog), declared)
    # Logged, not echoed: with JSON logs every line of `bus run` is one JSON object.
    bootstrap = await reachable_kafka(settings, say=log.info)
    log.info("running %s on Kafka %s; Ctrl-C stops", ", ".join(names), bootstrap)
    abandoned = await run_flows(
        flows,
        catalog,
        bootstrap_servers=bootstrap,
        only=only,
        shutdown_grace=shutdown_grace,
        stop=stop,
    )
    if abandoned:
        log.warning(
            "stopped after the %g s grace period; %s abandoned the batch in hand (not "
            "committed: it will be processed again)",
            shutdown_grace,
            ", ".join(abandoned),
        )
    else:
        log.info("stopped: in-flight work finished and committed")


async def _lookup_not_started(**_: object) -> object:
    """Stands in for a declared lookup while flows are built only to be checked."""
    raise ConfigError("lookups are not started while flows are only checked")


@main.command()
@click.argument("files", nargs=-1, required=True, type=FlowFiles)
def validate(files: tuple[Path, ...]) -> None:
    """Check flow files without connecting to anything: shape, schemas, expressions, mappings."""
    flows, _ = checked_flows(files, load_settings())
    click.echo(
        f"{len(files)} file(s) valid: {len(flows.inbound)} inbound, "
        f"{len(flows.mediation)} mediation, {len(flows.outbound)} outbound"
    )


@main.command("schema-json")
def schema_json() -> None:
    """Print the JSON Schema of a flow file, for editors."""
    click.echo(json.dumps(flow_file_json_schema(), indent=2))


@main.group()
@click.option(
    "--dir",
    "schemas_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="The schema folder [default: $BUS_SCHEMAS_DIR or ./schemas].",
)
@click.pass_context
def schemas(ctx: click.Context, schemas_dir: Path | None) -> None:
    """The canonical Avro schemas: list, release, check compatibility."""
    ctx.obj = schemas_dir or load_settings().schemas_dir


@schemas.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per schema version.")
@click.pass_obj
def list_schemas(schemas_dir: Path, as_json: bool) -> None:
    """Full names, versions and fingerprints (CRC-64-AVRO, as on the wire) of every schema."""
    catalog = SchemaCatalog.load(schemas_dir)
    if as_json:
        for version in catalog:
            click.echo(
                json.dumps(
                    {
                        "name": version.full_name,
                        "version": version.version,
                        "fingerprint": version.fingerprint_hex,
                        "current": version.current,
                        "released": version.released,
                        "source": version.source,
                    }
                )
            )
        return
    width = max((len(name) for name in catalog.names()), default=0)
    for name in catalog.names():
        versions = catalog.versions(name)
        for version in reversed(versions):
            label = name if version.current else ""
            state = (
                "older, kept for reading"
                if not version.current
                else "released"
                if version.released
                else "unreleased: run `bus schemas release`"
            )
            click.echo(
                f"{label:<{width}}  v{version.version:<3} {version.fingerprint_hex}  {state}"
            )


@schemas.command()
@click.pass_obj
def release(schemas_dir: Path) -> None:
    """Record every changed schema as a new version in <dir>/history, readable forever."""
    written = SchemaCatalog.load(schemas_dir).release()
    for path in written:
        click.echo(f"released {path}")
    if not written:
        click.echo("every schema is released already")


@schemas.command("check")
@click.option(
    "--against",
    metavar="REV_OR_DIR",
    help="A git revision or a schemas folder to compare with [default: HEAD when the schema "
    "folder has uncommitted changes, else HEAD~1].",
)
@click.pass_obj
def check_schemas(schemas_dir: Path, against: str | None) -> None:
    """Exit 1 if a schema changed incompatibly (BACKWARD unless compatibility.toml says else)."""
    reports = check_catalogs(
        SchemaCatalog.load(schemas_dir),
        load_baseline(against, schemas_dir),
        Policy.load(schemas_dir),
    )
    for report in reports:
        if report.status in ("unchanged", "new") and not report.violations:
            continue
        click.echo(f"{report.full_name}: {report.status} ({report.mode})")
        for violation in report.violations:
            click.echo(f"  {violation.line()}")
    counts = Counter(report.status for report in reports)
    click.echo(", ".join(f"{count} {status}" for status, count in sorted(counts.items())), err=True)
    if any(report.violations for report in reports):
        sys.exit(1)


@main.group()
def dlq() -> None:
    """Dead letters of a mediation flow, an outbound delivery or a poller: list, show, replay."""


def _dlq_topic(flow: str, topic: str | None, files: Sequence[Path]) -> str:
    if topic:
        return topic
    if files:
        named = dead_letter_topics(load_flow_files(files))
        if flow not in named:
            raise ConfigError(
                f"nothing named {flow!r} in {', '.join(map(str, files))}; the names are: "
                f"{', '.join(sorted(named)) or 'none'}"
            )
        return named[flow]
    return default_dlq(flow)


DlqTopic = click.option("--topic", help="The dead-letter topic [default: FLOW.dlq].")
DlqFiles = click.option(
    "--flow-file", "files", multiple=True, type=FlowFiles, help="Take the topic from this file."
)


@dlq.command("list")
@click.argument("flow")
@DlqTopic
@DlqFiles
def list_letters(flow: str, topic: str | None, files: tuple[Path, ...]) -> None:
    """One line per dead letter: where it is, when, which step failed and why."""
    letters = asyncio.run(_letters(_dlq_topic(flow, topic, files)))
    for letter in letters:
        reason = letter.reason
        if reason is None:
            click.echo(f"{letter.where}  (no bus_dlq_* headers)")
            continue
        click.echo(
            f"{letter.where}  {reason.time:%Y-%m-%d %H:%M:%S}  {reason.step}  "
            f"{reason.error_type}: {reason.error[:120]}  "
            f"(from {reason.topic}[{reason.partition}]@{reason.offset}, attempts {reason.attempts})"
        )
    click.echo(f"{len(letters)} dead letter(s)", err=True)


@dlq.command()
@click.argument("flow")
@click.argument("offset", type=int)
@click.option("--partition", default=0, show_default=True, type=int)
@DlqTopic
@DlqFiles
def show(
    flow: str, offset: int, partition: int, topic: str | None, files: tuple[Path, ...]
) -> None:
    """Everything about one dead letter: reason, headers, key and value."""
    dlq_topic = _dlq_topic(flow, topic, files)

    async def one() -> StoredLetter:
        bootstrap = await reachable_kafka(load_settings())
        return await read_letter(bootstrap, dlq_topic, partition, offset)

    letter = asyncio.run(one())
    click.echo(f"record:  {letter.where}")
    if letter.reason is not None:
        reason = letter.reason
        click.echo(f"from:    {reason.topic}[{reason.partition}]@{reason.offset}")
        click.echo(f"flow:    {reason.flow}, step {reason.step}, attempts {reason.attempts}")
        click.echo(f"time:    {reason.time.isoformat()}")
        click.echo(f"error:   {reason.error_type}: {reason.error}")
    click.echo(f"key:     {letter.key!r}")
    click.echo(f"value:   {len(letter.value)} bytes, starting {letter.value[:32].hex(' ')}")
    for name, value in letter.headers:
        click.echo(f"header:  {name}: {value.decode(errors='replace')}")


@dlq.command("replay")
@click.argument("flow")
@click.option("--offset", "offsets", multiple=True, type=int, help="Replay this letter (repeat).")
@click.option("--partition", default=0, show_default=True, type=int)
@click.option(
    "--all",
    "everything",
    is_flag=True,
    help="Replay every letter not replayed by an earlier --all (progress kept in Kafka).",
)
@DlqTopic
@DlqFiles
def replay_letters(
    *,
    flow: str,
    offsets: tuple[int, ...],
    partition: int,
    everything: bool,
    topic: str | None,
    files: tuple[Path, ...],
) -> None:
    """Send dead letters back to the topics they came from, for the flow to try again."""
    if bool(offsets) == everything:
        raise click.UsageError("give --offset N (one or more) or --all")
    dlq_topic = _dlq_topic(flow, topic, files)

    # A replay is a hop of each event's journey, recorded where the flow files say.
    flows = load_flow_files(files) if files else FlowSet()

    async def go() -> list[str]:
        bootstrap = await reachable_kafka(load_settings())
        if everything:  # only what an earlier --all did not replay yet
            chosen = await read_letters(bootstrap, dlq_topic, unreplayed=True)
        else:
            chosen = [
                await read_letter(bootstrap, dlq_topic, partition, offset) for offset in offsets
            ]
        telemetry = Telemetry.from_settings(
            flows.observability, bootstrap, secrets=secrets_of(flows)
        )
        await telemetry.start()
        try:
            sent = await replay(bootstrap, chosen, telemetry=telemetry)
        finally:
            await telemetry.close()
        if everything:
            await mark_replayed(bootstrap, chosen)
        return sent

    replayed = asyncio.run(go())
    for line in replayed:
        click.echo(f"replayed {line}")
    if not replayed:
        click.echo("nothing to replay", err=True)


async def _letters(topic: str) -> list[StoredLetter]:
    return await read_letters(await reachable_kafka(load_settings()), topic)


@main.group()
def kafka() -> None:
    """The local development broker (single-node KRaft on 127.0.0.1)."""


@kafka.command()
def fetch() -> None:
    """Fetch the pinned Apache Kafka jars from Maven Central (once; later calls are instant)."""
    distribution = local_kafka_from(load_settings()).distribution
    libs = distribution.ensure()
    click.echo(f"Apache Kafka {distribution.version} jars in {libs}")


@kafka.command()
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for readiness.")
def start(timeout: float) -> None:
    """Start the local broker and wait until it answers; print its bootstrap address."""
    broker = local_kafka_from(load_settings())
    status = asyncio.run(broker.start(ready_within=timeout))
    for note in broker.notes:
        say(note)
    say(f"local Kafka broker started (pid {status.pid}, log {status.log_file})")
    click.echo(status.bootstrap_servers)


@kafka.command()
def stop() -> None:
    """Stop the local broker that `bus kafka start` launched."""
    broker = local_kafka_from(load_settings())
    pid = broker.stop()
    click.echo(f"stopped the local Kafka broker (pid {pid})")


@kafka.command()
def status() -> None:
    """Say whether the local broker runs (exit status 0) or not (exit status 3)."""
    broker = local_kafka_from(load_settings())
    current = broker.status()
    for note in broker.notes:
        say(note)
    if not current.running:
        click.echo(f"not running (state in {broker.state_dir})")
        sys.exit(EXIT_NOT_RUNNING)
    # The local broker's client port is PLAINTEXT, whatever KAFKA_SECURITY_PROTOCOL says.
    answering = asyncio.run(answers_metadata(current.bootstrap_servers, security=PLAINTEXT))
    click.echo(
        f"running (pid {current.pid}) at {current.bootstrap_servers}"
        + ("" if answering else ", but not answering metadata requests yet")
    )


main.add_command(trace)
main.add_command(top)
