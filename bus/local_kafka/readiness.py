"""Whether a Kafka bootstrap address answers a metadata request, asked as our clients ask it
(with the process's TLS and SASL settings), and, for a preflight, why it refused us."""

import asyncio
import contextlib
import ssl

from aiokafka.cluster import ClusterMetadata
from aiokafka.errors import (
    IllegalSaslStateError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.protocol.metadata import MetadataRequest

from bus.errors import KafkaAuthenticationError
from bus.kafka_clients import connection
from bus.kafka_security import KafkaSecurity, kafka_security

CLOSED_RETRY_S = 0.5  # how long to wait before asking a broker that hung up once again


async def answers_metadata(
    bootstrap_servers: str,
    within: float = 3.0,
    *,
    security: KafkaSecurity | None = None,
    strict: bool = False,
) -> bool:
    """True when one of the addresses accepts a TCP connection and returns broker metadata.
    They are tried in turn, all of them within `within` seconds: the cluster answers while any
    one broker does (one down for maintenance must not make every bus process unready).

    `security` is the process's Kafka security unless given. With `strict`, a broker that
    refuses the connection for its security (wrong credentials, an untrusted certificate,
    another protocol) raises KafkaAuthenticationError at once, since waiting cannot help;
    otherwise that counts as not answering."""
    chosen = security if security is not None else kafka_security()
    addresses = [address.strip() for address in bootstrap_servers.split(",") if address.strip()]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    refusal: KafkaAuthenticationError | None = None
    for index, address in enumerate(addresses):
        # An even share of the time left, so that an address that does not answer at all
        # (a dropped SYN) cannot use up the time of those after it.
        share = (deadline - loop.time()) / (len(addresses) - index)
        try:
            async with asyncio.timeout(share):
                # Readiness takes a hang-up for "not answering"; only a preflight must tell a
                # broker going down from a listener of another protocol.
                ask = _answers_twice_if_closed if strict else _answers
                if await ask(address, share, chosen):
                    return True
        except TimeoutError:
            continue
        except KafkaAuthenticationError as refused:
            # Another broker may still answer: the first refusal is told only if none does.
            refusal = refusal or refused
    if strict and refusal is not None:
        raise refusal
    return False


async def _answers_twice_if_closed(address: str, within: float, security: KafkaSecurity) -> bool:
    """A broker that closes the connection in the handshake may expect another protocol, or
    may be shutting down or restarting: only a second close, a moment later, says which."""
    try:
        return await _answers(address, within, security)
    except _ClosedInHandshakeError:
        await asyncio.sleep(CLOSED_RETRY_S)
        return await _answers(address, within, security)


async def _answers(address: str, within: float, security: KafkaSecurity) -> bool:
    host, _, port = address.rpartition(":")
    # A bare TCP probe first: aiokafka logs every refused connection as an error, and a
    # broker that is still booting (or down) refuses many.
    try:
        _, writer = await asyncio.open_connection(host.strip("[]"), int(port))
    except (OSError, ValueError):  # ValueError: no port number after the colon
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()

    # One connection to this address only, not a client: a client's bootstrap logs why it was
    # refused and raises only "unable to bootstrap", where a preflight must say why.
    try:
        conn = await connection(
            host.strip("[]"), int(port), security=security, request_timeout_ms=int(within * 1000)
        )
    except (KafkaError, OSError, EOFError) as error:
        _raise_refusal(address, security, error)
        return False
    try:
        cluster = ClusterMetadata()
        cluster.update_metadata(await conn.send(MetadataRequest([])))
        return bool(cluster.brokers())
    except (KafkaError, OSError) as error:
        # A SASL listener answers ApiVersions to anyone, then hangs up on a client that did
        # not authenticate: the first real request is where PLAINTEXT meets SASL.
        _raise_refusal(address, security, error)
        return False
    finally:
        conn.close()


def _raise_refusal(address: str, security: KafkaSecurity, error: BaseException) -> None:
    """Raise KafkaAuthenticationError if `error` says the broker refused our security settings
    (as opposed to being down or busy); the message never holds a secret."""
    protocol = f"KAFKA_SECURITY_PROTOCOL={security.security_protocol}"
    cause = error.__cause__ or error.__context__
    if isinstance(error, SaslAuthenticationFailed):
        raise KafkaAuthenticationError(
            f"Kafka at {address} refused the SASL {security.sasl_mechanism} authentication of "
            f"user {security.sasl_username!r} ({_reason(error)}): check KAFKA_SASL_USERNAME "
            "and KAFKA_SASL_PASSWORD (or the file KAFKA_SASL_PASSWORD_FILE names)"
        ) from None
    if isinstance(error, UnsupportedSaslMechanismError):
        raise KafkaAuthenticationError(
            f"Kafka at {address} does not offer SASL mechanism {security.sasl_mechanism} "
            f"({_reason(error)}): set KAFKA_SASL_MECHANISM to one it offers"
        ) from None
    if isinstance(error, ssl.SSLCertVerificationError):
        raise KafkaAuthenticationError(
            f"TLS certificate verification failed for Kafka at {address} "
            f"({error.verify_message}): the broker's certificate is not signed by a CA in "
            "KAFKA_SSL_CA_FILE (or the system's CAs when unset), or is not issued for this "
            "address; name the CA that signed it in KAFKA_SSL_CA_FILE, or connect by a name "
            "the certificate holds"
        ) from None
    if isinstance(error, ssl.SSLError) and _client_certificate_refused(error):
        raise KafkaAuthenticationError(
            f"Kafka at {address} refused this client's TLS certificate ({error.reason}): its "
            f"listener asks for a client certificate signed by a CA it trusts; "
            + (
                "set KAFKA_SSL_CERT_FILE and KAFKA_SSL_KEY_FILE to one"
                if security.ssl_cert_file is None
                else "check whether it trusts the CA that signed KAFKA_SSL_CERT_FILE"
            )
        ) from None
    if isinstance(error, ssl.SSLError):
        raise KafkaAuthenticationError(
            f"the TLS handshake with Kafka at {address} failed ({error.reason or error}): that "
            f"listener does not seem to speak TLS; check {protocol} against the listener "
            "(PLAINTEXT or SASL_PLAINTEXT for a listener without TLS)"
        ) from None
    if security.uses_tls and isinstance(cause, ssl.SSLError):
        _raise_refusal(address, security, cause)
    if isinstance(error, IllegalSaslStateError | EOFError | ConnectionError) or (
        isinstance(error, KafkaError) and "closed" in str(error).lower()
    ):
        expected = "TLS" if security.uses_tls else "no TLS"
        raise _ClosedInHandshakeError(
            f"Kafka at {address} accepted the TCP connection, then closed it during the "
            f"{security.security_protocol} handshake ({expected}"
            f"{', SASL' if security.uses_sasl else ', no SASL'}): that listener expects "
            f"another security protocol; check {protocol}"
            f"{' (and KAFKA_SASL_MECHANISM)' if security.uses_sasl else ''} against the "
            "listener the address names"
        ) from None


class _ClosedInHandshakeError(KafkaAuthenticationError):
    """The broker hung up during the handshake: another protocol, or a broker going down."""


def _client_certificate_refused(error: ssl.SSLError) -> bool:
    """The server's TLS alert says our certificate (or its absence) is the problem."""
    reason = error.reason or ""
    return "ALERT" in reason and ("CERTIFICATE" in reason or "UNKNOWN_CA" in reason)


def _reason(error: KafkaError) -> str:
    """The broker's own words (never ours: we send no secret in them), else its error code's."""
    if error.args and isinstance(error.args[0], str):
        return error.args[0]
    return f"the broker answered {getattr(error, 'message', type(error).__name__)}"
