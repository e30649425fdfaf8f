"""Kafka over TLS and SASL/SCRAM: a broker of its own with a SASL_SSL listener (a trustme CA,
SCRAM-SHA-512 users), bus's clients connecting through it, and every misconfiguration refused
at once with a message that names the fix and never the secret."""

import asyncio
import dataclasses
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiokafka.admin import NewTopic
from aiokafka.errors import KafkaConnectionError
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives import serialization

from bus import kafka_clients
from bus.cli import main
from bus.errors import BrokerStartError, ConfigError, KafkaAuthenticationError
from bus.flows.model import FlowSet
from bus.kafka_security import KafkaSecurity, kafka_security, reset_kafka_security
from bus.local_kafka import LocalKafka, SecureListener
from bus.local_kafka.readiness import answers_metadata
from bus.processes import free_ports
from bus.telemetry.secrets import MASK, Redactor, secrets_of
from tests.conftest import free_port, new_broker
from tests.flow_harness import ROOT, bus_run_process, customer_webhook, decode, write_flow

USER = "alice"
PASSWORD = "alice-Secret-4711"
WRONG_PASSWORD = "not-alices-Secret-0815"
FAST = 10.0  # seconds a refusal may take, on a loaded machine, instead of a retry loop


@dataclasses.dataclass(frozen=True)
class Tls:
    ca: Path  # the CA that signed the broker's certificate (and the client's)
    other_ca: Path  # a CA that did not
    keystore: Path  # the broker's PKCS#8 key and certificate chain
    client_cert: Path  # a client certificate the mTLS listener accepts
    client_key: Path
    stranger_cert: Path  # one from the other CA, which it does not
    stranger_key: Path


def pkcs8(leaf: trustme.LeafCert) -> bytes:
    """trustme writes the key as `BEGIN EC PRIVATE KEY`; Kafka's PEM key store reads PKCS#8."""
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    folder = tmp_path_factory.mktemp("tls")
    ca, other_ca = trustme.CA(), trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")  # not "localhost": a name check can then fail
    keystore = folder / "broker.pem"
    keystore.write_bytes(pkcs8(leaf) + b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    other_ca.cert_pem.write_to_path(str(folder / "other-ca.pem"))
    for name, issuer in (("client", ca), ("stranger", other_ca)):
        client = issuer.issue_cert(f"bus-{name}")
        client.cert_chain_pems[0].write_to_path(str(folder / f"{name}.pem"))
        client.private_key_pem.write_to_path(str(folder / f"{name}.key"))
    return Tls(
        folder / "ca.pem",
        folder / "other-ca.pem",
        keystore,
        folder / "client.pem",
        folder / "client.key",
        folder / "stranger.pem",
        folder / "stranger.key",
    )


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory, tls: Tls) -> Iterator[LocalKafka]:
    """A broker with a SASL_SSL listener (SCRAM-SHA-512, user alice) and an SSL listener that
    asks for client certificates, beside its PLAINTEXT one."""
    broker = None
    for attempt in range(3):
        port, mtls_port = free_ports(2)
        broker = dataclasses.replace(
            new_broker(tmp_path_factory.mktemp("secure-kafka")),
            secure=SecureListener(
                port=port,
                keystore=tls.keystore,
                users={USER: PASSWORD},
                mtls_port=mtls_port,
                client_ca=tls.ca,
            ),
        )
        try:
            asyncio.run(broker.start(ready_within=90.0))
            break
        except BrokerStartError as error:  # a free port taken meanwhile by another process
            if attempt == 2 or "port" not in str(error):
                raise
    assert broker is not None
    try:
        yield broker
    finally:
        broker.stop()


def sasl_ssl(tls: Tls, **changes: str) -> dict[str, str]:
    """The variables of a client of the secure listener, as a user sets them."""
    return {
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": USER,
        "KAFKA_SASL_PASSWORD": PASSWORD,
        "KAFKA_SSL_CA_FILE": str(tls.ca),
        **changes,
    }


@pytest.fixture
def fresh_settings() -> Iterator[None]:
    """The process's cached Kafka security forgotten before and after the test."""
    reset_kafka_security()
    yield
    reset_kafka_security()


async def round_trip(bootstrap_servers: str, security: KafkaSecurity) -> bytes:
    """A topic created, a record produced and read back by a group, all through bus's
    factories with `security`."""
    topic = f"secure.{uuid.uuid4().hex[:8]}"
    admin = kafka_clients.admin_client(bootstrap_servers, security=security)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    producer = kafka_clients.durable_producer(bootstrap_servers, security=security)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"over TLS and SCRAM", key=b"k")
    finally:
        await producer.stop()
    consumer = kafka_clients.group_consumer(bootstrap_servers, f"g-{topic}", security=security)
    consumer.subscribe([topic])
    await consumer.start()
    try:
        async with asyncio.timeout(30):
            record = await consumer.getone()
        await consumer.commit()
    finally:
        await consumer.stop()
    assert record.value is not None
    return record.value


@pytest.mark.parametrize("password_from", ["variable", "file"])
async def test_clients_round_trip_over_sasl_ssl(
    secure_broker: LocalKafka, tls: Tls, tmp_path: Path, password_from: str
) -> None:
    variables = sasl_ssl(tls)
    if password_from == "file":
        secret_file = tmp_path / "kafka-password"
        secret_file.write_text(variables.pop("KAFKA_SASL_PASSWORD") + "\n")  # as editors save
        variables["KAFKA_SASL_PASSWORD_FILE"] = str(secret_file)
    security = KafkaSecurity.from_variables(variables)
    bootstrap = secure_broker.secure_bootstrap_servers
    assert await answers_metadata(bootstrap, within=FAST, security=security, strict=True)
    assert await round_trip(bootstrap, security) == b"over TLS and SCRAM"


async def test_clients_round_trip_over_mtls(secure_broker: LocalKafka, tls: Tls) -> None:
    security = KafkaSecurity.from_variables(
        {
            "KAFKA_SECURITY_PROTOCOL": "SSL",
            "KAFKA_SSL_CA_FILE": str(tls.ca),
            "KAFKA_SSL_CERT_FILE": str(tls.client_cert),
            "KAFKA_SSL_KEY_FILE": str(tls.client_key),
        }
    )
    assert await round_trip(secure_broker.mtls_bootstrap_servers, security) == b"over TLS and SCRAM"


@pytest.mark.parametrize("client", ["none", "stranger"])
async def test_mtls_without_a_trusted_client_certificate_is_refused_at_once(
    secure_broker: LocalKafka, tls: Tls, client: str
) -> None:
    variables = {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_FILE": str(tls.ca)}
    if client == "stranger":
        variables |= {
            "KAFKA_SSL_CERT_FILE": str(tls.stranger_cert),
            "KAFKA_SSL_KEY_FILE": str(tls.stranger_key),
        }
    address = secure_broker.mtls_bootstrap_servers
    message, took = await refusal(address, KafkaSecurity.from_variables(variables))
    assert took < FAST
    assert f"Kafka at {address}" in message
    assert "refused this client's TLS certificate" in message
    hint = "set KAFKA_SSL_CERT_FILE and KAFKA_SSL_KEY_FILE" if client == "none" else "trusts the CA"
    assert hint in message


async def refusal(bootstrap_servers: str, security: KafkaSecurity) -> tuple[str, float]:
    started = time.monotonic()
    with pytest.raises(KafkaAuthenticationError) as refused:
        await answers_metadata(bootstrap_servers, within=FAST, security=security, strict=True)
    return str(refused.value), time.monotonic() - started


async def test_a_wrong_password_is_refused_at_once_without_showing_it(
    secure_broker: LocalKafka, tls: Tls, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    security = KafkaSecurity.from_variables(sasl_ssl(tls, KAFKA_SASL_PASSWORD=WRONG_PASSWORD))
    address = secure_broker.secure_bootstrap_servers
    message, took = await refusal(address, security)
    assert took < FAST
    assert f"Kafka at {address} refused the SASL SCRAM-SHA-512 authentication" in message
    assert "user 'alice'" in message
    assert "KAFKA_SASL_PASSWORD" in message
    assert WRONG_PASSWORD not in message
    assert WRONG_PASSWORD not in caplog.text
    # Not strict (the admin API's readiness): the same refusal is "does not answer".
    assert not await answers_metadata(address, within=FAST, security=security)
    # A client of the Python API is not caught in a retry loop either: start() gives up.
    producer = kafka_clients.durable_producer(address, security=security)
    started = time.monotonic()
    try:
        with pytest.raises(KafkaConnectionError):
            await producer.start()
    finally:
        await producer.stop()
    assert time.monotonic() - started < FAST
    assert WRONG_PASSWORD not in caplog.text


async def test_a_mechanism_the_listener_does_not_offer_is_named(
    secure_broker: LocalKafka, tls: Tls
) -> None:
    security = KafkaSecurity.from_variables(sasl_ssl(tls, KAFKA_SASL_MECHANISM="SCRAM-SHA-256"))
    message, _ = await refusal(secure_broker.secure_bootstrap_servers, security)
    assert "does not offer SASL mechanism SCRAM-SHA-256" in message
    assert "UNSUPPORTED_SASL_MECHANISM" in message
    assert "KAFKA_SASL_MECHANISM" in message


async def test_a_certificate_from_another_ca_fails_verification_at_once(
    secure_broker: LocalKafka, tls: Tls
) -> None:
    security = KafkaSecurity.from_variables(sasl_ssl(tls, KAFKA_SSL_CA_FILE=str(tls.other_ca)))
    address = secure_broker.secure_bootstrap_servers
    message, took = await refusal(address, security)
    assert took < FAST
    assert f"TLS certificate verification failed for Kafka at {address}" in message
    assert "KAFKA_SSL_CA_FILE" in message
    assert PASSWORD not in message


async def test_a_certificate_for_another_name_fails_unless_the_name_check_is_off(
    secure_broker: LocalKafka, tls: Tls
) -> None:
    # The certificate is for 127.0.0.1, not for the name localhost, which reaches the same
    # listener. (Only the preflight's one connection: clients go on to 127.0.0.1 as advertised.)
    address = secure_broker.secure_bootstrap_servers.replace("127.0.0.1", "localhost")
    message, _ = await refusal(address, KafkaSecurity.from_variables(sasl_ssl(tls)))
    assert "certificate verification failed" in message
    assert "Hostname mismatch, certificate is not valid for 'localhost'" in message
    unchecked = KafkaSecurity.from_variables(sasl_ssl(tls, KAFKA_SSL_CHECK_HOSTNAME="false"))
    assert await answers_metadata(address, within=FAST, security=unchecked, strict=True)


@pytest.mark.parametrize(
    ("listener", "variables"),
    [
        ("plaintext", "sasl_ssl"),  # TLS spoken to a plaintext port
        ("secure", "plaintext"),  # plaintext spoken to a TLS port
        ("secure", "ssl"),  # TLS without SASL to a SASL_SSL listener
        ("plaintext", "sasl_plaintext"),  # SASL to a listener without it
    ],
)
async def test_another_security_protocol_than_the_listeners_is_refused_at_once(
    secure_broker: LocalKafka, tls: Tls, listener: str, variables: str
) -> None:
    chosen = {
        "sasl_ssl": sasl_ssl(tls),
        "plaintext": {},
        "ssl": {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_FILE": str(tls.ca)},
        "sasl_plaintext": {
            **{k: v for k, v in sasl_ssl(tls).items() if k != "KAFKA_SSL_CA_FILE"},
            "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        },
    }[variables]
    security = KafkaSecurity.from_variables(chosen)
    address = (
        secure_broker.secure_bootstrap_servers
        if listener == "secure"
        else secure_broker.bootstrap_servers
    )
    message, took = await refusal(address, security)
    assert took < FAST
    assert f"Kafka at {address}" in message
    assert f"KAFKA_SECURITY_PROTOCOL={security.security_protocol}" in message
    assert PASSWORD not in message


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_PASSWORD": PASSWORD},
            "KAFKA_SASL_MECHANISM is not set",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "PLAIN"},
            "KAFKA_SASL_USERNAME is not set",
        ),
        (
            {
                "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "KAFKA_SASL_MECHANISM": "PLAIN",
                "KAFKA_SASL_USERNAME": USER,
            },
            "no SASL password: set KAFKA_SASL_PASSWORD_FILE",
        ),
        (
            {
                "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                "KAFKA_SASL_USERNAME": USER,
                "KAFKA_SASL_PASSWORD": PASSWORD,
                "KAFKA_SASL_PASSWORD_FILE": "/etc/hostname",
            },
            "both KAFKA_SASL_PASSWORD and KAFKA_SASL_PASSWORD_FILE are set: keep one",
        ),
        (
            {
                "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                "KAFKA_SASL_USERNAME": USER,
                "KAFKA_SASL_PASSWORD_FILE": "/no/such/password-file",
            },
            "KAFKA_SASL_PASSWORD_FILE=/no/such/password-file is not a file",
        ),
        (
            {"KAFKA_SASL_USERNAME": USER, "KAFKA_SASL_PASSWORD": PASSWORD},
            "KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD set, but PLAINTEXT does not use SASL",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SSL_CA_FILE": "/etc/hostname"},
            "KAFKA_SSL_CA_FILE set, but SASL_PLAINTEXT does not use TLS",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERT_FILE": "/etc/hostname"},
            "needs both KAFKA_SSL_CERT_FILE and KAFKA_SSL_KEY_FILE",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_KEY_PASSWORD": PASSWORD},
            "a key password is set but KAFKA_SSL_KEY_FILE is not",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "TLS", "KAFKA_SASL_PASSWORD": PASSWORD},
            "KAFKA_SECURITY_PROTOCOL='TLS': Input should be 'PLAINTEXT', 'SSL'",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_FILE": "/etc/hostname"},
            "the TLS files could not be loaded",
        ),
    ],
)
def test_contradicting_settings_are_refused_naming_the_variable(
    variables: dict[str, str], expected: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        KafkaSecurity.from_variables(variables)
    assert expected in str(refused.value)
    assert PASSWORD not in str(refused.value)


def test_a_bad_value_in_a_password_variable_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as refused:
        KafkaSecurity.from_variables({"KAFKA_SASL_PASSWORD": ["not", PASSWORD]})  # type: ignore[dict-item]
    assert "KAFKA_SASL_PASSWORD" in str(refused.value)
    assert PASSWORD not in str(refused.value)


def test_a_client_certificate_and_its_encrypted_key_load(tls: Tls, tmp_path: Path) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("bus-client")
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
    key_file = tmp_path / "client.key"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(PASSWORD.encode()),
        )
    )
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "client.pem"))
    variables = {
        "KAFKA_SECURITY_PROTOCOL": "SSL",
        "KAFKA_SSL_CA_FILE": str(tls.ca),
        "KAFKA_SSL_CERT_FILE": str(tmp_path / "client.pem"),
        "KAFKA_SSL_KEY_FILE": str(key_file),
    }
    password_file = tmp_path / "key-password"
    password_file.write_text(PASSWORD)
    loaded = KafkaSecurity.from_variables(
        {**variables, "KAFKA_SSL_KEY_PASSWORD_FILE": str(password_file)}
    )
    assert loaded.client_options()["ssl_context"] is not None
    assert loaded.secrets() == {PASSWORD}
    with pytest.raises(ConfigError) as refused:
        KafkaSecurity.from_variables({**variables, "KAFKA_SSL_KEY_PASSWORD": WRONG_PASSWORD})
    assert "the TLS files could not be loaded" in str(refused.value)
    assert WRONG_PASSWORD not in str(refused.value)


def test_the_environment_is_read_once_and_its_passwords_are_redacted(
    tls: Tls, monkeypatch: pytest.MonkeyPatch, fresh_settings: None
) -> None:
    for name, value in sasl_ssl(tls).items():
        monkeypatch.setenv(name, value)
    security = kafka_security()
    assert security.security_protocol == "SASL_SSL"
    assert security.client_options()["sasl_plain_password"] == PASSWORD
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "bob")
    assert kafka_security() is security  # cached until reset
    redactor = Redactor(secrets_of(FlowSet()))
    assert redactor.redact(f"failed with {PASSWORD} in it") == f"failed with {MASK} in it"
    reset_kafka_security()
    assert kafka_security().sasl_username == "bob"


def bus_command(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # The other KAFKA_* of the developer's shell must not mix with the test's.
    base = {name: value for name, value in os.environ.items() if not name.startswith("KAFKA_")}
    return subprocess.run(
        [sys.executable, "-m", "bus", *args],
        cwd=ROOT,
        env={**base, "BUS_SCHEMAS_DIR": str(ROOT / "schemas"), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_bus_run_with_a_wrong_password_exits_at_once_saying_why(
    secure_broker: LocalKafka, tls: Tls, tmp_path: Path
) -> None:
    flow = write_flow(tmp_path, customer_webhook("secure-hook", "secure.customers.v1"))
    address = secure_broker.secure_bootstrap_servers
    password_file = tmp_path / "password"
    password_file.write_text(WRONG_PASSWORD)
    variables = sasl_ssl(tls, KAFKA_BOOTSTRAP_SERVERS=address)
    del variables["KAFKA_SASL_PASSWORD"]
    started = time.monotonic()
    ran = bus_command(
        "run", str(flow), env={**variables, "KAFKA_SASL_PASSWORD_FILE": str(password_file)}
    )
    took = time.monotonic() - started
    assert ran.returncode == 1, ran.stderr
    assert took < 20, ran.stderr  # a Python start, the flow files, one refused handshake
    assert f"Kafka at {address} refused the SASL SCRAM-SHA-512 authentication" in ran.stderr
    assert "Traceback" not in ran.stderr
    assert WRONG_PASSWORD not in ran.stdout + ran.stderr


def bus_in_process(*args: str, env: dict[str, str]) -> Result:
    """`bus ARGS` in this process (a second Python start costs seconds on a loaded machine),
    with `env` instead of the developer's KAFKA_* variables; use with `fresh_settings`."""
    unset: dict[str, str | None] = {name: None for name in os.environ if name.startswith("KAFKA_")}
    return CliRunner().invoke(main, list(args), env={**unset, **env})


def test_dlq_list_against_a_plaintext_port_says_which_protocol_to_fix(
    secure_broker: LocalKafka, tls: Tls, fresh_settings: None
) -> None:
    address = secure_broker.bootstrap_servers
    variables = sasl_ssl(tls, KAFKA_BOOTSTRAP_SERVERS=address)
    ran = bus_in_process("dlq", "list", "some-flow", env=variables)
    assert ran.exit_code == 1, ran.output
    assert f"Kafka at {address} accepted the TCP connection, then closed it" in ran.output
    assert "KAFKA_SECURITY_PROTOCOL=SASL_SSL" in ran.output
    assert PASSWORD not in ran.output


def test_bus_run_refuses_contradicting_settings_before_connecting(
    tmp_path: Path, fresh_settings: None
) -> None:
    flow = write_flow(tmp_path, customer_webhook("secure-hook", "secure.customers.v1"))
    ran = bus_in_process(
        "run",
        str(flow),
        env={
            "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_PASSWORD": PASSWORD,
            "BUS_SCHEMAS_DIR": str(ROOT / "schemas"),
        },
    )
    assert ran.exit_code == 1
    assert "KAFKA_SASL_MECHANISM is not set" in ran.output
    assert "does not answer" not in ran.output
    assert PASSWORD not in ran.output


async def test_bus_run_serves_a_webhook_over_sasl_ssl(
    secure_broker: LocalKafka, tls: Tls, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    topic = f"secure.customers.{run}"
    port = free_port()
    flow = write_flow(
        tmp_path,
        "http:\n  port: ${BUS_HTTP_PORT}\n"
        "observability:\n  logs: {format: json, level: debug}\n"
        + customer_webhook(f"secure-hook-{run}", topic),
    )
    variables = sasl_ssl(tls, KAFKA_BOOTSTRAP_SERVERS=secure_broker.secure_bootstrap_servers)
    body = {
        "id": "c-7",
        "email": "c-7@example.com",
        "name": "Grace Hopper",
        "address": None,
        "at": "2026-11-24T12:00:00Z",
    }
    async with (
        bus_run_process(
            flow, tmp_path / "bus.log", secrets=[PASSWORD], BUS_HTTP_PORT=str(port), **variables
        ),
        aiohttp.ClientSession() as session,
    ):
        url = f"http://127.0.0.1:{port}/hooks/customers"
        async with asyncio.timeout(60):
            while True:
                try:
                    async with session.post(url, json=body) as response:
                        assert response.status == 202, await response.text()
                        break
                except aiohttp.ClientConnectionError:  # not listening yet
                    await asyncio.sleep(0.2)
    security = KafkaSecurity.from_variables(variables)
    consumer = kafka_clients.consumer(
        topic,
        bootstrap_servers=secure_broker.secure_bootstrap_servers,
        security=security,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        async with asyncio.timeout(30):
            record = await consumer.getone()
    finally:
        await consumer.stop()
    [event] = await decode([record])
    assert event.data["customerId"] == "c-7"


class HangingUp:
    """A real listener that accepts and at once closes connections, as a broker that is shutting
    down does; after `times` of them it stops listening."""

    def __init__(self, times: int) -> None:
        self.times = times
        self.accepted = 0
        self.server: asyncio.Server | None = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        writer.close()
        if self.accepted >= self.times and self.server is not None:
            self.server.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


async def test_a_broker_hanging_up_does_not_hide_one_that_answers(bootstrap_servers: str) -> None:
    # One broker of the list shutting down: the preflight goes on to the next one and passes,
    # rather than tell of a protocol mismatch.
    async with HangingUp(times=10) as closing:
        assert await answers_metadata(
            f"{closing},{bootstrap_servers}",
            within=FAST,
            security=KafkaSecurity.from_variables({}),
            strict=True,
        )


async def test_a_lone_broker_that_hangs_up_once_is_asked_again_before_it_is_blamed() -> None:
    security = KafkaSecurity.from_variables({})
    # It hangs up once and then is gone (a broker going down): down, not a protocol mismatch.
    going_down = HangingUp(times=1)
    async with going_down as address:
        assert not await answers_metadata(address, within=FAST, security=security, strict=True)
    assert going_down.accepted == 1
    # It hangs up every time: that listener speaks another protocol.
    mismatched = HangingUp(times=100)
    async with mismatched as address:
        with pytest.raises(KafkaAuthenticationError, match="closed it during the PLAINTEXT"):
            await answers_metadata(address, within=FAST, security=security, strict=True)
    assert mismatched.accepted >= 4  # a probe and a handshake, twice
