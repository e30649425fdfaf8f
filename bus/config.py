"""Process-wide settings, read from the environment (flow files add their own later)."""

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from bus.errors import ConfigError


class BusSettings(BaseSettings):
    """Where Kafka is and where bus keeps its local state.

    With no bootstrap servers configured, bus uses (and starts) the local broker under `home`.
    """

    model_config = SettingsConfigDict(extra="ignore")

    kafka_bootstrap_servers: str | None = Field(
        default=None,
        validation_alias="KAFKA_BOOTSTRAP_SERVERS",
        description="Comma-separated host:port list of an existing Kafka cluster.",
    )
    home: Path = Field(
        default=Path(".bus"),
        validation_alias="BUS_HOME",
        description="Project data directory: local broker state, logs and caches.",
    )
    cache_dir: Path | None = Field(
        default=None,
        validation_alias="BUS_CACHE_DIR",
        description="Where fetched Kafka jars are kept; defaults to <home>/cache.",
    )
    schemas_dir: Path = Field(
        default=Path("schemas"),
        validation_alias="BUS_SCHEMAS_DIR",
        description="The schema catalog: canonical .avsc files and their released history.",
    )
    kafka_port: int = Field(
        default=9092,
        ge=1,
        le=65535,
        validation_alias="BUS_KAFKA_PORT",
        description="Client port of the local broker on 127.0.0.1.",
    )
    kafka_controller_port: int = Field(
        default=9093,
        ge=1,
        le=65535,
        validation_alias="BUS_KAFKA_CONTROLLER_PORT",
        description="KRaft controller port of the local broker on 127.0.0.1.",
    )

    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(
        default="auto",
        validation_alias="BUS_EVENT_LOOP",
        description="`bus run`'s event loop: auto (uvloop when installed), uvloop, or asyncio.",
    )

    @property
    def kafka_cache_dir(self) -> Path:
        return self.cache_dir if self.cache_dir is not None else self.home / "cache"


def load_settings() -> BusSettings:
    """The settings from the environment; a bad value names its variable and what was expected."""
    try:
        return BusSettings()
    except ValidationError as invalid:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}={error['input']!r}: {error['msg']}"
            for error in invalid.errors()
        )
        raise ConfigError(f"invalid environment setting: {problems}") from invalid
