"""The one exception hierarchy of bus: every error a user can meet says what failed and the fix."""


class BusError(Exception):
    """Base of every error that bus raises on purpose."""


class ConfigError(BusError):
    """The configuration (environment, flags or files) is invalid."""


class LocalKafkaError(BusError):
    """The local development broker could not be fetched, started, stopped or inspected."""


class ToolMissingError(LocalKafkaError):
    """Java or Maven, needed for the local broker, is not installed or too old."""


class BrokerAlreadyRunningError(LocalKafkaError):
    """`start` was asked for while the local broker already runs."""


class BrokerNotRunningError(LocalKafkaError):
    """`stop` was asked for while no local broker runs."""


class BrokerStartError(LocalKafkaError):
    """The local broker did not become ready; the message carries the reason and the log's tail."""
