"""A Python fast path for a safe subset of CEL, with CEL staying the reference semantics.

Every call into the CEL runtime costs 12-20 µs, mostly converting values into Rust, and a
mediation flow evaluates a few small predicates and keys per record. `compile_python` turns such
an expression into a Python closure over the same values `Expression.evaluate_in` receives. The
closure answers only when CEL's answer is certain (same-typed strings, ints and bools, null
checks, `in` a list literal, `&&`, `||`, `?:`, a few string methods); for anything else — a
missing field, a decimal, a timestamp, a double, a type mismatch, an overflow, an error — it
answers `UNDECIDED`, and the caller asks CEL, whose value or error stands. An expression outside
the subset compiles to None and always goes to CEL.

The subset is parsed here, following CEL's grammar (cel-spec's CEL.g4) for the constructs it
accepts and refusing everything else (comments, escapes beyond the simple ones, floats, uints,
indexing, maps, macros, other functions): the source has already compiled in CEL, so a refusal
only costs speed, and the grammar's precedence and associativity are copied, so an accepted
expression means what CEL parsed.
"""

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any, Final, TypeAlias
from uuid import UUID

Paths: TypeAlias = "dict[str, Paths] | None"
"""What the CEL path copies of a variable (`expressions._trie`): field -> parts, None for all."""
Evaluate: TypeAlias = Callable[[Mapping[str, Any]], Any]
_Env: TypeAlias = list[Any]  # the values of the expression's read paths, in leaf order
_Node: TypeAlias = Callable[[_Env], Any]

_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1
# Containers the expression reads are checked element by element; past this many elements the
# check would cost what it saves, so CEL takes the record.
_CHECK_BUDGET = 256


class _Undecided:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNDECIDED"


UNDECIDED: Final = _Undecided()
"""The fast path's answer when it cannot be sure of CEL's: ask CEL. A value, not an exception:
raising one costs about a microsecond, as much as a whole decided evaluation."""


class _Unreadable(Exception):  # noqa: N818 - an answer, not an error
    """A value the CEL path would convert differently, or refuse: stop reading, ask CEL."""


class _Refused(Exception):  # noqa: N818 - a verdict on the source, not an error
    """The source is outside the subset; CEL evaluates it every time."""


def compile_python(
    source: str, variables: tuple[str, ...], paths: dict[str, Paths]
) -> Evaluate | None:
    """`source` as a Python closure over `{variable: value}`, or None outside the subset.

    `paths` is what `Expression` copies into CEL per variable: the closure checks exactly those
    values, so that wherever the CEL path would refuse one (`cannot read ...`), even in a branch
    that `&&` or `||` never evaluates, the fast path steps aside."""
    try:
        tree = _Parser(_tokens(source), variables).parse()
        leaves = [(var, names) for var, trie in paths.items() for names in _leaf_paths(trie)]
        node = _Builder(leaves).build(tree)
    except (_Refused, RecursionError):  # CEL takes nesting deeper than Python's stack allows
        return None
    readers = [_reader(var, names) for var, names in leaves]

    def evaluate(values: Mapping[str, Any]) -> Any:
        """The value over `{variable: value}` (a missing variable is an empty map), or
        UNDECIDED."""
        try:
            result = node([read(values) for read in readers])
        except (_Unreadable, RecursionError):  # or closures nested deep, called from deep
            return UNDECIDED
        # Other results (a double, a map, a decimal) keep the CEL path's conversions.
        return result if type(result) in _RESULT_TYPES else UNDECIDED

    return evaluate


_RESULT_TYPES = frozenset({str, int, bool, type(None)})


# --- tokens ----------------------------------------------------------------------------------

_WHITESPACE = frozenset(" \t\n\r\f")  # CEL's; other white space would not have compiled
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INT = re.compile(r"0x[0-9a-fA-F]+|[0-9]+")
_SYMBOLS = (
    "==", "!=", "<=", ">=", "&&", "||", "<", ">", "!", "-", "+", "*", "/", "%", "?", ":", ".",
    ",", "(", ")", "[", "]",
)  # fmt: skip
_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "r": "\r", "t": "\t"}


@dataclass(frozen=True)
class _Token:
    kind: str  # "name", "int", "str", "op" or "end"
    value: Any


def _tokens(source: str) -> list[_Token]:
    tokens, at = [], 0
    while at < len(source):
        if source[at] in _WHITESPACE:
            at += 1
        elif source.startswith("//", at):  # a comment: CEL's business
            raise _Refused
        elif source[at] in "\"'":
            text, at = _string(source, at)
            tokens.append(_Token("str", text))
        elif name := _NAME.match(source, at):
            if source[name.end() : name.end() + 1] in ("'", '"'):  # r"..", b"..": not here
                raise _Refused
            tokens.append(_Token("name", name[0]))
            at = name.end()
        elif number := _INT.match(source, at):
            at = number.end()
            tokens.append(_Token("int", _int_literal(number[0], source[at : at + 2])))
        else:
            symbol = next((s for s in _SYMBOLS if source.startswith(s, at)), None)
            if symbol is None:  # `{`, a lone `=`, ...
                raise _Refused
            tokens.append(_Token("op", symbol))
            at += len(symbol)
    tokens.append(_Token("end", None))
    return tokens


def _int_literal(text: str, after: str) -> int:
    # A uint (`1u`), a double (`1.5`, `1e3`) or anything glued to the digits is not an int.
    if after[:1].isalnum() or after[:1] == "_" or (after[:1] == "." and after[1:].isdigit()):
        raise _Refused
    value = int(text, 16) if text.startswith("0x") else int(text)
    if value > _INT_MAX:  # only `-9223372036854775808` would be valid, and is rare
        raise _Refused
    return value


def _string(source: str, at: int) -> tuple[str, int]:
    """A quoted literal from `at`, and where it ends; triple quotes and rare escapes refused."""
    quote, chars = source[at], []
    if source.startswith(quote * 3, at):
        raise _Refused
    at += 1
    while at < len(source) and source[at] != quote:
        char = source[at]
        if char in "\r\n":
            raise _Refused
        if char == "\\":
            char = _ESCAPES.get(source[at + 1 : at + 2], "")
            if not char:
                raise _Refused
            at += 1
        chars.append(char)
        at += 1
    if at >= len(source):
        raise _Refused
    text = "".join(chars)
    if not _encodable(text):
        raise _Refused
    return text, at + 1


# --- syntax ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Lit:
    value: str | int | bool | None


@dataclass(frozen=True)
class _Path:
    var: str
    names: tuple[str, ...]


@dataclass(frozen=True)
class _List:
    items: tuple["_Tree", ...]


@dataclass(frozen=True)
class _Op:
    """An operator or function: `op` is its symbol or name, `args` its operands (a method's
    receiver first)."""

    op: str
    args: tuple["_Tree", ...]


_Tree: TypeAlias = _Lit | _Path | _List | _Op
_RELATIONS = frozenset({"==", "!=", "<", "<=", ">", ">=", "in"})
_METHODS = {"startsWith": 1, "endsWith": 1, "contains": 1, "size": 0}
_KEYWORDS = {"true": True, "false": False, "null": None}


class _Parser:
    """Recursive descent over CEL.g4's rules, each method one rule of the same name."""

    def __init__(self, tokens: list[_Token], variables: tuple[str, ...]) -> None:
        self._tokens = tokens
        self._at = 0
        self._variables = variables

    def parse(self) -> _Tree:
        tree = self._expr()
        self._expect("end")
        return tree

    def _peek(self) -> _Token:
        return self._tokens[self._at]

    def _accept(self, *ops: str) -> str | None:
        token = self._peek()
        if token.kind == "op" and token.value in ops:
            self._at += 1
            return str(token.value)
        if token.kind == "name" and token.value == "in" and "in" in ops:
            self._at += 1
            return "in"
        return None

    def _expect(self, kind: str, value: Any = None) -> _Token:
        token = self._peek()
        if token.kind != kind or (value is not None and token.value != value):
            raise _Refused
        self._at += 1
        return token

    def _expr(self) -> _Tree:
        # expr: conditionalOr ('?' conditionalOr ':' expr)?  (the middle is not a full expr)
        test = self._or()
        if not self._accept("?"):
            return test
        then = self._or()
        self._expect("op", ":")
        return _Op("?:", (test, then, self._expr()))

    def _or(self) -> _Tree:
        tree = self._and()
        while self._accept("||"):
            tree = _Op("||", (tree, self._and()))
        return tree

    def _and(self) -> _Tree:
        tree = self._relation()
        while self._accept("&&"):
            tree = _Op("&&", (tree, self._relation()))
        return tree

    def _relation(self) -> _Tree:
        # All relations share one precedence and associate to the left: `a < b == true`.
        tree = self._calc()
        while op := self._accept(*_RELATIONS):
            right = self._calc()
            if op == "in" and not isinstance(right, _List):
                raise _Refused  # membership in a list literal only
            tree = _Op(op, (tree, right))
        return tree

    def _calc(self) -> _Tree:
        tree = self._product()
        while op := self._accept("+", "-"):
            tree = _Op(op, (tree, self._product()))
        return tree

    def _product(self) -> _Tree:
        tree = self._unary()
        while op := self._accept("*", "/", "%"):
            tree = _Op(op, (tree, self._unary()))
        return tree

    def _unary(self) -> _Tree:
        # unary: member | '!'+ member | '-'+ member  (`!-x` does not parse)
        for op in ("!", "-"):
            count = 0
            while self._accept(op):
                count += 1
            if count:
                tree = self._member()
                for _ in range(count):
                    tree = _Op(op + "_", (tree,))
                return tree
        return self._member()

    def _member(self) -> _Tree:
        tree = self._primary()
        while self._accept("."):
            name = str(self._expect("name").value)
            if self._accept("("):
                tree = _Op(name, (tree, *self._arguments(_METHODS.get(name, -1))))
            elif isinstance(tree, _Path) and name not in _KEYWORDS and name != "in":
                tree = _Path(tree.var, (*tree.names, name))
            else:
                raise _Refused
        if self._peek() == _Token("op", "["):  # indexing
            raise _Refused
        return tree

    def _primary(self) -> _Tree:
        token = self._peek()
        self._at += 1
        if token.kind in ("int", "str"):
            return _Lit(token.value)
        if token.kind == "op" and token.value == "(":
            tree = self._expr()
            self._expect("op", ")")
            return tree
        if token.kind == "op" and token.value == "[":
            return self._list()
        if token.kind != "name":
            raise _Refused
        if token.value in _KEYWORDS:
            return _Lit(_KEYWORDS[token.value])
        if self._accept("("):
            return self._function(str(token.value))
        if token.value in self._variables:
            return _Path(token.value, ())
        raise _Refused

    def _function(self, name: str) -> _Tree:
        if name == "size":
            return _Op("size", self._arguments(1))
        if name == "has":  # bus's has(): present and not null (see expressions._compile)
            (path,) = self._arguments(1)
            if not isinstance(path, _Path) or not path.names:
                raise _Refused
            return _Op("has", (path,))
        raise _Refused

    def _arguments(self, count: int) -> tuple[_Tree, ...]:
        """A call's arguments after its `(`; exactly `count` of them."""
        args: list[_Tree] = []
        if not self._accept(")"):
            args.append(self._expr())
            while self._accept(","):
                args.append(self._expr())
            self._expect("op", ")")
        if len(args) != count:
            raise _Refused
        return tuple(args)

    def _list(self) -> _Tree:
        items: list[_Tree] = []
        while not self._accept("]"):
            items.append(self._expr())
            if not self._accept(","):
                self._expect("op", "]")
                break
        return _List(tuple(items))


# --- reading the values ----------------------------------------------------------------------


class _Gap:
    """A leaf path the values do not have."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_ABSENT = _Gap("absent")  # the parent is a map without the last field: has() is false
_UNREADABLE = _Gap("unreadable")  # an earlier step is missing or not a map: CEL errs


def _leaf_paths(trie: Paths, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if trie is None:
        return [prefix]
    return [leaf for name, sub in trie.items() for leaf in _leaf_paths(sub, (*prefix, name))]


def _reader(var: str, names: tuple[str, ...]) -> Callable[[Mapping[str, Any]], Any]:
    """Reads one leaf the way `expressions._select` copies it, checking what it copies."""
    if len(names) == 1:  # the commonest leaf, unrolled: `event.email`
        (name,) = names

        def read_field(values: Mapping[str, Any]) -> Any:
            value = values.get(var, _EMPTY)
            if type(value) is not dict and not isinstance(value, Mapping):
                _check(value)  # the CEL path copies the non-map whole
                return _UNREADABLE
            if name not in value:
                return _ABSENT
            value = value[name]
            if type(value) is not str or not value.isascii():
                _check(value)
            return value

        return read_field
    last = len(names) - 1

    def read(values: Mapping[str, Any]) -> Any:
        value = values.get(var, _EMPTY)
        for depth, name in enumerate(names):
            if type(value) is not dict and not isinstance(value, Mapping):
                _check(value)
                return _UNREADABLE
            if name not in value:
                return _ABSENT if depth == last else _UNREADABLE
            value = value[name]
        _check(value)
        return value

    return read


_EMPTY: Mapping[str, Any] = {}  # a variable the caller did not pass (never written to)
# Types that the CEL path converts without fail and that the fast path only ever compares with
# null: a decimal (exact text), bytes, a date, a time, a UUID (ISO text).
_SCALARS = frozenset({type(None), bool, float, Decimal, bytes, date, time, UUID})


def _check(value: Any) -> None:
    """_Unreadable unless `value` is plain data that the CEL path converts without complaint:
    a surrogate in a string, an int beyond 64 bits, a subclass or any other type is left to
    CEL, which converts it or says why not."""
    kind = type(value)
    if kind is str:
        if not _encodable(value):
            raise _Unreadable
    elif kind is int:
        if not _INT_MIN <= value <= _INT_MAX:
            raise _Unreadable
    elif kind is dict or kind is list:
        _check_container(value)
    elif kind is datetime:
        # A UTC or naive timestamp (as Avro's are) is only shifted to UTC by the CEL path;
        # another offset, or a year at the edge, could fail to convert.
        if value.tzinfo not in (None, UTC) or not 1 < value.year < 9999:
            raise _Unreadable
    elif kind not in _SCALARS:
        raise _Unreadable


def _check_container(container: dict[Any, Any] | list[Any]) -> None:
    """`_check` for each element, without recursion and within `_CHECK_BUDGET` elements."""
    budget, pending = _CHECK_BUDGET, [container]
    while pending:
        value = pending.pop()
        budget -= len(value)
        if budget < 0:
            raise _Unreadable
        if type(value) is dict:
            for key, item in value.items():
                # Only text keys (int keys are rare and CEL's business); an ASCII text key and
                # a null or ASCII text value are the common case, checked inline.
                if type(key) is not str or not (key.isascii() or _encodable(key)):
                    raise _Unreadable
                if item is not None and (type(item) is not str or not item.isascii()):
                    _check_item(item, pending)
        else:
            for item in value:
                if item is not None and (type(item) is not str or not item.isascii()):
                    _check_item(item, pending)


def _check_item(item: Any, pending: list[Any]) -> None:
    if type(item) is dict or type(item) is list:
        pending.append(item)
    else:
        _check(item)


def _encodable(text: str) -> bool:
    """Whether the runtime can take the text (a lone surrogate cannot be UTF-8)."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


# --- evaluation ------------------------------------------------------------------------------


class _Builder:
    """Turns a parsed expression into nested closures over the list of leaf values."""

    def __init__(self, leaves: list[tuple[str, tuple[str, ...]]]) -> None:
        self._leaves = {leaf: index for index, leaf in enumerate(leaves)}

    def build(self, tree: _Tree) -> _Node:
        if isinstance(tree, _Lit):
            return _constant(tree.value)
        if isinstance(tree, _Path):
            return _select(*self._locate(tree))
        if isinstance(tree, _List):  # only `in` takes one, and reads its items itself
            raise _Refused
        return self._operation(tree.op, tree.args)

    def _operation(self, op: str, args: tuple[_Tree, ...]) -> _Node:
        if op == "in" and isinstance(args[1], _List):
            return self._in(args[0], args[1])
        if op == "has" and isinstance(args[0], _Path):
            return _has(*self._locate(args[0]))
        if op in ("==", "!="):  # against a literal, the commonest comparison, is quicker
            for operand, other in (args, args[::-1]):
                if isinstance(other, _Lit):
                    return _equal_literal(self.build(operand), other.value, op == "!=")
        return _OPERATIONS[op](*(self.build(arg) for arg in args))

    def _in(self, item: _Tree, options: _List) -> _Node:
        values = [option.value for option in options.items if isinstance(option, _Lit)]
        if len(values) == len(options.items):  # the usual `x in ["US", "CA"]`, all literals
            return _in_literals(self.build(item), values)
        return _in(self.build(item), [self.build(option) for option in options.items])

    def _locate(self, path: _Path) -> tuple[int, tuple[str, ...]]:
        """The leaf that holds `path` (the CEL path copies leaves whole), and the fields
        selected within it."""
        for depth in range(len(path.names) + 1):
            index = self._leaves.get((path.var, path.names[:depth]))
            if index is not None:
                return index, path.names[depth:]
        raise _Refused  # a path `Expression` did not see: stay with CEL


def _select(index: int, names: tuple[str, ...]) -> _Node:
    if not names:  # the path is a leaf itself

        def read(env: _Env) -> Any:
            value = env[index]
            return UNDECIDED if type(value) is _Gap else value

        return read

    def select(env: _Env) -> Any:
        value = env[index]
        if type(value) is _Gap:
            return UNDECIDED
        for name in names:  # within a checked leaf, so maps are plain dicts
            if type(value) is not dict or name not in value:
                return UNDECIDED
            value = value[name]
        return value

    return select


def _has(index: int, names: tuple[str, ...]) -> _Node:
    """bus's `has(p)`, which it compiles to `has(p) && p != null`."""

    def has(env: _Env) -> Any:
        value = env[index]
        if not names:
            if value is _UNREADABLE:
                return UNDECIDED
            return value is not _ABSENT and value is not None
        if type(value) is _Gap:
            return UNDECIDED
        for name in names[:-1]:
            if type(value) is not dict or name not in value:
                return UNDECIDED
            value = value[name]
        if type(value) is not dict:  # CEL: has() on null or text is an error
            return UNDECIDED
        return value.get(names[-1]) is not None

    return has


def _in(item: _Node, options: list[_Node]) -> _Node:
    def contains(env: _Env) -> Any:
        value = item(env)
        kind = type(value)
        listed = [option(env) for option in options]
        # CEL's `in` is `==` against each element: certain when all are strings or all ints
        # (null is in no such list, as it equals neither).
        for wanted in (str, int):
            if all(type(option) is wanted for option in listed):
                if kind is wanted:
                    return value in listed
                if value is None:
                    return False
        return UNDECIDED

    return contains


def _in_literals(item: _Node, options: list[str | int | bool | None]) -> _Node:
    kinds = {type(option) for option in options}
    kind = kinds.pop() if len(kinds) == 1 else None
    if kind not in (str, int):  # mixed, bools or null: the general rule (UNDECIDED)
        return _in(item, [_constant(option) for option in options])
    listed = frozenset(options)

    def contains(env: _Env) -> Any:
        value = item(env)
        if type(value) is kind:
            return value in listed
        if value is None:
            return False
        return UNDECIDED

    return contains


def _constant(value: Any) -> _Node:
    return lambda env: value


def _and(left: _Node, right: _Node) -> _Node:
    def both(env: _Env) -> Any:
        first = left(env)
        if first is False:  # CEL: false && anything, even an error, is false
            return False
        if first is not True:
            return UNDECIDED
        second = right(env)
        return second if type(second) is bool else UNDECIDED

    return both


def _or(left: _Node, right: _Node) -> _Node:
    def either(env: _Env) -> Any:
        first = left(env)
        if first is True:  # CEL: true || anything, even an error, is true
            return True
        if first is not False:
            return UNDECIDED
        second = right(env)
        return second if type(second) is bool else UNDECIDED

    return either


def _conditional(test: _Node, then: _Node, otherwise: _Node) -> _Node:
    def choose(env: _Env) -> Any:
        chosen = test(env)
        if chosen is True:
            return then(env)
        if chosen is False:
            return otherwise(env)
        return UNDECIDED

    return choose


def _equal(left: _Node, right: _Node) -> _Node:
    def equal(env: _Env) -> Any:
        return _equals(left(env), right(env))

    return equal


def _not_equal(left: _Node, right: _Node) -> _Node:
    def not_equal(env: _Env) -> Any:
        equal = _equals(left(env), right(env))
        return equal if equal is UNDECIDED else not equal

    return not_equal


_EQUATABLE = frozenset({str, int, bool})


def _equals(first: Any, second: Any) -> Any:
    kind = type(first)
    if kind is type(second) and kind in _EQUATABLE:
        return first == second
    if first is UNDECIDED or second is UNDECIDED:
        return UNDECIDED
    # CEL's null equals only null, and nothing else equals null: checked for every type a
    # leaf can hold (a decimal is text, a map, a list, a double, a timestamp, bytes).
    if first is None or second is None:
        return first is second
    return UNDECIDED  # 1 == 1.0, a decimal's text, lists: CEL's rules


def _equal_literal(operand: _Node, constant: str | int | bool | None, negate: bool) -> _Node:
    """`==` or `!=` against a literal, the commonest comparison, with `_equals`'s rules."""
    if constant is None:

        def is_null(env: _Env) -> Any:
            value = operand(env)
            return UNDECIDED if value is UNDECIDED else (value is None) is not negate

        return is_null
    kind = type(constant)

    def equal(env: _Env) -> Any:
        value = operand(env)
        if type(value) is kind:
            return (value == constant) is not negate
        if value is None:
            return negate
        return UNDECIDED

    return equal


def _ordering(compare: Callable[[Any, Any], bool]) -> Callable[[_Node, _Node], _Node]:
    def build(left: _Node, right: _Node) -> _Node:
        def order(env: _Env) -> Any:
            first, second = left(env), right(env)
            kind = type(first)
            # Python orders strings by code point, the runtime by UTF-8 bytes: the same order.
            if kind is type(second) and (kind is str or kind is int):
                return compare(first, second)
            return UNDECIDED

        return order

    return build


def _arithmetic(compute: Callable[[int, int], Any], strings: bool = False) -> Callable[..., _Node]:
    def build(left: _Node, right: _Node) -> _Node:
        def arithmetic(env: _Env) -> Any:
            first, second = left(env), right(env)
            if type(first) is int and type(second) is int:
                result = compute(first, second)
                # CEL: overflow is an error, and so is division by zero (UNDECIDED here)
                if type(result) is int and _INT_MIN <= result <= _INT_MAX:
                    return result
                return UNDECIDED
            if strings and type(first) is str and type(second) is str:
                return first + second
            return UNDECIDED

        return arithmetic

    return build


def _divide(first: int, second: int) -> Any:
    if second == 0:
        return UNDECIDED
    quotient = abs(first) // abs(second)  # CEL truncates toward zero, Python floors
    return -quotient if (first < 0) != (second < 0) else quotient


def _remainder(first: int, second: int) -> Any:
    if second == 0 or (first == _INT_MIN and second == -1):  # both errors in CEL
        return UNDECIDED
    return first - second * _divide(first, second)


def _not(operand: _Node) -> _Node:
    def negate(env: _Env) -> Any:
        value = operand(env)
        return not value if type(value) is bool else UNDECIDED

    return negate


def _minus(operand: _Node) -> _Node:
    def minus(env: _Env) -> Any:
        value = operand(env)
        # -(-2**63) overflows in CEL
        return -value if type(value) is int and value != _INT_MIN else UNDECIDED

    return minus


def _string_method(test: Callable[[str, str], bool]) -> Callable[[_Node, _Node], _Node]:
    def build(receiver: _Node, argument: _Node) -> _Node:
        def method(env: _Env) -> Any:
            text, part = receiver(env), argument(env)
            if type(text) is str and type(part) is str:
                return test(text, part)
            return UNDECIDED

        return method

    return build


def _size(operand: _Node) -> _Node:
    def size(env: _Env) -> Any:
        value = operand(env)
        if type(value) is str:  # the runtime counts UTF-8 bytes (docs/expressions.md)
            return len(value) if value.isascii() else len(value.encode())
        if type(value) is list or type(value) is dict:
            return len(value)
        return UNDECIDED

    return size


_OPERATIONS: dict[str, Callable[..., _Node]] = {
    "&&": _and,
    "||": _or,
    "?:": _conditional,
    "==": _equal,
    "!=": _not_equal,
    "<": _ordering(lambda a, b: a < b),
    "<=": _ordering(lambda a, b: a <= b),
    ">": _ordering(lambda a, b: a > b),
    ">=": _ordering(lambda a, b: a >= b),
    "+": _arithmetic(lambda a, b: a + b, strings=True),
    "-": _arithmetic(lambda a, b: a - b),
    "*": _arithmetic(lambda a, b: a * b),
    "/": _arithmetic(_divide),
    "%": _arithmetic(_remainder),
    "!_": _not,
    "-_": _minus,
    "startsWith": _string_method(str.startswith),
    "endsWith": _string_method(str.endswith),
    "contains": _string_method(lambda text, part: part in text),
    "size": _size,
}
