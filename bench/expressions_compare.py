"""Compare the two CEL libraries for flow expressions: speed, error messages, Python values.

Run `.venv/bin/python bench/expressions_compare.py`; it prints the tables that
docs/expressions.md quotes. Both candidates must be installed (they are not in the lock file
unless chosen): `common-expression-language` (import `cel`) and `cel-python` (import `celpy`).
"""

import datetime
import logging
import platform
import timeit
from collections.abc import Callable
from decimal import Decimal
from functools import partial
from importlib.metadata import version
from typing import Any

import cel
import celpy
from celpy import celtypes
from celpy.celparser import CELParseError, CELParser
from celpy.evaluation import CELEvalError

from bus.flows.expressions import ExpressionError, _to_cel, compile_expression

logging.disable(logging.CRITICAL)  # both libraries log every failed evaluation

UTC = datetime.UTC


def money(amount: str) -> dict[str, Any]:
    return {"amount": Decimal(amount), "currency": "EUR"}


# An OrderPlaced as fastavro decodes it: 17 leaf fields in nested records, a list, a map,
# decimals (bytes, scale 2), a timestamp-millis and null optionals.
EVENT: dict[str, Any] = {
    "orderId": "o-1001",
    "customerId": "c-42",
    "channel": "WEB",
    "lines": [
        {"sku": "SKU-1", "description": "Widget", "quantity": 2, "unitPrice": money("19.99")},
        {"sku": "SKU-2", "description": None, "quantity": 1, "unitPrice": money("5.00")},
    ],
    "total": money("44.98"),
    "shippingAddress": {
        "line1": "1 Main St",
        "line2": None,
        "city": "Berlin",
        "postalCode": "10115",
        "region": None,
        "country": "DE",
    },
    "billingAddress": None,
    "metadata": {"campaign": "spring", "ref": "newsletter"},
    "placedAt": datetime.datetime(2026, 11, 24, 1, 40, 6, 123000, tzinfo=UTC),
}
ATTRIBUTES: dict[str, Any] = {
    "id": "7d0e1f7c-0f5e-4a4e-9a57-1c2d3e4f5a6b",
    "source": "/shop",
    "type": "com.acme.orders.OrderPlaced",
    "subject": None,
    "time": EVENT["placedAt"],
    "key": "c-42",
}
PREDICATE = (
    'event.channel == "WEB" && event.shippingAddress.country in ["DE", "FR"]'
    " && size(event.lines) > 0 && event.billingAddress == null"
)
MAPPING = (
    '{"customer": event.customerId, "country": event.shippingAddress.country,'
    ' "amount": event.total.amount, "lines": size(event.lines), "placedAt": event.placedAt,'
    ' "label": event.customerId + " (CRM)"}'
)
SCALAR_PREDICATE = 'event.channel == "WEB" && event.shippingAddress.country in ["DE", "FR"]'
KEY = "event.customerId"


def per_call_us(call: Callable[[], object]) -> float:
    """Best of 5 runs of at least 0.2 s each, in microseconds per call."""
    timer = timeit.Timer(call)
    number, _ = timer.autorange()
    return min(timer.repeat(repeat=5, number=number)) / number * 1e6


# --- cel-python: values in and out --------------------------------------------------------


CELPY_TYPES: dict[type, Callable[[Any], Any]] = {
    bool: celtypes.BoolType,
    int: celtypes.IntType,
    float: celtypes.DoubleType,
    str: celtypes.StringType,
    bytes: celtypes.BytesType,
    datetime.datetime: celtypes.TimestampType,
}


def to_celpy(value: Any) -> Any:
    """cel-python's own json_to_cel refuses Decimal; this keeps it a Decimal (exact)."""
    if value is None or isinstance(value, Decimal):
        return value
    if isinstance(value, dict):
        return celtypes.MapType({celtypes.StringType(k): to_celpy(v) for k, v in value.items()})
    if isinstance(value, list):
        return celtypes.ListType([to_celpy(v) for v in value])
    return CELPY_TYPES[type(value)](value)


def from_celpy(value: Any) -> Any:
    """Plain Python back: BoolType is an int subclass, the others subclass str, dict, ..."""
    if isinstance(value, celtypes.BoolType):
        return bool(value)
    if isinstance(value, celtypes.MapType):
        return {from_celpy(k): from_celpy(v) for k, v in value.items()}
    if isinstance(value, celtypes.ListType):
        return [from_celpy(v) for v in value]
    if isinstance(value, celtypes.TimestampType):
        return datetime.datetime.fromtimestamp(value.timestamp(), tz=UTC)
    for plain in (str, int, float, bytes):
        if isinstance(value, plain):
            return plain(value)  # type: ignore[arg-type]  # an instance of that very type
    return value


def celpy_runner(runner: type[celpy.Runner]) -> Callable[[str], Callable[..., Any]]:
    CELParser.CEL_PARSER = None  # the parser is a singleton built for one runner's tree class
    environment = celpy.Environment(runner_class=runner)

    def compile_celpy(source: str) -> Callable[..., Any]:
        program = environment.program(environment.compile(source))

        def run(event: Any, attributes: Any) -> Any:
            activation = {"event": to_celpy(event), "attributes": to_celpy(attributes)}
            result = program.evaluate(activation)
            if isinstance(result, CELEvalError):
                raise result
            return from_celpy(result)

        return run

    return compile_celpy


def cel_raw(source: str) -> Callable[..., Any]:
    program = cel.compile(source)
    return lambda event, attributes: program.execute({"event": event, "attributes": attributes})


def bus_cel(source: str) -> Callable[..., Any]:
    return compile_expression(source).evaluate


CANDIDATES: dict[str, Callable[[str], Callable[..., Any]]] = {
    "cel (raw)": cel_raw,
    "cel via bus": bus_cel,
    "celpy interpreted": celpy_runner(celpy.InterpretedRunner),
}


def speed() -> None:
    print("### Speed: µs per evaluation (best of 5, converting the event in and out included)\n")
    compiled_runner = celpy_runner(celpy.CompiledRunner)
    print("| expression | cel (raw) | cel via bus | celpy interpreted | celpy compiled (exec) |")
    print("|---|---:|---:|---:|---:|")
    for name, source in (
        ("predicate, 4 fields incl. `size(event.lines)`", PREDICATE),
        ("predicate on 2 scalar fields", SCALAR_PREDICATE),
        ("mapping to a 6-field map", MAPPING),
        ("key `event.customerId`", KEY),
    ):
        row = []
        for make in (*CANDIDATES.values(), compiled_runner):
            run = make(source)
            row.append(f"{per_call_us(partial(run, EVENT, ATTRIBUTES)):.1f}")
        print(f"| {name} | {' | '.join(row)} |")
    constant = cel.compile("1")
    whole = {"event": EVENT, "attributes": ATTRIBUTES}
    print(
        "| converting the whole event and attributes alone | "
        f"{per_call_us(lambda: constant.execute(whole)):.1f} | "
        f"{per_call_us(lambda: constant.execute(_to_cel(whole))):.1f} | "
        f"{per_call_us(lambda: to_celpy(whole)):.1f} | same |"
    )
    decimals = [Decimal("19.99")] * 100
    print("\n| 100 decimals into the Rust runtime | µs |\n|---|---:|")
    print(
        "| as double, the library's own conversion (lossy) | "
        f"{per_call_us(lambda: constant.execute({'x': decimals})):.1f} |"
    )
    print(
        "| as exact text: `format(d, 'f')`, then converted | "
        f"{per_call_us(lambda: constant.execute({'x': [format(d, 'f') for d in decimals]})):.1f} |"
    )
    print()


def attempt(make: Callable[[str], Callable[..., Any]], source: str) -> str:
    try:
        result = make(source)(EVENT | {"quantity": 3}, ATTRIBUTES)
    except (ExpressionError, CELParseError, CELEvalError) as error:
        text = str(error)
    except Exception as error:  # the point is to show what each library raises
        text = f"{type(error).__name__}: {error}"
    else:
        return f"→ `{result!r}` ({type(result).__name__})"
    text = " ".join(text.split())
    return text if len(text) <= 170 else text[:167] + "..."


def messages() -> None:
    print("### Errors: what each candidate says\n")
    print("| expression | " + " | ".join(CANDIDATES) + " |")
    print("|---|" + "---|" * len(CANDIDATES))
    for source in (
        "event.email ==",
        "event.email.startsWith(1",
        "foo(",
        "foo(1)",
        "evnt.customerId",
        "event.nope",
        'event.quantity + "x"',
        "event.quantity / 0",
        "event.billingAddress.city",
        "event.customerId.startsWith(1)",
    ):
        cells = [attempt(make, source).replace("|", "\\|") for make in CANDIDATES.values()]
        print(f"| `{source}` | " + " | ".join(cells) + " |")
    print()


def values() -> None:
    print("### Python values in and out\n")
    print("| expression | " + " | ".join(CANDIDATES) + " |")
    print("|---|" + "---|" * len(CANDIDATES))
    for source in (
        "event.total.amount",
        '{"a": event.total.amount}',
        "event.total.amount > 40",
        "double(event.total.amount) * 2.0",
        "event.total.amount * 2",
        "event.placedAt",
        "event.billingAddress",
        "has(event.billingAddress)",
        'size("Zürich")',
        "9223372036854775807 + 1",
    ):
        cells = [attempt(make, source).replace("|", "\\|") for make in CANDIDATES.values()]
        print(f"| `{source}` | " + " | ".join(cells) + " |")
    print()


def main() -> None:
    print(
        f"common-expression-language {version('common-expression-language')}, "
        f"cel-python {version('cel-python')}; Python {platform.python_version()} "
        f"on {platform.machine()} {platform.system()}\n"
    )
    speed()
    messages()
    values()


if __name__ == "__main__":
    main()
