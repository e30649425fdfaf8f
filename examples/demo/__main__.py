"""`python -m demo`: the `make run` demo (run from the repository root with PYTHONPATH=examples)."""

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path

import click
from click.decorators import FC
from rich.console import Console

from bus.config import load_settings
from bus.errors import BusError
from demo.launcher import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_NOT_VERIFIED, EXIT_OK, Launcher
from demo.settings import (
    BUS_ADMIN,
    BUS_HTTP,
    CRM,
    ERP,
    GATEWAY,
    KAFKA,
    KAFKA_CONTROLLER,
    DemoSettings,
    Ports,
    PortSpec,
)


def _port_option(spec: PortSpec) -> Callable[[FC], FC]:
    assert spec.flag is not None  # noqa: S101 -- only the demo's own ports have flags
    return click.option(
        spec.flag,
        type=click.IntRange(1, 65535),
        envvar=spec.env,
        show_envvar=True,
        help=f"Port of {spec.purpose} on 127.0.0.1 [default: {spec.default}].",
    )


@click.command(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=f"The local broker's ports are {KAFKA.env} and {KAFKA_CONTROLLER.env} "
    f"[{KAFKA.default}, {KAFKA_CONTROLLER.default}]; its state and the demo's logs live under "
    "BUS_HOME [.bus] (logs in $BUS_HOME/demo/). Ctrl-C stops the load, waits for the bus to "
    "drain and prints the summary; a second Ctrl-C skips the drain and stops everything at "
    "once (what bus run holds is not committed: its next start delivers it); a third kills "
    f"every process the demo started. Exit status: {EXIT_OK} when the run drained and no event was "
    f"lost, every dead letter was expected and bus run stopped cleanly; {EXIT_FAILED} when an "
    "event was lost, a dead letter was not expected, bus run failed, or the demo could not "
    f"run; {EXIT_NOT_VERIFIED} when the drain did not finish (its timeout, or a second Ctrl-C), "
    f"so lost is not verified; {EXIT_INTERRUPTED} when stopped before the demo "
    "had started or its processes were killed.",
)
@click.option(
    "--kafka",
    metavar="HOST:PORT[,...]",
    envvar="KAFKA_BOOTSTRAP_SERVERS",
    show_envvar=True,
    help="Use this existing Kafka instead of a local broker (nothing is started for it).",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0.1, max=500),
    default=8.0,
    show_default=True,
    envvar="DEMO_RATE",
    show_envvar=True,
    help="Inputs per second sent by the load (customers, orders, a few poison inputs).",
)
@click.option(
    "--events",
    type=click.IntRange(min=1),
    envvar="DEMO_EVENTS",
    show_envvar=True,
    help="Stop the load after this many inputs, then drain, stop and print the summary "
    "[default: run until Ctrl-C].",
)
@click.option(
    "--drain-timeout",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="Seconds to wait, after the load, for every expected delivery to be made or "
    "dead-lettered and every item to be idle.",
)
@click.option(
    "--view",
    type=click.Choice(["auto", "live", "plain", "none"]),
    default="auto",
    show_default=True,
    help="live: a board redrawn in place; plain: a progress line every few seconds; "
    "auto: live on a terminal, else plain.",
)
@click.option(
    "--summary-json",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the summary, the systems' raw ledgers, the inputs sent and the pids of "
    "every child process to this file.",
)
@click.option(
    "--free-ports",
    is_flag=True,
    help="Listen on free ports instead of the defaults, for every port not given explicitly "
    "(the local broker's too).",
)
@_port_option(BUS_HTTP)
@_port_option(BUS_ADMIN)
@_port_option(CRM)
@_port_option(ERP)
@_port_option(GATEWAY)
@click.option(
    "--faults",
    type=click.Choice(["on", "off"]),
    default="on",
    show_default=True,
    envvar="DEMO_FAULTS",
    show_envvar=True,
    help="The demo systems' injected transient failures (5xx, 429, slowness, SOAP faults).",
)
@click.option(
    "--seed",
    type=int,
    envvar="DEMO_SEED",
    show_envvar=True,
    help="Seed of the load's random choices, to repeat a run's inputs [default: random].",
)
@click.option(
    "--startup-timeout",
    type=click.FloatRange(min=1),
    default=120.0,
    show_default=True,
    help="Seconds for the demo systems and bus run to be ready (the broker has its own).",
)
def main(
    *,
    kafka: str | None,
    rate: float,
    events: int | None,
    drain_timeout: float,
    view: str,
    summary_json: Path | None,
    free_ports: bool,
    bus_port: int | None,
    admin_port: int | None,
    crm_port: int | None,
    erp_port: int | None,
    gateway_port: int | None,
    faults: str,
    seed: int | None,
    startup_timeout: float,
) -> None:
    """Run the demo: a CRM, an ERP and a payment gateway connected by the example flows
    (examples/flows/*.yaml) through `bus run`, on a local Kafka broker or yours, under a steady
    load with a few poison inputs, watched live; at the end, a summary checked against the
    systems' own records (lost must be 0)."""
    try:
        bus_settings = load_settings()
    except BusError as error:
        raise click.ClickException(str(error)) from error
    given = {
        BUS_HTTP.name: bus_port,
        BUS_ADMIN.name: admin_port,
        CRM.name: crm_port,
        ERP.name: erp_port,
        GATEWAY.name: gateway_port,
        # The broker's ports count as given when their variables are set.
        KAFKA.name: bus_settings.kafka_port if KAFKA.env in os.environ else None,
        KAFKA_CONTROLLER.name: (
            bus_settings.kafka_controller_port if KAFKA_CONTROLLER.env in os.environ else None
        ),
    }
    settings = DemoSettings(
        kafka=kafka or None,
        ports=Ports.choose(given, free=free_ports),
        bus=bus_settings,
        rate=rate,
        events=events,
        drain_timeout=drain_timeout,
        view=view,  # type: ignore[arg-type]  # click.Choice checked it
        summary_json=summary_json,
        faults=faults == "on",
        seed=seed,
        startup_timeout=startup_timeout,
    )
    console = Console(highlight=False)
    sys.exit(asyncio.run(Launcher(settings, console).run()))


if __name__ == "__main__":
    main()
