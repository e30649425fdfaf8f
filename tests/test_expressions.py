"""The flow expression language: CEL over event data, with exact decimals and clear errors."""

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from bus.errors import BusError
from bus.flows.expressions import (
    Expression,
    ExpressionError,
    _to_cel,
    compile_expression,
)

PLACED_AT = datetime(2026, 11, 24, 1, 40, 6, 123000, tzinfo=UTC)


def money(amount: str) -> dict[str, Any]:
    return {"amount": Decimal(amount), "currency": "EUR"}


# As fastavro decodes an order: nested records, a list, a map, decimals, a timestamp, nulls.
ORDER: dict[str, Any] = {
    "orderId": "o-1001",
    "customerId": "c-42",
    "name": "Ada Lovelace",
    "email": "Ada@Example.com",
    "phone": None,
    "channel": "WEB",
    "quantity": 3,
    "vip": True,
    "score": 0.5,
    "lines": [
        {"sku": "SKU-1", "description": "Widget", "quantity": 2, "unitPrice": money("19.99")},
        {"sku": "SKU-2", "description": None, "quantity": 1, "unitPrice": money("5.00")},
    ],
    "total": money("44.98"),
    "address": {"line1": "1 Main St", "line2": None, "city": "Berlin", "country": "DE"},
    "billingAddress": None,
    "metadata": {"campaign": "spring"},
    "placedAt": PLACED_AT,
}
ATTRIBUTES: dict[str, Any] = {
    "id": "e-1",
    "source": "/shop",
    "type": "com.acme.orders.OrderPlaced",
    "subject": None,
    "time": PLACED_AT,
    "key": "c-42",
}


def evaluate(source: str, event: dict[str, Any] | None = None) -> Any:
    return compile_expression(source).evaluate(ORDER if event is None else event, ATTRIBUTES)


def failure(source: str, event: dict[str, Any] | None = None) -> str:
    with pytest.raises(ExpressionError) as raised:
        evaluate(source, event)
    assert raised.value.source == source
    return str(raised.value)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ('event.email != ""', True),
        ('event.email == ""', False),
        ('event.address.country in ["DE", "FR"]', True),
        ('event.address.country in ["IT"]', False),
        ("size(event.lines) > 0", True),
        ("event.vip && event.quantity >= 3", True),
        ("event.score > 0", True),  # a double compares with an int
        ('attributes.type == "com.acme.orders.OrderPlaced"', True),
        ('event.lines.exists(l, l.sku == "SKU-2")', True),
        ("event.lines.all(l, l.quantity > 1)", False),
        ('"spring" in event.metadata.map(k, event.metadata[k])', True),
    ],
)
def test_predicates(source: str, expected: bool) -> None:
    assert compile_expression(source).evaluate_predicate(ORDER, ATTRIBUTES) is expected


def test_keys_and_mappings_give_plain_python_values() -> None:
    assert evaluate("event.customerId") == "c-42"
    assert evaluate("attributes.key") == "c-42"
    assert evaluate("event.address.country") == "DE"
    assert evaluate('event.name + " (CRM)"') == "Ada Lovelace (CRM)"
    assert evaluate("event.quantity * 2") == 6
    assert evaluate("event.lines.map(l, l.sku)") == ["SKU-1", "SKU-2"]
    assert evaluate('{"who": event.customerId, "n": size(event.lines)}') == {"who": "c-42", "n": 2}
    assert evaluate("event.address") == {
        "line1": "1 Main St",
        "line2": None,
        "city": "Berlin",
        "country": "DE",
    }
    assert evaluate('event.quantity > 2 ? "many" : "few"') == "many"
    assert evaluate('b"\\x00\\xff"') == b"\x00\xff"


def test_null_and_missing_fields() -> None:
    assert evaluate("event.phone") is None
    assert evaluate("event.phone == null") is True
    # has() means "there and not null", so it works for Avro optional fields, which are null.
    assert evaluate("has(event.phone)") is False
    assert evaluate("has(event.email)") is True
    assert evaluate("has(event.phone)", ORDER | {"phone": "+49 30 1234"}) is True
    assert evaluate("has(event.nope)") is False
    assert evaluate("has(event.metadata.campaign) && !has(event.metadata.ref)") is True
    assert evaluate("event.lines.filter(l, has(l.description)).map(l, l.sku)") == ["SKU-1"]
    assert evaluate('has(event.billingAddress) ? event.billingAddress.city : "none"') == "none"
    # Only the has() macro changes, never a string that looks like it.
    assert evaluate('"has(event.phone)" + (has(event.phone) ? "" : "?")') == "has(event.phone)?"


def test_decimals_stay_exact() -> None:
    total = evaluate("event.total.amount")
    assert type(total) is Decimal
    assert total == Decimal("44.98")
    assert str(total) == "44.98"  # the scale too
    assert evaluate("event.lines")[1]["unitPrice"]["amount"] == Decimal("5.00")
    # Inside an expression a decimal is its exact text, never a double.
    assert evaluate('{"amount": event.total.amount}') == {"amount": "44.98"}
    assert evaluate("event.lines.map(l, l.unitPrice.amount)") == ["19.99", "5.00"]
    huge = ORDER | {"total": money("1234567890123456.78")}
    assert evaluate("[event.total.amount]", huge) == ["1234567890123456.78"]
    assert evaluate("[event.total.amount]", ORDER | {"total": money("1E-7")}) == ["0.0000001"]
    # Arithmetic and ordering go through an explicit double().
    assert evaluate("double(event.total.amount) > 40") is True
    assert evaluate("double(event.total.amount) * 2.0") == pytest.approx(89.96)
    message = failure("event.total.amount * 2")
    assert "event.total.amount is a decimal (a string in expressions)" in message


def test_timestamps_in_and_out() -> None:
    assert evaluate("event.placedAt") == PLACED_AT
    assert evaluate("[event.placedAt]") == [PLACED_AT]
    assert evaluate('event.placedAt + duration("1h")') == PLACED_AT + timedelta(hours=1)
    assert evaluate('event.placedAt > timestamp("2026-01-01T00:00:00Z")') is True
    assert evaluate("event.placedAt.getFullYear()") == 2026
    assert evaluate("event.placedAt.getMilliseconds()") == 123
    assert evaluate("attributes.time == event.placedAt") is True
    assert evaluate('timestamp("2026-11-24T01:40:06.123Z") - event.placedAt') == timedelta(0)
    assert evaluate("string(event.placedAt)") == "2026-11-24T01:40:06.123+00:00"
    naive = ORDER | {"placedAt": datetime(2026, 11, 24, 1, 40, 6)}
    assert evaluate("[event.placedAt]", naive) == [datetime(2026, 11, 24, 1, 40, 6, tzinfo=UTC)]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ('event.email.startsWith("Ada")', True),
        ('event.email.endsWith(".com")', True),
        ('event.email.contains("@")', True),
        ('event.email.matches("^[^@]+@[^@]+$")', True),
        ("size(event.name)", 12),
        ("event.name.size()", 12),
        ("event.email.lowerAscii()", "ada@example.com"),
        ("event.channel.upperAscii()", "WEB"),
        ('"  x ".trim()', "x"),
        ('event.email.split("@")', ["Ada", "Example.com"]),
        ('event.name.replace(" ", "_")', "Ada_Lovelace"),
        ('[event.customerId, event.channel].join("/")', "c-42/WEB"),
        ("event.name.substring(0, 3)", "Ada"),
        ('event.email.indexOf("@")', 3),
        ("string(event.quantity) + event.customerId", "3c-42"),
    ],
)
def test_string_functions(source: str, expected: object) -> None:
    assert evaluate(source) == expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            "event.email ==",
            "expression 'event.email ==' does not compile: at line 1, column 15: Syntax error: "
            "mismatched input '<EOF>'",
        ),
        (
            "event.email.startsWith(1",
            "does not compile: at line 1, column 25: Syntax error: missing ')' at '<EOF>'",
        ),
        ("foo(", "expression 'foo(' does not compile: at line 1, column 5: Syntax error"),
        (
            "foo(1)",
            "expression 'foo(1)' does not compile: unknown function foo() at line 1, column 1",
        ),
        (
            "event.email.lowercase()",
            "unknown function lowercase() at line 1, column 13 (did you mean 'lowerAscii'?)",
        ),
        (
            'evnt.email == ""',
            "unknown name 'evnt' at line 1, column 1; expressions here see `event` and "
            "`attributes` (did you mean 'event'?)",
        ),
        ("event.a &&\n  eventt.b", "unknown name 'eventt' at line 2, column 3"),
    ],
)
def test_compile_errors_say_what_and_where(source: str, expected: str) -> None:
    with pytest.raises(ExpressionError) as raised:
        compile_expression(source)
    assert expected in str(raised.value)
    assert raised.value.source == source
    assert isinstance(raised.value, BusError)


def test_compile_error_shows_the_spot() -> None:
    with pytest.raises(ExpressionError) as raised:
        compile_expression("event.email ==")
    assert str(raised.value).endswith("| event.email ==\n| ..............^")


def test_runtime_errors_name_the_field_or_the_types() -> None:
    assert failure("event.nope") == "expression 'event.nope' failed: event has no field 'nope'"
    assert failure('event.nope == ""') == (
        "expression 'event.nope == \"\"' failed: event has no field 'nope'"
    )
    assert failure("event.address.zip") == (
        "expression 'event.address.zip' failed: event.address has no field 'zip'"
    )
    assert failure("size(event.address.zip) > 1").endswith("event.address has no field 'zip'")
    assert failure("event.billingAddress.city").endswith(
        "failed: event.billingAddress is null, so it has no field 'city'"
    )
    assert failure('event.quantity + "x"') == (
        "expression 'event.quantity + \"x\"' failed: No such overload: the operation is not "
        "defined for the given operand types (event.quantity is an int)"
    )
    assert failure("event.quantity + event.score").endswith(
        "(event.quantity is an int; event.score is a double)"
    )
    assert failure("event.email.startsWith(1)").endswith(
        "failed: function startsWith() does not take arguments of these types "
        "(event.email is a string)"
    )
    assert failure("event.quantity / 0") == (
        "expression 'event.quantity / 0' failed: division by zero in CEL expression"
    )
    assert failure("event.lines[5]").endswith("failed: index out of bounds: 5")
    assert failure('event.metadata["ref"]').endswith("failed: no map key 'ref'")
    assert failure("event.metadata[event.channel]").endswith("failed: no map key")  # not 'WEB'
    with pytest.raises(ExpressionError, match="attributes has no field 'time'"):
        compile_expression("attributes.time").evaluate(ORDER)


def test_a_predicate_must_give_a_bool() -> None:
    with pytest.raises(ExpressionError) as raised:
        compile_expression("event.email").evaluate_predicate(ORDER, ATTRIBUTES)
    assert str(raised.value) == (
        "expression 'event.email' failed: expected true or false, got a string"
    )
    with pytest.raises(ExpressionError, match="expected true or false, got null"):
        compile_expression("event.phone").evaluate_predicate(ORDER)
    with pytest.raises(ExpressionError, match="expected true or false, got an int"):
        compile_expression("size(event.lines)").evaluate_predicate(ORDER)


def test_compiled_once_per_source_text() -> None:
    first = compile_expression("event.customerId")
    assert isinstance(first, Expression)
    assert compile_expression("event.customerId") is first
    assert compile_expression(" event.customerId") is not first
    assert first.source == "event.customerId"


class Secretive:
    """A Python object with attributes and methods that no expression may reach."""

    password = "hunter2"

    def __str__(self) -> str:
        return self.password

    def __float__(self) -> float:
        return 1.0


def test_no_way_into_python_objects() -> None:
    for source in ("event.__class__", "event.__class__.__name__", 'event.__class__ == ""'):
        assert "event has no field '__class__'" in failure(source)
    with pytest.raises(ExpressionError, match=r"unknown function __len__\(\)"):
        compile_expression("event.email.__len__()")
    with pytest.raises(ExpressionError, match=r"unknown function getattr\(\)"):
        compile_expression('getattr(event, "email")')
    with pytest.raises(ExpressionError, match=r"unknown function __import__\(\)"):
        compile_expression('__import__("os")')
    with pytest.raises(ExpressionError, match="unknown name '__builtins__'"):
        compile_expression("__builtins__.open")
    # A value the runtime would quietly turn into a number (through __float__) is refused.
    message = failure("[event.secret.password]", ORDER | {"secret": Secretive()})
    assert message.endswith("cannot read a value of Python type Secretive")
    assert "hunter2" not in message
    assert failure("[event.big]", ORDER | {"big": 2**64}).endswith("an integer beyond 64 bits")


def test_results_never_alias_the_event() -> None:
    address = evaluate("event.address")
    address["country"] = "FR"
    evaluate("event.lines")[0]["sku"] = "changed"
    assert ORDER["address"]["country"] == "DE"
    assert ORDER["lines"][0]["sku"] == "SKU-1"


@pytest.mark.parametrize(
    "source",
    [
        'event.channel == "WEB" && event.address.country in ["DE"]',
        "size(event.lines) + size(event.address)",
        "event.lines.map(l, double(l.unitPrice.amount) * double(l.quantity))",
        'event.metadata.exists(k, k == "campaign")',
        "event . address . city",
        "event.address.city + event.address.country",
        "size(event)",
        '"event.phone" + event.email',
        "event.lines[0].unitPrice",
        "[attributes.time, attributes.subject, event.placedAt]",
        "event.lines.exists(event, event.quantity > 1)",
    ],
)
def test_reading_only_the_fields_used_gives_what_reading_all_gives(source: str) -> None:
    expression = compile_expression(source)
    everything = {"event": _to_cel(ORDER), "attributes": _to_cel(ATTRIBUTES)}
    assert expression.evaluate(ORDER, ATTRIBUTES) == expression._program.execute(everything)


# --- review findings -------------------------------------------------------------------------


def test_timestamps_are_read_in_utc_whatever_their_offset() -> None:
    moment = datetime(2026, 11, 24, 1, 40, 6, tzinfo=timezone(timedelta(hours=2)))
    hours = compile_expression("attributes.time.getHours()")
    assert hours.evaluate({}, {"time": moment}) == 23


def test_a_list_too_long_for_an_expression_is_refused() -> None:
    expression = compile_expression("event.lines.size() > 0")
    with pytest.raises(ExpressionError, match=r"a list of 10001 elements \(at most 10000"):
        expression.evaluate({"lines": list(range(10_001))})


def test_an_overlong_expression_is_refused_when_compiled() -> None:
    with pytest.raises(ExpressionError, match=r"at most 4096 are accepted"):
        compile_expression("1" + " + 1" * 2000)


def test_a_value_nested_too_deep_is_an_expression_error() -> None:
    deep: dict[str, object] = {}
    node = deep
    for _ in range(2000):
        node["a"] = {}
        node = node["a"]  # type: ignore[assignment]
    with pytest.raises(ExpressionError, match="nested this deep"):
        compile_expression("size(event.a) >= 0").evaluate(deep)


@pytest.mark.parametrize(
    "source",
    ["has(event.lines[1].description)", "has(event.address.line2 // why\n)"],
)
def test_a_has_the_rewrite_cannot_read_is_refused(source: str) -> None:
    with pytest.raises(ExpressionError, match=r"has\(\) takes a plain field path"):
        compile_expression(source)


def test_has_inside_a_string_is_left_alone() -> None:
    assert compile_expression('"has(x[1])" != ""').evaluate({}) is True


@pytest.mark.parametrize(
    ("source", "event", "secret"),
    [
        ("duration(event.customerId)", {"customerId": "c-4711"}, "c-4711"),
        ("event.q * 9223372036854775807", {"q": 3}, "9223372036854775807"),
        ("event.note.matches(event.note + '(')", {"note": "p4ss("}, "p4ss("),
    ],
)
def test_runtime_errors_do_not_quote_event_values(
    source: str, event: dict[str, Any], secret: str
) -> None:
    with pytest.raises(ExpressionError) as raised:
        compile_expression(source).evaluate(event)
    problem = raised.value.problem
    assert secret not in problem
    assert problem.startswith("failed: ")
