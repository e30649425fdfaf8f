"""The flow expression language: CEL (the Common Expression Language), compiled once per flow.

Mediation expressions see two variables: `event`, the event's data, and `attributes`, its
CloudEvents attributes; adapters compile theirs with other names (an inbound call's `body`,
`headers`, ...; a response's `response`). CEL cannot loop without bound, call into Python
objects or read their attributes: values are copied into the CEL runtime (the Rust `cel` crate,
through the `common-expression-language` package), so an expression only ever sees plain data.
docs/expressions.md is the user's guide and says why this library.
"""

import difflib
import re
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, TypeAlias
from uuid import UUID

import cel
from cel import stdlib

from bus.errors import BusError
from bus.flows.expressions_python import UNDECIDED, Evaluate, compile_python

VARIABLES = ("event", "attributes")
"""The names a mediation expression sees; `compile_expression(..., variables=)` sets others."""
MAX_SOURCE_LENGTH = 4096  # deeply nested or endless expressions crash the runtime's parser
MAX_LIST_LENGTH = 10_000

# Names that `Program.variables()` reports for a CEL type used as a value: `type(x) == string`.
_TYPE_NAMES = frozenset(
    {"int", "uint", "double", "bool", "string", "bytes", "list", "map", "null_type", "type"}
)
_OPERATORS = frozenset(
    {
        "_+_", "_-_", "_*_", "_/_", "_%_", "-_", "!_", "_==_", "_!=_", "_<_", "_<=_", "_>_",
        "_>=_", "_&&_", "_||_", "_?_:_", "_[_]", "@in", "@not_strictly_false",
    }
)  # fmt: skip
_BUILTINS = frozenset(
    {
        "size", "contains", "startsWith", "endsWith", "matches", "int", "uint", "double",
        "string", "bytes", "timestamp", "duration", "dyn", "type", "getFullYear", "getMonth",
        "getDayOfYear", "getDayOfMonth", "getDate", "getDayOfWeek", "getHours", "getMinutes",
        "getSeconds", "getMilliseconds",
    }
)  # fmt: skip


def _join(items: list[Any], separator: str = "") -> str:
    # The library's join would join the characters of a string; CEL's takes a list only.
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise TypeError("join() takes a list of strings")
    return separator.join(items)


# cel-go's string extension, which the Rust runtime lacks; they run as Python callbacks that
# receive and return plain values, and are registered only for the expressions that call them.
_EXTENSIONS: dict[str, Callable[..., Any]] = {
    "charAt": stdlib.char_at,
    "indexOf": stdlib.index_of,
    "lastIndexOf": stdlib.last_index_of,
    "lowerAscii": stdlib.lower_ascii,
    "upperAscii": stdlib.upper_ascii,
    "replace": stdlib.replace,
    "split": stdlib.split,
    "substring": stdlib.substring,
    "trim": stdlib.trim,
    "join": _join,
}
_FUNCTIONS = _BUILTINS | _EXTENSIONS.keys()

NAME_PATTERN = r"[A-Za-z_][A-Za-z0-9_]*\b"
# A field selection: `.name` not followed by `(`, which would make it a method call.
_SELECT = re.compile(rf"\s*\.\s*({NAME_PATTERN})(?!\s*\()")
_BOUND = re.compile(rf"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*({NAME_PATTERN})\s*,")
_PATH = re.compile(rf"\s*({NAME_PATTERN}(?:\s*\.\s*{NAME_PATTERN})*)\s*")
LITERAL_OR_COMMENT = (
    r"//[^\n]*"
    r"|(?:[bB]?[rR]|[rR][bB])(?:'''[\s\S]*?'''|\"\"\"[\s\S]*?\"\"\"|'[^'\n]*'|\"[^\"\n]*\")"
    r"|[bB]?(?:'''(?:\\[\s\S]|[\s\S])*?'''|\"\"\"(?:\\[\s\S]|[\s\S])*?\"\"\""
    r"|'(?:\\.|[^'\\\n])*'|\"(?:\\.|[^\"\\\n])*\")"
)
_HAS = re.compile(
    rf"(?P<skip>{LITERAL_OR_COMMENT})|\bhas\s*\(\s*(?P<path>{NAME_PATTERN}(?:\s*\.\s*{NAME_PATTERN})+)\s*\)"
)
_PARSE_ERROR = re.compile(r"ERROR: <input>:(\d+):(\d+): ")

# Which parts of a variable an expression reads: None for all of it, else field -> parts.
_Paths: TypeAlias = "dict[str, _Paths] | None"


class ExpressionError(BusError):
    """An expression does not compile, or failed on an event. `source` is the expression; the
    message quotes it and says what is wrong and where, naming fields and types rather than
    showing the event's values."""

    def __init__(self, source: str, problem: str) -> None:
        self.source = source
        self.problem = problem
        super().__init__(f"expression {source!r} {problem}")


class Expression:
    """A compiled expression; get one from `compile_expression`."""

    __slots__ = (
        "_chains",
        "_direct",
        "_functions",
        "_paths",
        "_program",
        "_python",
        "source",
        "variables",
    )

    def __init__(
        self,
        source: str,
        program: cel.Program,
        functions: set[str],
        variables: tuple[str, ...] = VARIABLES,
    ) -> None:
        self.source = source
        self.variables = variables
        self._program = program
        self._functions = {name: _EXTENSIONS[name] for name in functions & _EXTENSIONS.keys()}
        self._chains = {var: _chains(source, var) for var in variables}
        self._paths = {var: _trie(chains) for var, chains in self._chains.items() if chains}
        # A bare field path is read in Python: exact for every value (a Decimal stays one), and
        # the commonest mapping costs no conversion at all.
        direct = _PATH.fullmatch(source)
        path = re.split(r"\s*\.\s*", direct.group(1)) if direct else []
        self._direct = path if path and path[0] in variables else None
        # The common small predicates and keys are answered in Python when CEL's answer is
        # certain, and by the program otherwise (bus/flows/expressions_python.py).
        self._python: Evaluate | None = None
        if self._direct is None:
            self._python = compile_python(source, variables, self._paths)

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"

    @property
    def is_path(self) -> bool:
        """Whether the expression is a bare field path, like `body.customer.email`."""
        return self._direct is not None

    def evaluate(
        self, event: Mapping[str, Any], attributes: Mapping[str, Any] | None = None
    ) -> Any:
        """The expression's value for one event, as plain Python values (see docs/expressions.md
        for how decimals, timestamps and null come back)."""
        return self.evaluate_in({"event": event, "attributes": attributes or {}})

    def evaluate_in(
        self, values: Mapping[str, Any], *, fast: bool = True, copy: bool = True
    ) -> Any:
        """The expression's value over named variables (those it was compiled with); a missing
        variable reads as an empty mapping. `fast=False` skips the Python fast path (for tests
        that hold it to CEL's answers). `copy=False` may return a part of `values` itself (a
        bare path to a map or list), for a caller that copies anyway."""
        if fast and self._python is not None:
            result = self._python(values)
            if result is not UNDECIDED:
                return result
            # else CEL decides: its value, or its error and message
        values = {var: values.get(var, {}) for var in self.variables}
        if self._direct is not None:
            found = self._read_path(values, self._direct)
            return _copied(found) if copy else found
        variables: dict[str, Any] = dict(self._functions)
        try:
            for var, paths in self._paths.items():
                variables[var] = _select(values[var], paths)
        except _UnsupportedValueError as unsupported:
            raise ExpressionError(self.source, f"cannot read {unsupported}") from None
        except RecursionError:
            raise ExpressionError(self.source, "cannot read a value nested this deep") from None
        try:
            return self._program.execute(variables)
        except (ValueError, TypeError, KeyError, IndexError, ArithmeticError, RuntimeError) as exc:
            raise ExpressionError(self.source, self._explain(exc, values)) from exc

    def evaluate_predicate(
        self, event: Mapping[str, Any], attributes: Mapping[str, Any] | None = None
    ) -> bool:
        """`evaluate`, for a condition: anything but true or false is an error."""
        value = self.evaluate(event, attributes)
        if not isinstance(value, bool):
            raise ExpressionError(
                self.source, f"failed: expected true or false, got {_describe(value)}"
            )
        return value

    def _read_path(self, values: Mapping[str, Any], path: list[str]) -> Any:
        value = values[path[0]]
        for depth, name in enumerate(path[1:], start=1):
            problem = _missing(value, ".".join(path[:depth]), name)
            if problem:
                raise ExpressionError(self.source, f"failed: {problem}")
            value = value[name]
        return value

    def _explain(self, exc: Exception, values: Mapping[str, Any]) -> str:
        message = str(exc).strip("'\"") if isinstance(exc, KeyError) else str(exc)
        if isinstance(exc, KeyError):
            for var, chains in self._chains.items():
                for chain in chains:
                    if message in chain:
                        at = chain.index(message)
                        value = _lookup(values[var], chain[:at])
                        problem = _missing(value, ".".join((var, *chain[:at])), message)
                        if problem:
                            return f"failed: {problem}"
            # A key computed from the event is event data: name it only if the text has it.
            return f"failed: no map key{f' {message!r}' if message in self.source else ''}"
        cause = _without_values(message.split(". ")[0].rstrip("."))
        if not isinstance(exc, TypeError | RuntimeError):
            return f"failed: {cause}"
        undeclared = re.match(r"Undefined variable or function: '(\w+)'", cause)
        if undeclared:  # every name was checked at compile time, so the arguments are wrong
            cause = f"function {undeclared[1]}() does not take arguments of these types"
        used = {
            ".".join((var, *chain)): _lookup(values[var], chain)
            for var, chains in self._chains.items()
            for chain in chains
            if chain
        }
        types = "; ".join(f"{path} is {_describe(value)}" for path, value in list(used.items())[:8])
        hint = (
            "; compare or compute with double(...)"
            if any(isinstance(value, Decimal) for value in used.values())
            else ""
        )
        return f"failed: {cause}" + (f" ({types}{hint})" if used else "")


def compile_expression(source: str, variables: tuple[str, ...] = VARIABLES) -> Expression:
    """Parse and check `source` once; the same text and variables give the same object."""
    compiled = _compiled.get((source, variables))
    if compiled is None:
        compiled = _compiled[source, variables] = _compile(source, variables)
    return compiled


_compiled: dict[tuple[str, tuple[str, ...]], Expression] = {}


def _compile(source: str, variables: tuple[str, ...]) -> Expression:
    if len(source) > MAX_SOURCE_LENGTH:
        raise ExpressionError(
            source[:60] + "...",
            f"is {len(source)} characters long; at most {MAX_SOURCE_LENGTH} are accepted "
            "(use a python step for anything bigger)",
        )
    try:
        program = cel.compile(source)
    except ValueError as exc:
        detail = str(exc).removeprefix(f"Failed to parse expression '{source}': ")
        detail = _PARSE_ERROR.sub(lambda m: f"at line {m[1]}, column {m[2]}: ", detail)
        raise ExpressionError(source, f"does not compile: {detail}") from None
    # The runtime declares nothing, so without these checks a misspelt name would only fail on
    # the first event that reaches it.
    bound = set(_BOUND.findall(source))
    for name in sorted(set(program.variables()) - set(variables) - bound - _TYPE_NAMES):
        where = _where(source, rf"\b{name}\b")
        seen = " and ".join(f"`{var}`" for var in variables)
        raise ExpressionError(
            source,
            f"does not compile: unknown name {name!r}{where}; expressions here see "
            f"{seen}{_suggest(name, variables)}",
        )
    functions = set(program.functions())
    for name in sorted(functions - _OPERATORS - _FUNCTIONS):
        where = _where(source, rf"\b{name}\s*\(")
        raise ExpressionError(
            source,
            f"does not compile: unknown function {name}(){where}{_suggest(name, _FUNCTIONS)}",
        )
    # CEL's has() asks whether a map has the key, and Avro gives an optional field that is
    # null the key all the same: so that `has(event.phone)` means "phone is set", it also
    # requires the value to be non-null. String literals and comments are left as they are.
    rewritten = _HAS.sub(
        lambda m: m[0] if m["skip"] else f"({m[0]} && {m['path']} != null)", source
    )
    # A has() the rewrite cannot read (an index, a comment inside) would keep CEL's "present"
    # meaning while its neighbours mean "set": refuse it rather than mean two things.
    code = re.sub(LITERAL_OR_COMMENT, "", _HAS.sub(lambda m: "" if m["path"] else m[0], source))
    if re.search(r"\bhas\s*\(", code):
        raise ExpressionError(
            source,
            "does not compile: has() takes a plain field path such as has(event.address.line2); "
            "for a list element compare with null instead, e.g. event.lines[1].description != null",
        )
    if rewritten != source:
        program = cel.compile(rewritten)
    return Expression(source, program, functions, variables)


_OPERANDS = re.compile(r"\s+on\s+\S+\s+and\s+\S+$")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def _without_values(cause: str) -> str:
    """The runtime's message without the values it quotes: they are event data, and the message
    ends up in dead-letter headers and logs."""
    cause = cause.split("\n", 1)[0]  # a regex error draws the pattern on the next lines
    cause = re.sub(r"Error \{ input: .*?\}", "Error", cause)
    return _QUOTED.sub(_unless_a_name, _OPERANDS.sub("", cause))


def _unless_a_name(quoted: re.Match[str]) -> str:
    """A quoted function or operator name stays; any other quoted text is a value."""
    text = quoted[0][1:-1]
    known = text in _FUNCTIONS or text in _OPERATOR_NAMES or re.fullmatch(r"[A-Za-z_]\w*", text)
    return quoted[0] if known and len(text) <= 40 else "'…'"


_OPERATOR_NAMES = frozenset({"add", "sub", "mul", "div", "rem", "neg"})


def _where(source: str, pattern: str) -> str:
    found = re.search(pattern, source)
    if found is None:
        return ""
    line = source.count("\n", 0, found.start()) + 1
    column = found.start() - (source.rfind("\n", 0, found.start()) + 1) + 1
    return f" at line {line}, column {column}"


def _suggest(name: str, known: Any) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _chains(source: str, var: str) -> list[tuple[str, ...]]:
    """The field paths after each mention of `var`: `event.a.b.c(x)` reads `event.a.b`."""
    chains = []
    for mention in re.finditer(rf"\b{var}\b", source):
        chain, at = [], mention.end()
        while selected := _SELECT.match(source, at):
            chain.append(selected[1])
            at = selected.end()
        chains.append(tuple(chain))
    return chains


def _trie(chains: list[tuple[str, ...]]) -> _Paths:
    """The parts of a variable to copy into CEL. Every mention of the variable is a chain, so
    fields outside all chains cannot change the result; a chain's end is copied whole."""
    root: dict[str, _Paths] = {}
    for chain in sorted(chains, key=len):
        if not chain:
            return None
        node = root
        for name in chain[:-1]:
            child = node.setdefault(name, {})
            if child is None:
                break
            node = child
        else:
            node[chain[-1]] = None
    return root


class _UnsupportedValueError(Exception):
    pass


def _select(value: Any, paths: _Paths) -> Any:
    if paths is None or not isinstance(value, Mapping):
        return _to_cel(value)
    return {name: _select(value[name], sub) for name, sub in paths.items() if name in value}


def _to_cel(value: Any) -> Any:
    """A copy of `value` in the types that the CEL runtime converts exactly."""
    convert = _CONVERT.get(type(value))
    if convert is None:
        # A subclass (an OrderedDict, a StrEnum) converts as its base: the table's order puts
        # bool before int and datetime before date.
        convert = next((c for kind, c in _CONVERT.items() if isinstance(value, kind)), _refuse)
    return convert(value)


def _same(value: Any) -> Any:
    return value


def _int(value: int) -> int:
    if not -(2**63) <= value < 2**64:  # the runtime would quietly make it a double
        raise _UnsupportedValueError("an integer beyond 64 bits")
    return value


def _decimal(value: Decimal) -> str:
    # Exact, never a double; `f` writes 1E-7 as 0.0000001, which double() and pydantic read.
    return format(value, "f")


def _timestamp(value: datetime) -> datetime:
    # The runtime would read a naive datetime in the machine's local zone, and an aware one keeps
    # its offset in getHours() and friends; the documented behaviour is UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _map(value: Mapping[Any, Any]) -> dict[Any, Any]:
    return {key: _to_cel(item) for key, item in value.items()}


def _list(value: list[Any] | tuple[Any, ...]) -> list[Any]:
    # The runtime's map() and filter() take time quadratic in the list's length; a bound keeps
    # one record from holding the event loop that every flow shares.
    if len(value) > MAX_LIST_LENGTH:
        raise _UnsupportedValueError(
            f"a list of {len(value)} elements (at most {MAX_LIST_LENGTH} reach an expression)"
        )
    return [_to_cel(item) for item in value]


def _refuse(value: Any) -> Any:
    raise _UnsupportedValueError(f"a value of Python type {type(value).__name__}")


_CONVERT: dict[type, Callable[[Any], Any]] = {
    str: _same,
    type(None): _same,
    bool: _same,
    int: _int,
    float: _same,
    bytes: _same,
    Decimal: _decimal,
    datetime: _timestamp,
    date: date.isoformat,
    time: time.isoformat,
    timedelta: _same,
    UUID: str,
    dict: _map,
    Mapping: _map,
    list: _list,
    tuple: _list,
}


def _copied(value: Any) -> Any:
    """`value` with fresh containers, so results never alias the event."""
    if isinstance(value, Mapping):
        return {key: _copied(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_copied(item) for item in value]
    return value


_ABSENT = object()


def _lookup(value: Any, chain: tuple[str, ...]) -> Any:
    for name in chain:
        if not isinstance(value, Mapping) or name not in value:
            return _ABSENT
        value = value[name]
    return value


def _missing(value: Any, where: str, name: str) -> str | None:
    """Why `where.name` cannot be read, or None if it can."""
    if isinstance(value, Mapping):
        return None if name in value else f"{where} has no field {name!r}"
    if value is _ABSENT:
        return None
    return f"{where} is {_describe(value)}, so it has no field {name!r}"


def _describe(value: Any) -> str:
    """The CEL type of a value as an expression sees it, never the value itself."""
    if value is _ABSENT:
        return "not there"
    names = {
        type(None): "null",
        bool: "a bool",
        int: "an int",
        float: "a double",
        str: "a string",
        bytes: "bytes",
        Decimal: "a decimal (a string in expressions)",
        datetime: "a timestamp",
        timedelta: "a duration",
        date: "a date (a string in expressions)",
    }
    for kind, name in names.items():
        if type(value) is kind:
            return name
    if isinstance(value, Mapping):
        return "a map"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"
