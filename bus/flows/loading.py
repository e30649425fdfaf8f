"""Reading flow files: YAML with line numbers, `${VAR}` interpolation, one error for every problem.

Each problem is reported as `<file>:<line>:<col>: <key path>: <what was expected>`. YAML is
composed (not loaded) so that every key keeps its position; the positions are kept in a
`SourceMap` that travels with the models, so later checks (`bus.flows.validation`) can point at
the same lines.
"""

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from bus.errors import BusError
from bus.flows.model import (
    UNION_TAGS,
    FlowFile,
    FlowSet,
    KeyPath,
    Position,
    SourceMap,
    describe_value,
    flow_set_conflicts,
    format_path,
)


class FlowFileError(BusError):
    """Flow files could not be loaded; `problems` holds one `<file>:<line>:<col>: ...` line each."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        count = len(self.problems)
        heading = "a problem" if count == 1 else f"{count} problems"
        super().__init__(f"flow files have {heading}:\n" + "\n".join(self.problems))


def load_flow_files(paths: Sequence[Path], environ: Mapping[str, str] | None = None) -> FlowSet:
    """Every file parsed, interpolated and validated; any problem in any file: FlowFileError."""
    variables = os.environ if environ is None else environ
    problems: list[str] = []
    files: list[FlowFile] = []
    for path in paths:
        try:
            files.append(load_flow_file(path, variables))
        except FlowFileError as error:
            problems.extend(error.problems)
    problems.extend(flow_set_conflicts(files))
    if problems:
        raise FlowFileError(problems)
    return FlowSet(tuple(files))


def load_flow_file(path: Path, environ: Mapping[str, str]) -> FlowFile:
    """One file on its own; names across files are checked by `load_flow_files`."""
    name = str(path)
    text = _read(path)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as error:
        raise FlowFileError([_syntax_problem(name, error)]) from error
    except yaml.reader.ReaderError as error:
        code = error.character if isinstance(error.character, int) else ord(error.character)
        line = text.count("\n", 0, error.position) + 1
        column = error.position - (text.rfind("\n", 0, error.position) + 1) + 1
        raise FlowFileError(
            [f"{name}:{line}:{column}: YAML syntax: character U+{code:04X} is not allowed in YAML"]
        ) from error
    tree = _Tree(name, environ)
    data = tree.build(root, ()) if root is not None else {}
    if tree.problems:
        raise FlowFileError(tree.problems)
    source = SourceMap(name, tree.positions)
    try:
        return FlowFile.model_validate(data, context={"source": source})
    except ValidationError as invalid:
        raise FlowFileError(_validation_problems(invalid, data, source)) from invalid


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as error:
        raise FlowFileError([f"{path}: cannot read the flow file: {error.strerror}"]) from error
    except UnicodeDecodeError as error:
        raise FlowFileError(
            [f"{path}: not UTF-8 text (byte {error.start} cannot be decoded); save it as UTF-8"]
        ) from error


def _syntax_problem(file: str, error: yaml.MarkedYAMLError) -> str:
    mark = error.problem_mark or error.context_mark
    where = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark else file
    what = error.problem or "invalid YAML"
    if error.context:
        context_line = f" at line {error.context_mark.line + 1}" if error.context_mark else ""
        what = f"{what} ({error.context}{context_line})"
    return f"{where}: YAML syntax: {what}"


# -- from YAML nodes to plain data --------------------------------------------------------------


def _position(node: yaml.Node) -> Position:
    return Position(node.start_mark.line + 1, node.start_mark.column + 1)


@dataclass
class _Tree:
    """Turns composed YAML into dicts, lists and scalars, noting where each key is."""

    file: str
    environ: Mapping[str, str]
    positions: dict[KeyPath, Position] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    _constructor: yaml.SafeLoader = field(default_factory=lambda: yaml.SafeLoader(""))
    _open: set[int] = field(default_factory=set)
    _checked: set[int] = field(default_factory=set)

    def build(self, node: yaml.Node, path: KeyPath) -> Any:
        self.positions.setdefault(path, _position(node))
        if id(node) in self._open:
            # An alias inside its own anchor: YAML allows it, a flow file cannot mean it.
            self._problem(node, path, "an alias refers to a mapping or list that contains it")
            return None
        self._open.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, path)
            if isinstance(node, yaml.SequenceNode):
                return [self.build(item, (*path, index)) for index, item in enumerate(node.value)]
            return self._scalar(node, path)
        finally:
            self._open.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, path: KeyPath) -> dict[str, Any]:
        # An alias revisits a node that merging already changed: check each node once.
        if id(node) not in self._checked:
            self._checked.add(id(node))
            self._check_duplicates(node, path)
        # `<<: *defaults` merges: PyYAML puts the merged pairs first, so the file's own win.
        try:
            self._constructor.flatten_mapping(node)
        except yaml.MarkedYAMLError as error:
            self._problem(node, path, error.problem or "invalid merge key")
            return {}
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = self._construct(key_node, path)
            if not isinstance(key, str):
                # YAML 1.1 reads `on`, `yes` or `1` as other things than text.
                self._problem(
                    key_node,
                    (*path, str(key_node.value)),
                    f"this key is read as {describe_value(key)}, but keys are text; quote it",
                )
                continue
            self.positions[(*path, key)] = _position(key_node)
            result[key] = self.build(value_node, (*path, key))
        return result

    def _check_duplicates(self, node: yaml.MappingNode, path: KeyPath) -> None:
        # PyYAML keeps the last of two equal keys without a word; a flow file must not.
        seen: dict[str, yaml.Node] = {}
        for key_node, _ in node.value:
            if (
                not isinstance(key_node, yaml.ScalarNode)
                or key_node.tag == "tag:yaml.org,2002:merge"
            ):
                continue
            first = seen.setdefault(key_node.value, key_node)
            if first is not key_node:
                at = _position(first)
                self._problem(
                    key_node,
                    (*path, key_node.value),
                    f"duplicate key: {key_node.value!r} is already set at line {at.line}; "
                    "keep one of them",
                )

    def _construct(self, node: yaml.Node, path: KeyPath) -> Any:
        try:
            return self._constructor.construct_object(node)
        except yaml.MarkedYAMLError as error:  # e.g. an unknown tag such as !include
            self._problem(node, path, error.problem or "cannot read this value")
            return None

    def _scalar(self, node: yaml.Node, path: KeyPath) -> Any:
        value = self._construct(node, path)
        if not isinstance(value, str):
            return value
        try:
            return interpolate(value, self.environ)
        except InterpolationError as error:
            self._problem(node, path, str(error))
            return value

    def _problem(self, node: yaml.Node, path: KeyPath, message: str) -> None:
        at = _position(node)
        self.problems.append(f"{self.file}:{at.line}:{at.column}: {format_path(path)}: {message}")


# -- ${VAR} interpolation -----------------------------------------------------------------------

_REFERENCE = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_VARIABLE = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>.*))?", re.DOTALL)


class InterpolationError(ValueError):
    """A `${...}` that cannot be replaced; the message names the variable and the fix."""


def interpolate(text: str, environ: Mapping[str, str]) -> str:
    """`${VAR}` and `${VAR:-default}` replaced from `environ`; `$${` stays a literal `${`.

    As in the shell, the default also applies when the variable is set but empty.
    """
    return _REFERENCE.sub(lambda match: _replacement(match, environ), text)


def _replacement(match: re.Match[str], environ: Mapping[str, str]) -> str:
    whole = match.group(0)
    if whole == "$${":
        return "${"
    body = match.group(1)
    if body is None:
        raise InterpolationError(
            "'${' without a closing '}'; write ${NAME} or ${NAME:-default}, or $${ for a literal ${"
        )
    variable = _VARIABLE.fullmatch(body)
    if variable is None:
        raise InterpolationError(
            f"{whole!r} is not a variable reference; write ${{NAME}} or ${{NAME:-default}} "
            "(NAME of letters, digits and '_'), or $${ for a literal ${"
        )
    name, default = variable.group("name"), variable.group("default")
    value = environ.get(name)
    if default is not None and not value:
        return default
    if value is None:
        raise InterpolationError(
            f"environment variable {name} is not set (and ${{{name}}} has no default); "
            f"set it, or write ${{{name}:-default}}"
        )
    return value


# -- pydantic errors to problem lines -----------------------------------------------------------


def _validation_problems(invalid: ValidationError, data: Any, source: SourceMap) -> list[str]:
    located: dict[str, Position] = {}
    for error in invalid.errors(include_url=False):
        # Reported only because another field failed first; that failure says it all.
        if error["type"] == "default_factory_not_called":
            continue
        path = yaml_path(error["loc"], data)
        located.setdefault(source.problem(path, _message(error)), source.position(path))
    # In the file's order, as a reader goes through it (pydantic's is by model, then field).
    return sorted(located, key=lambda problem: (located[problem].line, located[problem].column))


def settings_problems(invalid: ValidationError, data: Any) -> list[tuple[KeyPath, str]]:
    """An adapter's settings errors as (key path below its settings, message), phrased as the
    loader phrases the file's own."""
    return [
        (yaml_path(error["loc"], data), _message(error))
        for error in invalid.errors(include_url=False)
        if error["type"] != "default_factory_not_called"
    ]


def yaml_path(loc: tuple[int | str, ...], data: Any) -> KeyPath:
    """A pydantic error location as a key path in the file: union tags dropped.

    Walks the data alongside, so that a tag (which pydantic puts right after a list index) is
    told apart from a key the user wrote.
    """
    path: list[str | int] = []
    node = data
    for index, part in enumerate(loc):
        after_index = index > 0 and isinstance(loc[index - 1], int)
        if after_index and part in UNION_TAGS and not _has_key(node, part):
            continue
        path.append(part)
        node = _child(node, part)
    return tuple(path)


def _has_key(node: Any, key: str | int) -> bool:
    return isinstance(node, dict) and key in node


def _child(node: Any, part: str | int) -> Any:
    if isinstance(node, dict):
        return node.get(part)
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return node[part]
    return None


_CONTAINER_TYPES = {
    "model_type": "a mapping (key: value lines)",
    "model_attributes_type": "a mapping (key: value lines)",
    "dict_type": "a mapping (key: value lines)",
    "list_type": "a list ('- ' lines)",
    "tuple_type": "a list ('- ' lines)",
}


def _message(error: ErrorDetails) -> str:
    kind = error["type"]
    if kind.startswith("flow_"):
        return error["msg"]  # ours, already phrased for the file
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "too_short":
        context = error.get("ctx") or {}
        found = context.get("actual_length") or "none"
        return f"expected at least {context.get('min_length')} item(s), found {found}"
    if kind in _CONTAINER_TYPES:
        return f"expected {_CONTAINER_TYPES[kind]}, found {describe_value(error['input'])}"
    message = error["msg"]
    if message.startswith("Value error, "):
        message = message.removeprefix("Value error, ")
    elif message.startswith("Input should be "):
        message = "expected " + message.removeprefix("Input should be ")
    return f"{message}, found {describe_value(error['input'])}"
