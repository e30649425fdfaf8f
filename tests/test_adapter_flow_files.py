"""Mistakes in adapter items (rest, soap, lookups) are found by `bus validate`, each with its file,
line and key path."""

import textwrap
from pathlib import Path

import pytest

from bus.events.catalog import SchemaCatalog
from bus.flows.loading import FlowFileError, load_flow_files
from bus.flows.validation import validate_flows
from bus.plugins import installed_adapters

ROOT = Path(__file__).resolve().parents[1]
CATALOG = SchemaCatalog.load(ROOT / "schemas")

GOOD_EVENT = """
        event:
          type: com.acme.crm.CustomerChanged
          map: {customerId: body.id, change: '"CREATED"', email: body.email, name: body.name,
                changedAt: body.at}
        topic: t"""


def problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "flow.yaml"
    path.write_text(textwrap.dedent(text))
    try:
        return validate_flows(load_flow_files([path]), CATALOG)
    except FlowFileError as invalid:
        return list(invalid.problems)


def test_the_rest_adapter_is_registered_as_an_entry_point() -> None:
    assert "rest" in installed_adapters()


def test_a_valid_rest_file_has_no_problems(tmp_path: Path) -> None:
    text = f"""
    inbound:
      - name: hook
        rest: {{path: /hook, auth: {{api_key: {{keys: [k]}}}}}}{GOOD_EVENT}
    outbound:
      - name: out
        from: t
        rest: {{url: "https://x.example/c/{{event.customerId}}", headers: {{X-A: event.email}}}}
        reply: {{type: com.acme.erp.CustomerUpsertResult, topic: r,
                 map: {{customerId: event.customerId, outcome: '"UPDATED"',
                        processedAt: response.body.at}}}}
    """
    assert problems(tmp_path, text) == []


@pytest.mark.parametrize(
    ("rest", "where", "words"),
    [
        ("{paht: /hook}", "inbound[0].rest.paht", ["unknown key", "path"]),
        ("{}", "inbound[0].rest", ["either path", "poll"]),
        ("{path: hook}", "inbound[0].rest.path", ["pattern"]),
        ("{path: /hook, method: GET}", "inbound[0].rest.method", ["POST"]),
        ("{path: /hook, max_body: lots}", "inbound[0].rest.max_body", ["512KiB"]),
        ("{path: /hook, auth: {api_key: {}, basic: {}}}", "inbound[0].rest.auth", ["one"]),
    ],
)
def test_inbound_settings_mistakes(tmp_path: Path, rest: str, where: str, words: list[str]) -> None:
    text = f"""
    inbound:
      - name: hook
        rest: {rest}{GOOD_EVENT}
    """
    found = problems(tmp_path, text)
    assert found, "expected a problem"
    assert any(where in problem and all(w in problem for w in words) for problem in found), found
    assert all(problem.startswith(str(tmp_path / "flow.yaml") + ":") for problem in found)


def test_inbound_expressions_see_the_request_not_the_event(tmp_path: Path) -> None:
    text = """
    inbound:
      - name: hook
        rest: {path: /hook}
        event:
          type: com.acme.crm.CustomerChanged
          map: {customerId: event.id, change: '"CREATED"', email: body.email, name: body.name,
                changedAt: body.at}
        topic: t
    """
    (problem,) = problems(tmp_path, text)
    assert "inbound[0].event.map.customerId" in problem
    assert "unknown name 'event'" in problem
    assert "`body`" in problem


def test_outbound_mistakes_point_at_their_key(tmp_path: Path) -> None:
    text = """
    outbound:
      - name: out
        from: t
        rest: {url: "https://x.example/{evnt.id}", method: FETCH}
        map: {a: response.status}
        reply: {type: com.acme.erp.CustomerUpsertResult, topic: r,
                map: {customerId: body.id, outcome: '"UPDATED"', processedAt: response.body.at}}
    """
    found = problems(tmp_path, text)
    assert any("outbound[0].rest.method" in p for p in found), found
    text = text.replace(", method: FETCH", "")
    found = problems(tmp_path, text)
    assert any("outbound[0].rest.url" in p and "'evnt'" in p for p in found), found
    assert any("outbound[0].map.a" in p and "'response'" in p for p in found), found
    assert any("outbound[0].reply.map.customerId" in p and "'body'" in p for p in found), found


def test_an_unknown_adapter_and_a_path_served_twice(tmp_path: Path) -> None:
    text = f"""
    inbound:
      - name: first
        rest: {{path: /hook}}{GOOD_EVENT}
      - name: second
        rest: {{path: /hook}}{GOOD_EVENT}
      - name: third
        ftp: {{host: x}}{GOOD_EVENT}
    """
    found = problems(tmp_path, text)
    assert any(
        "inbound[1].rest.path" in p and "already served by inbound 'first'" in p for p in found
    )
    assert any("inbound[2].ftp" in p and "no adapter named 'ftp'" in p for p in found), found


def test_publish_api_mistakes(tmp_path: Path) -> None:
    text = """
    http:
      publish:
        events: {com.acme.crm.Nope: t}
        auth: {api_kee: {keys: [k]}}
    """
    found = problems(tmp_path, text)
    assert any("http.publish.events.com.acme.crm.Nope" in p for p in found), found
    assert any("http.publish.auth.api_kee" in p for p in found), found


def test_secrets_do_not_show_in_problems(tmp_path: Path) -> None:
    text = """
    inbound:
      - name: hook
        rest: {path: /hook, auth: {basic: {users: {crm: 12345678}}, hmac: {secrets: [topsecret]}}}
        event: {type: com.acme.crm.CustomerChanged}
        topic: t
    """
    found = "\n".join(problems(tmp_path, text))
    assert found
    assert "topsecret" not in found
    assert "12345678" not in found


def test_soap_items_are_checked_against_their_wsdl(tmp_path: Path) -> None:
    wsdl = ROOT / "tests" / "data" / "wsdl" / "erp-accounts.wsdl"
    text = f"""
    lookups:
      - name: erp
        soap: {{wsdl: {wsdl}, service: ErpService, port: ErpPort, operation: GetCustomr}}
    outbound:
      - name: out
        from: t
        soap: {{wsdl: {wsdl}, service: ErpService, port: ErpPort, operation: UpsertCustomer}}
        map: {{CustomerIdd: event.customerId}}
    mediation:
      - name: flow
        from: t
        to: u
        steps:
          - enrich: {{lookup: erp-missing, with: {{CustomerId: event.customerId}}, into: account}}
    """
    found = problems(tmp_path, text)
    assert any("lookups[0].soap.operation" in p and "GetCustomer" in p for p in found), found
    assert any("outbound[0].map.CustomerIdd" in p for p in found), found
    assert any("no lookup named 'erp-missing'" in p and "erp" in p for p in found), found
