"""What one demo run is set to: where Kafka is, the ports, the load, the drain and the view."""

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bus.config import BusSettings
from bus.processes import free_ports
from demo.ports import Listener

ViewMode = Literal["auto", "live", "plain", "none"]
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True, slots=True)
class PortSpec:
    """One port of the demo: its default, and the flag and variable that change it."""

    name: str
    purpose: str
    default: int
    env: str
    flag: str | None = None

    @property
    def change_with(self) -> str:
        return f"{self.flag} or {self.env}" if self.flag else self.env


# The bus's two ports keep the variable names the flow files read (platform.yaml).
BUS_HTTP = PortSpec("bus_http", "the bus's HTTP server", 8080, "BUS_HTTP_PORT", "--bus-port")
BUS_ADMIN = PortSpec("bus_admin", "the bus's admin API", 9180, "BUS_ADMIN_PORT", "--admin-port")
CRM = PortSpec("crm", "the demo CRM", 9201, "DEMO_CRM_PORT", "--crm-port")
ERP = PortSpec("erp", "the demo ERP", 9202, "DEMO_ERP_PORT", "--erp-port")
GATEWAY = PortSpec(
    "gateway", "the demo payment gateway", 9203, "DEMO_GATEWAY_PORT", "--gateway-port"
)


def _broker_port(name: str, purpose: str, setting: str) -> PortSpec:
    """One of the local broker's ports: bus itself reads it (bus.config `setting`), so its
    default and variable are bus's."""
    field = BusSettings.model_fields[setting]
    return PortSpec(name, purpose, field.default, str(field.validation_alias))


# Only used when this run starts the local broker.
KAFKA = _broker_port("kafka", "the local Kafka broker", "kafka_port")
KAFKA_CONTROLLER = _broker_port(
    "kafka_controller", "the local Kafka broker's controller", "kafka_controller_port"
)
DEMO_PORTS = (BUS_HTTP, BUS_ADMIN, CRM, ERP, GATEWAY)
BROKER_PORTS = (KAFKA, KAFKA_CONTROLLER)


@dataclass(frozen=True, slots=True)
class Ports:
    bus_http: int
    bus_admin: int
    crm: int
    erp: int
    gateway: int
    kafka: int
    kafka_controller: int

    @classmethod
    def choose(cls, given: Mapping[str, int | None], *, free: bool) -> "Ports":
        """The given ports; the others are their defaults, or free ones with `free`."""
        specs = (*DEMO_PORTS, *BROKER_PORTS)
        missing = [spec for spec in specs if given.get(spec.name) is None]
        picked = iter(free_ports(len(missing)) if free else [spec.default for spec in missing])
        chosen = {spec.name: given.get(spec.name) or next(picked) for spec in specs}
        return cls(**chosen)

    def listeners(self, *, with_broker: bool) -> list[Listener]:
        specs = (*DEMO_PORTS, *(BROKER_PORTS if with_broker else ()))
        return [
            Listener(spec.purpose, getattr(self, spec.name), spec.change_with) for spec in specs
        ]


@dataclass(frozen=True, slots=True)
class DemoSettings:
    kafka: str | None  # an existing cluster's bootstrap servers; None: the local broker
    ports: Ports
    bus: BusSettings  # as bus reads them: BUS_HOME (the local broker's state, the demo's logs)
    rate: float  # inputs per second
    events: int | None  # stop the load after this many inputs; None: until Ctrl-C
    drain_timeout: float
    view: ViewMode
    summary_json: Path | None
    faults: bool  # the demo systems' injected transient failures
    seed: int | None
    startup_timeout: float

    @property
    def log_dir(self) -> Path:
        return self.bus.home / "demo"

    @property
    def bus_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.bus_http}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.bus_admin}"

    @property
    def crm_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.crm}"

    @property
    def erp_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.erp}"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.gateway}"
