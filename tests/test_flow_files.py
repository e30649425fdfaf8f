"""Flow files: they load into the model, and every mistake is named at its file, line and key."""

import json
import re
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from bus.events.catalog import SchemaCatalog
from bus.events.event import Event
from bus.flows.loading import FlowFileError, load_flow_files
from bus.flows.model import (
    EnrichStep,
    FilterStep,
    FlowFile,
    FlowSet,
    OtherwiseRoute,
    PythonStep,
    RateLimit,
    RouteStep,
    SetKeyStep,
    SplitStep,
    TransformStep,
    WhenRoute,
)
from bus.flows.validation import flow_file_json_schema, validate_flows

ROOT = Path(__file__).resolve().parents[1]
FLOWS = ROOT / "tests" / "data" / "flows"
ENVIRON = {"CRM_SECRET": "s3cret"}


def normalise(event: Event) -> Event:
    """The `python` step of tests/data/flows/crm.yaml refers to this function."""
    return event


@pytest.fixture(scope="module")
def catalog() -> SchemaCatalog:
    return SchemaCatalog.load(ROOT / "schemas")


def write(folder: Path, text: str, name: str = "flows.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def load_problems(path: Path, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(FlowFileError) as raised:
        load_flow_files([path], environ or {})
    assert all(problem in str(raised.value) for problem in raised.value.problems)
    return raised.value.problems


def assert_one_problem(problems: list[str], prefix: str, *words: str) -> None:
    assert len(problems) == 1, problems
    assert problems[0].startswith(prefix), problems[0]
    for word in words:
        assert word in problems[0], (word, problems[0])


# -- a valid flow set ---------------------------------------------------------------------------


def test_valid_files_load_with_every_value() -> None:
    flows = load_flow_files([FLOWS / "crm.yaml", FLOWS / "orders.yaml"], ENVIRON)

    assert flows.kafka is not None
    assert flows.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert flows.kafka.schema_registry is None  # `${SCHEMA_REGISTRY_URL:-}`: empty means none
    assert flows.topics is not None
    assert (flows.topics.partitions, flows.topics.replication_factor) == (6, 1)

    (webhook,) = flows.inbound
    assert (webhook.name, webhook.adapter, webhook.topic) == (
        "crm-webhook",
        "rest",
        "crm.customer-changed.v1",
    )
    assert webhook.config["auth"]["hmac"]["secrets"] == ["s3cret"]
    assert webhook.event.type == "com.acme.crm.CustomerChanged"
    assert webhook.event.map == {"customerId": "body.id", "email": "body.email"}

    router, lines = flows.mediation
    assert router.from_ == ("crm.customer-changed.v1",)
    assert (router.guarantee, router.max_in_flight) == ("exactly-once", 50)
    assert router.dlq == "customer-router.dlq"
    assert router.to is None
    assert [type(step).__name__ for step in router.steps] == [
        "FilterStep",
        "SetKeyStep",
        "EnrichStep",
        "PythonStep",
        "TransformStep",
        "RouteStep",
    ]
    assert router.steps[0] == FilterStep(filter='event.email != ""')
    assert router.steps[1] == SetKeyStep(set_key="event.customerId")
    assert router.steps[3] == PythonStep(python="tests.test_flow_files:normalise")
    enrich, transform, route = router.steps[2], router.steps[4], router.steps[5]
    assert isinstance(enrich, EnrichStep)
    assert enrich.enrich.with_ == {"customerId": "event.customerId"}
    assert isinstance(transform, TransformStep)
    assert transform.transform.to == "com.acme.erp.CustomerUpsertRequest"
    assert isinstance(route, RouteStep)
    assert route.route.mode == "first"
    assert route.route.routes == (
        WhenRoute(
            when='event.billingAddress.country in ["DE", "FR"]', to="erp.eu.customer-upsert.v1"
        ),
        OtherwiseRoute(otherwise="erp.us.customer-upsert.v1"),
    )
    assert lines.from_ == ("orders.placed.v1", "orders.replayed.v1")
    assert (lines.guarantee, lines.max_in_flight, lines.dlq) == (
        "at-least-once",
        100,
        "order-lines.dlq",
    )
    assert lines.steps == (SplitStep(split="event.lines"),)

    erp, gateway = flows.outbound
    assert (erp.adapter, erp.config) == (
        "rest",
        {"method": "PUT", "url": "https://erp.example/customers/{event.customerId}"},
    )
    assert erp.retry.attempts == 8
    assert erp.retry.backoff.initial == timedelta(milliseconds=200)
    assert erp.retry.backoff.max == timedelta(seconds=30)
    assert (erp.retry.backoff.multiplier, erp.retry.backoff.jitter) == (2.0, 0.2)
    assert erp.circuit_breaker is not None
    assert erp.circuit_breaker.reset_after == timedelta(seconds=30)
    assert erp.rate_limit == RateLimit(count=50, per_seconds=1)
    assert erp.timeout == timedelta(seconds=10)
    assert erp.reply is not None
    assert erp.reply.type == "com.acme.erp.CustomerUpsertResult"
    assert gateway.rate_limit == RateLimit(count=100, per_seconds=60)
    assert (gateway.timeout, gateway.dlq) == (timedelta(minutes=5), "payment-gateway.dlq")
    assert gateway.retry.backoff.initial == timedelta(milliseconds=200)  # the defaults
    assert gateway.reply is None


def test_valid_files_pass_validation(catalog: SchemaCatalog) -> None:
    flows = load_flow_files([FLOWS / "crm.yaml", FLOWS / "orders.yaml"], ENVIRON)
    assert validate_flows(flows, catalog) == []


def test_a_dumped_file_loads_back_the_same() -> None:
    (file,) = load_flow_files([FLOWS / "crm.yaml"], ENVIRON).files
    dumped = file.model_dump(mode="json", by_alias=True)
    assert dumped["outbound"][0]["rest"] == {
        "method": "PUT",
        "url": "https://erp.example/customers/{event.customerId}",
    }
    assert dumped["outbound"][0]["retry"]["backoff"] == {
        "initial": "200ms",
        "max": "30s",
        "multiplier": 2.0,
        "jitter": 0.2,
    }
    assert dumped["outbound"][0]["rate_limit"] == "50/s"
    assert FlowFile.model_validate(dumped).model_dump(mode="json", by_alias=True) == dumped


def test_items_know_their_lines() -> None:
    flows = load_flow_files([FLOWS / "crm.yaml", FLOWS / "orders.yaml"], ENVIRON)
    router, lines = flows.mediation
    assert router.origin.where() == f"{FLOWS / 'crm.yaml'}:18:5"
    assert router.origin.where("steps", 4, "transform", "to") == f"{FLOWS / 'crm.yaml'}:31:11"
    assert lines.origin.where("steps", 0) == f"{FLOWS / 'orders.yaml'}:7:9"


def test_two_files_merge(tmp_path: Path) -> None:
    first = write(tmp_path, "mediation: [{name: a, from: t1, to: t2}]\n", "a.yaml")
    second = write(tmp_path, "mediation: [{name: b, from: t2, to: t3}]\n", "b.yaml")
    flows = load_flow_files([first, second], {})
    assert [flow.name for flow in flows.mediation] == ["a", "b"]
    assert flows.kafka is None
    assert load_flow_files([], {}) == FlowSet()


def test_json_schema_describes_the_file() -> None:
    schema = flow_file_json_schema()
    assert set(schema["properties"]) == {
        "kafka",
        "topics",
        "http",
        "observability",
        "inbound",
        "mediation",
        "outbound",
        "lookups",
    }
    mediation = schema["$defs"]["Mediation"]
    assert "from" in mediation["properties"]
    assert mediation["additionalProperties"] is False
    assert mediation["properties"]["guarantee"]["enum"] == ["at-least-once", "exactly-once"]
    assert mediation["properties"]["max_in_flight"]["description"]
    assert "adapter" not in schema["$defs"]["Outbound"]["properties"]
    assert schema["$defs"]["Outbound"]["additionalProperties"]["type"] == "object"
    # Editors see `${VAR}` before it is replaced, so patterns let it through.
    duration = re.compile(schema["$defs"]["Outbound"]["properties"]["timeout"]["pattern"])
    assert duration.search("10s")
    assert duration.search("${TIMEOUT:-10s}")
    assert not duration.search("10 seconds")
    assert json.loads(json.dumps(schema)) == schema


def test_anchors_merge_keys_and_own_top_level_keys(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        x-delivery: &delivery
          retry: {attempts: 3}
          timeout: 5s
        outbound:
          - name: erp
            from: t
            rest: {url: "http://erp"}
            <<: *delivery
            timeout: 20s
        """,
    )
    (erp,) = load_flow_files([path], {}).outbound
    assert (erp.retry.attempts, erp.timeout) == (3, timedelta(seconds=20))


# -- environment variables ----------------------------------------------------------------------


def test_environment_variables_are_interpolated(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        kafka:
          bootstrap_servers: ${BROKERS}
          schema_registry: ${REGISTRY:-http://registry:8081}
        mediation:
          - name: a
            from: ${PREFIX}.in
            to: ${PREFIX:-unused}.out
            steps:
              - filter: 'event.note == "$${not a variable}"'
        """,
    )
    flows = load_flow_files([path], {"BROKERS": "kafka-1:9092,kafka-2:9092", "PREFIX": "crm"})
    assert flows.kafka is not None
    assert flows.kafka.bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert flows.kafka.schema_registry == "http://registry:8081"
    (flow,) = flows.mediation
    assert (flow.from_, flow.to) == (("crm.in",), "crm.out")
    assert flow.steps == (FilterStep(filter='event.note == "${not a variable}"'),)


def test_process_environment_is_the_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FLOW_TEST_TOPIC", "from-env")
    path = write(tmp_path, "mediation: [{name: a, from: '${FLOW_TEST_TOPIC}', to: out}]\n")
    assert load_flow_files([path]).mediation[0].from_ == ("from-env",)


def test_missing_environment_variable(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        inbound:
          - name: crm-webhook
            rest: {path: /hooks, auth: {secret: "${CRM_SECRET}"}}
            event: {type: com.acme.crm.CustomerChanged}
            topic: crm.customer-changed.v1
        """,
    )
    assert_one_problem(
        load_problems(path),
        f"{path}:3:41: inbound[0].rest.auth.secret: ",
        "environment variable CRM_SECRET is not set",
        "${CRM_SECRET:-default}",
    )


# -- mistakes found while loading ---------------------------------------------------------------

LOADING_MISTAKES: list[Any] = [
    pytest.param(
        """
        kafka: {bootstrap_servers: "localhost:9092"}
        mediaton:
          - {name: a, from: t, to: u}
        """,
        "2:1: mediaton: ",
        ["unknown key", "did you mean mediation?", "allowed keys: kafka, topics"],
        id="misspelt top-level key",
    ),
    pytest.param(
        """
        mediation:
          - name: a
            from: t
            to: u
            stpes:
              - filter: event.ok
        """,
        "5:5: mediation[0].stpes: ",
        ["unknown key", "did you mean steps?", "allowed keys: name, from, guarantee"],
        id="misspelt flow key",
    ),
    pytest.param(
        """
        mediation:
          - name: a
            from: t
            to: u
            steps:
              - set_key: event.id
              - fliter: event.ok
        """,
        "7:9: mediation[0].steps[1].fliter: ",
        ["unknown step", "did you mean filter?", "filter, set_key, transform"],
        id="misspelt step key",
    ),
    pytest.param(
        """
        mediation:
          - name: a
            from: t
            to: u
            steps:
              - filter: event.ok
                set_key: event.id
        """,
        "6:9: mediation[0].steps[0]: ",
        ["exactly one key", "found 2: filter, set_key", "own '- ' line"],
        id="step with two keys",
    ),
    pytest.param(
        """
        mediation:
          - name: a
            from: t
            to: u
            guarantee: at-most-once
        """,
        "5:5: mediation[0].guarantee: ",
        ["expected 'at-least-once' or 'exactly-once'", "found 'at-most-once'"],
        id="unknown guarantee",
    ),
    pytest.param(
        """
        outbound:
          - name: erp
            from: t
            rest: {url: "http://erp"}
            timeout: 30
        """,
        "5:5: outbound[0].timeout: ",
        ["expected a duration", "200ms, 30s, 5m or 1h", "found 30"],
        id="duration without unit",
    ),
    pytest.param(
        """
        outbound:
          - name: erp
            from: t
            rest: {url: "http://erp"}
            retry:
              backoff: {initial: 30 seconds}
        """,
        "6:17: outbound[0].retry.backoff.initial: ",
        ["expected a duration", "ms, s, m or h", "found '30 seconds'"],
        id="duration in words",
    ),
    pytest.param(
        """
        outbound:
          - name: erp
            from: t
            rest: {url: "http://erp"}
            rate_limit: 50 per second
        """,
        "5:5: outbound[0].rate_limit: ",
        ["expected a rate limit as N/s, N/min or N/h", "found '50 per second'"],
        id="bad rate limit",
    ),
    pytest.param(
        """
        mediation:
          - name: a
            from: [crm.customers, "crm/orders"]
            to: u
        """,
        "3:27: mediation[0].from[1]: ",
        ["expected a Kafka topic name", "'.', '_' or '-'", "found 'crm/orders'"],
        id="invalid topic name",
    ),
    pytest.param(
        """
        mediation:
          - name: a
            from: t
            to: u
            to: v
        """,
        "5:5: mediation[0].to: ",
        ["duplicate key", "already set at line 4"],
        id="duplicate YAML key",
    ),
    pytest.param(
        """
        mediation:
          - name: a
            from: t
           to: u
        """,
        "4:4: YAML syntax: ",
        ["expected <block end>, but found '<block mapping start>'"],
        id="YAML syntax error",
    ),
    pytest.param(
        """
        mediation:
          - name: a
            from: t
            on: u
        """,
        "4:5: mediation[0].on: ",
        ["this key is read as true, but keys are text; quote it"],
        id="key that YAML reads as a boolean",
    ),
    pytest.param(
        """
        mediation:
          - name: Customer Router
            from: t
            to: u
        """,
        "2:5: mediation[0].name: ",
        ["lowercase letters, digits and '-'", "found 'Customer Router'"],
        id="bad flow name",
    ),
    pytest.param(
        """
        mediation:
          - name: a
            to: u
        """,
        "2:5: mediation[0].from: ",
        ["required key is missing"],
        id="missing from",
    ),
    pytest.param(
        """
        inbound:
          - name: crm
            topic: t
            event: {type: com.acme.crm.CustomerChanged}
        """,
        "2:5: inbound[0]: ",
        ["expected one adapter key (rest, soap, ", "found none"],
        id="inbound without adapter",
    ),
    pytest.param(
        """
        mediation:
          - name: a
            from: t
            to: u
            steps:
              - transform:
                  to: CustomerUpsertRequest
                  map: {customerId: event.customerId}
        """,
        "7:11: mediation[0].steps[0].transform.to: ",
        ["expected a schema full name", "e.g. com.acme.crm.CustomerChanged"],
        id="schema name without namespace",
    ),
    pytest.param(
        """
        mediation:
          - name: a
            from: t
            steps:
              - route:
                  routes:
                    - {when: event.eu}
        """,
        "7:15: mediation[0].steps[0].route.routes[0].to: ",
        ["required key is missing"],
        id="when route without to",
    ),
]


@pytest.mark.parametrize(("text", "where", "words"), LOADING_MISTAKES)
def test_loading_mistake(tmp_path: Path, text: str, where: str, words: list[str]) -> None:
    path = write(tmp_path, text)
    assert_one_problem(load_problems(path), f"{path}:{where}", *words)


def test_every_problem_of_every_file_is_reported_at_once(tmp_path: Path) -> None:
    first = write(tmp_path, "mediation: [{name: a, from: t, to: u, guarantee: maybe}]\n", "a.yaml")
    second = write(tmp_path, "mediation: [{name: b, from: t, to: u, max_in_flight: 0}]\n", "b.yaml")
    with pytest.raises(FlowFileError) as raised:
        load_flow_files([first, second], {})
    assert len(raised.value.problems) == 2
    assert raised.value.problems[0].startswith(f"{first}:1:39: mediation[0].guarantee: ")
    assert raised.value.problems[1].startswith(f"{second}:1:39: mediation[0].max_in_flight: ")
    assert "greater than or equal to 1, found 0" in raised.value.problems[1]


def test_duplicate_flow_name_across_files(tmp_path: Path) -> None:
    first = write(
        tmp_path,
        """
        mediation:
          - name: customer-router
            from: t
            to: u
        """,
        "crm.yaml",
    )
    second = write(
        tmp_path,
        """
        outbound:
          - name: erp
            from: u
            rest: {url: "http://erp"}
          - name: customer-router
            from: u
            soap: {wsdl: erp.wsdl}
        """,
        "erp.yaml",
    )
    with pytest.raises(FlowFileError) as raised:
        load_flow_files([first, second], {})
    assert_one_problem(
        raised.value.problems,
        f"{second}:5:5: outbound[1].name: ",
        "'customer-router' is already used by mediation[0]",
        f"at {first}:2:5",
        "unique across all flow files",
    )


def test_kafka_settled_in_two_files_must_agree(tmp_path: Path) -> None:
    first = write(tmp_path, "kafka: {bootstrap_servers: 'kafka-1:9092'}\n", "a.yaml")
    same = write(tmp_path, "kafka: {bootstrap_servers: 'kafka-1:9092'}\n", "b.yaml")
    other = write(
        tmp_path, "# another cluster\nkafka: {bootstrap_servers: 'kafka-2:9092'}\n", "c.yaml"
    )
    assert load_flow_files([first, same], {}).kafka is not None
    with pytest.raises(FlowFileError) as raised:
        load_flow_files([first, same, other], {})
    assert_one_problem(
        raised.value.problems, f"{other}:2:1: kafka: ", f"differs from kafka at {first}:1:1"
    )


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    assert_one_problem(load_problems(missing), f"{missing}: cannot read", "No such file")


# -- mistakes found by validation ---------------------------------------------------------------

TRANSFORM = """
mediation:
  - name: customer-sync
    from: crm.customer-changed.v1
    to: erp.customer-upsert.v1
    steps:
      - transform:
          to: {target}
          map:
            customerId: event.customerId
            legalName: event.name
            email: event.email
            billingAddress: event.address
            salesRegion: '"EU"'
            requestedAt: event.changedAt
{extra}"""

VALIDATION_MISTAKES: list[Any] = [
    pytest.param(
        TRANSFORM.format(target="com.acme.erp.CustomerUpsertRequst", extra=""),
        "7:11: mediation[0].steps[0].transform.to: ",
        [
            "no schema named 'com.acme.erp.CustomerUpsertRequst'",
            "did you mean com.acme.erp.CustomerUpsertRequest",
        ],
        id="unknown schema with a suggestion",
    ),
    pytest.param(
        TRANSFORM.format(target="com.acme.erp.CustomerUpsertRequest", extra="").replace(
            "            email: event.email\n", ""
        ),
        "8:11: mediation[0].steps[0].transform.map: ",
        ["does not map email", "required by com.acme.erp.CustomerUpsertRequest"],
        id="transform missing a required field",
    ),
    pytest.param(
        TRANSFORM.format(
            target="com.acme.erp.CustomerUpsertRequest", extra="            phone: event.phone\n"
        ),
        "15:13: mediation[0].steps[0].transform.map.phone: ",
        [
            "com.acme.erp.CustomerUpsertRequest has no field 'phone'",
            "its fields: customerId, erpAccountId, legalName, email, billingAddress",
        ],
        id="transform mapping a field the target lacks",
    ),
    pytest.param(
        """
        mediation:
          - name: router
            from: t
            steps:
              - route:
                  routes:
                    - {when: event.eu, to: eu}
                    - otherwise: rest
                    - {when: event.us, to: us}
        """,
        "8:15: mediation[0].steps[0].route.routes[1]: ",
        ["otherwise must be the last route"],
        id="otherwise not last",
    ),
    pytest.param(
        """
        mediation:
          - name: router
            from: t
            steps:
              - route:
                  routes:
                    - otherwise: rest
        """,
        "6:11: mediation[0].steps[0].route.routes: ",
        ["a route needs at least one {when: ..., to: ...}"],
        id="route without when",
    ),
    pytest.param(
        """
        mediation:
          - name: a
            from: t
            to: u
          - name: b
            from: t
            steps:
              - filter: event.ok
        """,
        "5:5: mediation[1]: ",
        ["flow 'b' has no `to`", "does not end with a route step", "nowhere to go"],
        id="flow without to",
    ),
    pytest.param(
        """
        mediation:
          - name: a
            from: t
            to: u
            steps:
              - filter: event.email ==
        """,
        "6:9: mediation[0].steps[0].filter: ",
        ["expression 'event.email ==' does not compile"],
        id="expression syntax error",
    ),
    pytest.param(
        """
        mediation:
          - name: a
            from: t
            to: u
            steps:
              - set_key: evnt.customerId
        """,
        "6:9: mediation[0].steps[0].set_key: ",
        ["unknown name 'evnt'", "did you mean 'event'?"],
        id="expression with unknown name",
    ),
    pytest.param(
        """
        mediation:
          - name: a
            from: t
            to: u
            steps:
              - python: no_such_package.flows:normalise
        """,
        "6:9: mediation[0].steps[0].python: ",
        ["module 'no_such_package.flows'", "not found on the Python path"],
        id="python module not found",
    ),
    pytest.param(
        """
        outbound:
          - name: erp
            from: t
            rest: {url: "http://erp"}
            reply:
              type: com.acme.erp.CustomerUpsertResult
              topic: erp.results
              map: {customerId: response.id, outcom: response.outcome}
        """,
        "8:38: outbound[0].reply.map.outcom: ",
        ["CustomerUpsertResult has no field 'outcom'", "did you mean outcome?"],
        id="reply mapping a field the schema lacks",
    ),
    pytest.param(
        TRANSFORM.format(target="com.acme.erp.CustomerUpsertRequest", extra="").replace(
            "    steps:", "    decode: false\n    steps:"
        ),
        "7:9: mediation[0].steps[0].transform: ",
        ["has `decode: false`", "can only filter, route and set_key", "remove `decode: false`"],
        id="a step that needs the data in a flow that does not decode",
    ),
    pytest.param(
        """
        mediation:
          - name: switch
            from: t
            decode: false
            to: out
            steps:
              - filter: event.change != "DELETED"
        """,
        "7:9: mediation[0].steps[0].filter: ",
        ["unknown name 'event'", "the flow has `decode: false`"],
        id="an expression reading the data in a flow that does not decode",
    ),
]


@pytest.mark.parametrize(("text", "where", "words"), VALIDATION_MISTAKES)
def test_validation_mistake(
    tmp_path: Path, catalog: SchemaCatalog, text: str, where: str, words: list[str]
) -> None:
    path = write(tmp_path, text)
    flows = load_flow_files([path], {})
    assert_one_problem(validate_flows(flows, catalog), f"{path}:{where}", *words)


def test_python_module_is_found_without_importing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, catalog: SchemaCatalog
) -> None:
    package = tmp_path / "flowpkg"
    package.mkdir()
    (package / "__init__.py").write_text("raise RuntimeError('imported while validating')\n")
    (package / "steps.py").write_text("def normalise(event): return event\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = write(
        tmp_path,
        """
        mediation:
          - name: a
            from: t
            to: u
            steps:
              - python: flowpkg.steps:normalise
              - enrich: {lookup: "flowpkg.missing:find", into: found}
        """,
    )
    problems = validate_flows(load_flow_files([path], {}), catalog)
    assert_one_problem(
        problems, f"{path}:7:18: mediation[0].steps[1].enrich.lookup: ", "'flowpkg.missing'"
    )
