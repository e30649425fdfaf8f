"""Settings come from bus's own variables only, and a bad one is named with what was expected."""

from pathlib import Path

import pytest

from bus.config import load_settings
from bus.errors import ConfigError


def test_defaults_ignore_unrelated_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BUS_HOME", "BUS_CACHE_DIR", "KAFKA_BOOTSTRAP_SERVERS", "BUS_KAFKA_PORT"):
        monkeypatch.delenv(name, raising=False)
    # Field names must not be read as variables: HOME is the user's home, not the bus's.
    monkeypatch.setenv("HOME", "/somewhere/else")
    monkeypatch.setenv("CACHE_DIR", "/somewhere/else")
    settings = load_settings()
    assert settings.home == Path(".bus")
    assert settings.kafka_cache_dir == Path(".bus/cache")
    assert settings.kafka_bootstrap_servers is None
    assert (settings.kafka_port, settings.kafka_controller_port) == (9092, 9093)


def test_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUS_HOME", "/srv/bus")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("BUS_KAFKA_PORT", "19092")
    monkeypatch.delenv("BUS_CACHE_DIR", raising=False)
    settings = load_settings()
    assert settings.home == Path("/srv/bus")
    assert settings.kafka_cache_dir == Path("/srv/bus/cache")
    assert settings.kafka_bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert settings.kafka_port == 19092


def test_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUS_KAFKA_PORT", "99999")
    with pytest.raises(ConfigError, match=r"BUS_KAFKA_PORT='99999': .*less than or equal to 65535"):
        load_settings()
