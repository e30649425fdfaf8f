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


class SchemaError(BusError):
    """A schema file is invalid, or a schema that was asked for is not in the catalog."""


class SchemaRegistryError(BusError):
    """The Confluent-compatible schema registry refused a request or could not be reached."""


class EventDecodeError(BusError):
    """A Kafka record is not a readable bus event; the message says what was expected and found."""


class BadHeaderError(EventDecodeError):
    """A required CloudEvents header (ce_id, ce_type, ...) is absent, or a header is invalid."""


class WrongMagicError(EventDecodeError):
    """The record value starts with neither single-object (C3 01) nor Confluent (00) framing."""


class UnknownWriterSchemaError(EventDecodeError):
    """The writer schema's fingerprint or registry id is not known to this reader."""


class TruncatedEventError(EventDecodeError):
    """The Avro body ends early, has bytes left over, or holds an impossible length or count."""


class InvalidAttributesError(BusError):
    """An event's CloudEvents attributes are invalid (empty source, bad extension, naive time)."""


class EventValidationError(BusError):
    """Event data does not match its schema; `problems` holds (field path, what was expected)."""

    def __init__(self, schema: str, problems: list[tuple[str, str]]) -> None:
        self.schema = schema
        self.problems = problems
        listed = "; ".join(f"{path or '<root>'}: {expected}" for path, expected in problems)
        super().__init__(f"event data does not match {schema}: {listed}")


class AuthenticationError(BusError):
    """A request did not prove who sent it; the inbound adapters answer 401 Unauthorized.

    `reason` is written for the caller and safe to send back to it: it says what was missing,
    malformed, stale or not matching, never a secret, the expected signature or what the caller
    sent. `challenge` is the value of the 401's `WWW-Authenticate` header where the scheme has one
    (`Basic realm="bus", charset="UTF-8"`), else None.
    """

    def __init__(self, reason: str, *, challenge: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.challenge = challenge


class PublishError(BusError):
    """Kafka did not acknowledge an event (with acks=all), so it must be treated as not stored."""


class AuthorizationError(BusError):
    """A caller proved who it is but may not do this (a JWT without the required scope or claim);
    the inbound adapters answer 403 Forbidden. `reason` is safe to send back, as for 401."""

    def __init__(self, reason: str, *, challenge: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.challenge = challenge  # RFC 6750 §3.1: a missing scope is told in WWW-Authenticate


class DeliveryError(BusError):
    """An outbound call failed. `status` and `excerpt` are the response's status code and the
    start of its body, where there was a response; they go into the dead letter's reason."""

    def __init__(self, reason: str, *, status: int | None = None, excerpt: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.excerpt = excerpt


class TransientDeliveryError(DeliveryError):
    """Worth trying again (a timeout, a refused connection, 5xx, 429, a SOAP Server fault);
    `retry_after` is the wait in seconds the other side asked for, if it asked."""

    def __init__(
        self,
        reason: str,
        *,
        status: int | None = None,
        excerpt: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(reason, status=status, excerpt=excerpt)
        self.retry_after = retry_after


class PermanentDeliveryError(DeliveryError):
    """Trying again cannot help (a 4xx other than 408/429, a SOAP Client fault, a request the
    mapping cannot build): the event goes to the dead-letter topic at once."""


class KafkaUnavailableError(BusError):
    """Kafka failed, or stopped answering, while bus read or wrote a topic for a command or the
    admin API; the same call may succeed once the cluster answers again."""


class DeadLetterTopicMissingError(BusError):
    """The dead-letter topic asked for does not exist (a wrong flow name, or a topic that no
    flow has dead-lettered to yet)."""


class DeadLetterNotFoundError(BusError):
    """No dead letter sits at the partition and offset asked for."""


class NotReplayableError(BusError):
    """A dead letter cannot be sent back where it came from: it carries no `bus_dlq_*` headers,
    or it was never consumed from a topic (a poller's item)."""


class JourneyTopicMissingError(BusError):
    """The journey topic asked for does not exist: nothing with journeys enabled wrote to this
    cluster yet, or another topic was meant."""


class KafkaAuthenticationError(ConfigError):
    """Kafka refused this process's connection for its security settings: wrong SASL
    credentials or mechanism, a broker certificate that is not trusted or not for that address,
    or TLS spoken to a plaintext listener (or the other way round). Trying again cannot help;
    the message says what failed, at which address, and which KAFKA_* variables to fix."""
