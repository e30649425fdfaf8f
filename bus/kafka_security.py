"""How bus connects to Kafka: plaintext, TLS, SASL (PLAIN, SCRAM-SHA-256/512) or SASL over TLS.

Read once from the environment (`kafka_security()`, cached; `reset_kafka_security()` forgets
it), checked as a whole before any connection is tried, and turned into the keyword options
every aiokafka client and connection takes (`client_options()`). Passwords are `SecretStr`s,
come from a variable or a file, and never appear in an error message: a problem names the
variable and the fix, not the value.
"""

import functools
import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from aiokafka.helpers import create_ssl_context
from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from bus.errors import ConfigError

Protocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
Mechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


def _variable(name: str) -> Any:
    return Field(default=None, validation_alias=name)


class KafkaSecurity(BaseSettings):
    """The security of every Kafka connection bus makes (the KAFKA_* variables below)."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    security_protocol: Protocol = Field(
        default="PLAINTEXT",
        validation_alias="KAFKA_SECURITY_PROTOCOL",
    )
    sasl_mechanism: Mechanism | None = _variable("KAFKA_SASL_MECHANISM")
    sasl_username: str | None = _variable("KAFKA_SASL_USERNAME")
    sasl_password: SecretStr | None = _variable("KAFKA_SASL_PASSWORD")
    sasl_password_file: Path | None = _variable("KAFKA_SASL_PASSWORD_FILE")
    ssl_ca_file: Path | None = _variable("KAFKA_SSL_CA_FILE")
    ssl_cert_file: Path | None = _variable("KAFKA_SSL_CERT_FILE")
    ssl_key_file: Path | None = _variable("KAFKA_SSL_KEY_FILE")
    ssl_key_password: SecretStr | None = _variable("KAFKA_SSL_KEY_PASSWORD")
    ssl_key_password_file: Path | None = _variable("KAFKA_SSL_KEY_PASSWORD_FILE")
    ssl_check_hostname: bool = Field(
        default=True,
        validation_alias="KAFKA_SSL_CHECK_HOSTNAME",
    )

    @classmethod
    def from_variables(cls, variables: Mapping[str, str]) -> "KafkaSecurity":
        """The settings the KAFKA_* entries of `variables` give, checked (ConfigError if not):
        what tests and tools use instead of changing the process's environment."""
        try:
            # model_validate reads only `variables`, never os.environ.
            security = cls.model_validate(dict(variables))
        except ValidationError as invalid:
            raise ConfigError(_describe(invalid)) from None
        security.check()
        return security

    @classmethod
    def from_environment(cls) -> "KafkaSecurity":
        try:
            security = cls()
        except ValidationError as invalid:
            raise ConfigError(_describe(invalid)) from None
        security.check()
        return security

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    def check(self) -> None:
        """Refuse contradictions and unreadable files now, each problem with its fix, rather
        than as a connection failure later. Builds the TLS context, so bad certificates, keys
        or key passwords are found here too."""
        problems = self._sasl_problems() + self._tls_problems()
        if not problems:
            try:
                self.client_options()
            except ConfigError as error:
                problems.append(str(error))
        if problems:
            raise ConfigError(
                f"invalid Kafka security settings (KAFKA_SECURITY_PROTOCOL="
                f"{self.security_protocol}): " + "; ".join(problems)
            )

    def _sasl_problems(self) -> list[str]:
        named = _set_variables(
            KAFKA_SASL_MECHANISM=self.sasl_mechanism,
            KAFKA_SASL_USERNAME=self.sasl_username,
            KAFKA_SASL_PASSWORD=self.sasl_password,
            KAFKA_SASL_PASSWORD_FILE=self.sasl_password_file,
        )
        if not self.uses_sasl:
            if named:
                return [
                    f"{', '.join(named)} set, but {self.security_protocol} does not use SASL, "
                    "so the credentials would not be sent; set KAFKA_SECURITY_PROTOCOL=SASL_SSL "
                    "(or SASL_PLAINTEXT), or unset them"
                ]
            return []
        problems = []
        if self.sasl_mechanism is None:
            problems.append(
                "KAFKA_SASL_MECHANISM is not set: set it to the broker's mechanism, "
                "SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN"
            )
        if not self.sasl_username:
            problems.append("KAFKA_SASL_USERNAME is not set: set it to the SASL user's name")
        if self.sasl_password is not None and self.sasl_password_file is not None:
            problems.append(
                "both KAFKA_SASL_PASSWORD and KAFKA_SASL_PASSWORD_FILE are set: keep one"
            )
        elif self.sasl_password is None and self.sasl_password_file is None:
            problems.append(
                "no SASL password: set KAFKA_SASL_PASSWORD_FILE to a file holding it "
                "(or KAFKA_SASL_PASSWORD)"
            )
        elif self.sasl_password_file is not None:
            problems += _file_problems("KAFKA_SASL_PASSWORD_FILE", self.sasl_password_file)
        elif self.sasl_password is not None and not self.sasl_password.get_secret_value():
            problems.append("KAFKA_SASL_PASSWORD is empty: set the SASL user's password")
        return problems

    def _tls_problems(self) -> list[str]:
        files = {
            "KAFKA_SSL_CA_FILE": self.ssl_ca_file,
            "KAFKA_SSL_CERT_FILE": self.ssl_cert_file,
            "KAFKA_SSL_KEY_FILE": self.ssl_key_file,
            "KAFKA_SSL_KEY_PASSWORD_FILE": self.ssl_key_password_file,
        }
        if not self.uses_tls:
            named = _set_variables(**files, KAFKA_SSL_KEY_PASSWORD=self.ssl_key_password)
            if named:
                return [
                    f"{', '.join(named)} set, but {self.security_protocol} does not use TLS; "
                    "set KAFKA_SECURITY_PROTOCOL=SSL (or SASL_SSL), or unset them"
                ]
            return []
        problems = []
        if (self.ssl_cert_file is None) != (self.ssl_key_file is None):
            problems.append(
                "a client certificate needs both KAFKA_SSL_CERT_FILE and KAFKA_SSL_KEY_FILE "
                "(name one file twice if it holds both); set the missing one or unset both"
            )
        has_key_password = self.ssl_key_password is not None or self.ssl_key_password_file
        if has_key_password and self.ssl_key_file is None:
            problems.append(
                "a key password is set but KAFKA_SSL_KEY_FILE is not: set it, or unset "
                "KAFKA_SSL_KEY_PASSWORD(_FILE)"
            )
        if self.ssl_key_password is not None and self.ssl_key_password_file is not None:
            problems.append(
                "both KAFKA_SSL_KEY_PASSWORD and KAFKA_SSL_KEY_PASSWORD_FILE are set: keep one"
            )
        for name, path in files.items():
            if path is not None:
                problems += _file_problems(name, path)
        return problems

    def password(self) -> str | None:
        """The SASL password, from its variable or its file (its last line break dropped)."""
        if self.sasl_password is not None:
            return self.sasl_password.get_secret_value()
        if self.sasl_password_file is not None:
            return _read_secret("KAFKA_SASL_PASSWORD_FILE", self.sasl_password_file)
        return None

    def key_password(self) -> str | None:
        if self.ssl_key_password is not None:
            return self.ssl_key_password.get_secret_value()
        if self.ssl_key_password_file is not None:
            return _read_secret("KAFKA_SSL_KEY_PASSWORD_FILE", self.ssl_key_password_file)
        return None

    def secrets(self) -> set[str]:
        """The values no log line, error or span may show."""
        return {secret for secret in (self.password(), self.key_password()) if secret}

    def client_options(self) -> dict[str, Any]:
        """The keyword options of AIOKafkaProducer, AIOKafkaConsumer, AIOKafkaAdminClient,
        AIOKafkaClient and aiokafka.conn.create_conn for these settings."""
        return dict(self._options)

    @functools.cached_property
    def _options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.uses_tls:
            options["ssl_context"] = self._ssl_context()
        if self.uses_sasl:
            options |= {
                "sasl_mechanism": self.sasl_mechanism,
                "sasl_plain_username": self.sasl_username,
                "sasl_plain_password": self.password(),
            }
        return options

    def _ssl_context(self) -> ssl.SSLContext:
        try:
            context: ssl.SSLContext = create_ssl_context(
                cafile=self.ssl_ca_file,
                certfile=self.ssl_cert_file,
                keyfile=self.ssl_key_file,
                password=self.key_password(),
            )
        except ssl.SSLError as error:
            which = (
                "KAFKA_SSL_CA_FILE"
                if self.ssl_cert_file is None
                else "KAFKA_SSL_CA_FILE, KAFKA_SSL_CERT_FILE, KAFKA_SSL_KEY_FILE and "
                "KAFKA_SSL_KEY_PASSWORD(_FILE)"
            )
            raise ConfigError(
                f"the TLS files could not be loaded ({error.reason or error}): check that "
                f"{which} name PEM files that belong together (a certificate and its key, the "
                "key's right password)"
            ) from None
        # Only the name check can be turned off; the chain is always verified.
        context.check_hostname = self.ssl_check_hostname
        return context


@functools.cache
def kafka_security() -> KafkaSecurity:
    """The process's Kafka security, read from the environment once (ConfigError if invalid)."""
    return KafkaSecurity.from_environment()


def reset_kafka_security() -> None:
    """Forget the cached settings, so that the next `kafka_security()` reads the environment."""
    kafka_security.cache_clear()


PLAINTEXT = KafkaSecurity.model_validate({})
"""No TLS, no SASL: what the local development broker's client port speaks."""


def _set_variables(**values: object) -> list[str]:
    return [name for name, value in values.items() if value is not None]


def _file_problems(variable: str, path: Path) -> list[str]:
    if not path.is_file():
        return [f"{variable}={path} is not a file: name an existing file"]
    if not os.access(path, os.R_OK):
        return [f"{variable}={path} cannot be read by this user: fix its permissions"]
    if variable.endswith("PASSWORD_FILE") and not _read_secret(variable, path):
        return [f"{variable}={path} is empty: write the password into it"]
    return []


def _read_secret(variable: str, path: Path) -> str:
    try:
        return path.read_text().rstrip("\r\n")
    except OSError as error:
        raise ConfigError(
            f"{variable}={path} cannot be read ({error.strerror}): name a readable file"
        ) from None


def _describe(invalid: ValidationError) -> str:
    """The variables that hold bad values and what was expected, never a secret's value."""
    problems = []
    for error in invalid.errors():
        name = str(error["loc"][0]).upper() if error["loc"] else "KAFKA_*"
        secret = "PASSWORD" in name and not name.endswith("_FILE")
        shown = "" if secret else f"={error['input']!r}"
        problems.append(f"{name}{shown}: {error['msg']}")
    return "invalid Kafka security setting: " + "; ".join(problems)
