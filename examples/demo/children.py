"""The two children the launcher starts, as a user would start them: the demo systems
(`python -m demo.systems`) and `bus run examples/flows/*.yaml`, sharing this run's secrets."""

import os
import secrets
import sys
from collections.abc import Mapping

from demo.processes import Child
from demo.settings import REPO, DemoSettings

SYSTEMS_READY = "demo systems ready"  # the line `python -m demo.systems` prints when it listens
BUS_SHUTDOWN_GRACE = 20.0  # `bus run --shutdown-grace`
FLOW_FILES = sorted((REPO / "examples" / "flows").glob("*.yaml"))


def run_secrets() -> dict[str, str]:
    """Fresh secrets for every run, given to the systems and to the bus alike: nothing the
    demo uses is a password written down somewhere."""
    return {
        "CRM_WEBHOOK_SECRET": secrets.token_urlsafe(24),
        "CRM_API_TOKEN": secrets.token_urlsafe(24),
        "ERP_PASSWORD": secrets.token_urlsafe(18),
        "GATEWAY_CLIENT_ID": "bus",
        "GATEWAY_CLIENT_SECRET": secrets.token_urlsafe(24),
    }


def start_systems(settings: DemoSettings, shared: Mapping[str, str], seed: int) -> Child:
    env = (
        _inherited()
        | dict(shared)
        | {
            "PYTHONPATH": str(REPO / "examples"),
            "PYTHONUNBUFFERED": "1",  # the ready line must reach the log at once
            "DEMO_FAULTS": "on" if settings.faults else "off",
            "DEMO_SEED": str(seed),  # the systems' injected faults are repeatable too
        }
    )
    ports = settings.ports
    command = [sys.executable, "-m", "demo.systems", "--bus-url", settings.bus_url]
    command += ["--crm-port", str(ports.crm), "--erp-port", str(ports.erp)]
    command += ["--gateway-port", str(ports.gateway)]
    return Child.start(
        "the demo systems",
        command,
        log=settings.log_dir / "systems.log",
        env=env,
        cwd=REPO,
    )


def start_bus(settings: DemoSettings, shared: Mapping[str, str], bootstrap: str) -> Child:
    # The variables examples/flows/*.yaml read.
    env = (
        _inherited()
        | dict(shared)
        | {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "BUS_SCHEMAS_DIR": str(REPO / "schemas"),
            "BUS_HTTP_PORT": str(settings.ports.bus_http),
            "BUS_ADMIN_PORT": str(settings.ports.bus_admin),
            "CRM_URL": settings.crm_url,
            "ERP_URL": f"{settings.erp_url}/erp",
            "GATEWAY_URL": settings.gateway_url,
        }
    )
    return Child.start(
        "bus run",
        [
            *_bus_command(),
            "run",
            "--shutdown-grace",
            f"{BUS_SHUTDOWN_GRACE:g}",
            *map(str, FLOW_FILES),
        ],
        log=settings.log_dir / "bus-run.log",
        env=env,
        cwd=REPO,
    )


def _inherited() -> dict[str, str]:
    """The launcher's environment, but for what the demo sets itself."""
    return {
        name: value
        for name, value in os.environ.items()
        if name not in ("KAFKA_BOOTSTRAP_SERVERS", "PYTHONPATH")
    }


def _bus_command() -> list[str]:
    """The `bus` script of this interpreter's environment, as a user would type it."""
    script = os.path.join(os.path.dirname(sys.executable), "bus")
    return [script] if os.access(script, os.X_OK) else [sys.executable, "-m", "bus"]
