"""The flow file: what a user declares in YAML, as frozen pydantic models.

One file holds optional `kafka` and `topics` settings and three lists: `inbound` adapters (an
external call becomes an event), `mediation` flows (events between topics, step by step) and
`outbound` adapters (an event becomes an external call). Several files form one `FlowSet`.

Adapters are plugins: an inbound or outbound item names its adapter by its one extra key (`rest:`,
`soap:`, ...), whose settings stay an opaque mapping here; the adapter validates them itself.

Every model remembers where it came from (see `SourceMap` and `Origin`), so that a problem found
after loading still points at `<file>:<line>:<col>: <key path>`.
"""

import difflib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Discriminator,
    Field,
    GetJsonSchemaHandler,
    ModelWrapValidatorHandler,
    PlainSerializer,
    PlainValidator,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    Tag,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    model_serializer,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, InitErrorDetails, PydanticCustomError

from bus.flows.expressions import VARIABLES

# -- where things are -------------------------------------------------------------------------

KeyPath = tuple[str | int, ...]
"""A place in a flow file: mapping keys and list indexes from the top, e.g. ("mediation", 0)."""


def format_path(path: KeyPath) -> str:
    """`mediation[0].steps[2].transform.to`; the whole file is `<root>`."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else part
    return text or "<root>"


@dataclass(frozen=True)
class Position:
    """1-based line and column, as editors count."""

    line: int
    column: int


@dataclass(frozen=True)
class SourceMap:
    """Where each key of one flow file is: key path -> position of the key (or list item)."""

    file: str
    positions: Mapping[KeyPath, Position] = field(default_factory=dict)

    def position(self, path: KeyPath) -> Position:
        """The path's position, or its nearest parent's (a missing key has no line of its own)."""
        for end in range(len(path), -1, -1):
            found = self.positions.get(path[:end])
            if found is not None:
                return found
        return Position(1, 1)

    def problem(self, path: KeyPath, message: str) -> str:
        """One problem line: `<file>:<line>:<col>: <key path>: <message>`."""
        at = self.position(path)
        return f"{self.file}:{at.line}:{at.column}: {format_path(path)}: {message}"

    def where(self, path: KeyPath) -> str:
        at = self.position(path)
        return f"{self.file}:{at.line}:{at.column}"


UNKNOWN_SOURCE = SourceMap("<unknown file>")


@dataclass(frozen=True)
class Origin:
    """Where one inbound, mediation or outbound item was declared."""

    source: SourceMap
    path: KeyPath

    def problem(self, message: str, *subpath: str | int) -> str:
        """A problem at a key inside this item, e.g. `origin.problem("...", "steps", 2)`."""
        return self.source.problem((*self.path, *subpath), message)

    def where(self, *subpath: str | int) -> str:
        return self.source.where((*self.path, *subpath))


# -- scalar types -----------------------------------------------------------------------------


def describe_value(value: object) -> str:
    """The offending value as the user wrote it in YAML, shortened."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "nothing"
    if isinstance(value, dict | list | tuple):
        return "a mapping" if isinstance(value, dict) else "a list"
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _invalid(expected: str, value: object) -> PydanticCustomError:
    # No context on purpose: messages may hold braces ({when: ...}) that must not be formatted.
    return PydanticCustomError("flow_value", f"expected {expected}, found {describe_value(value)}")


def _text_validator(
    expected: str, pattern: re.Pattern[str], *, numbers: bool = False
) -> Callable[[object], str]:
    """A validator for text of one shape, explaining the shape when the text does not fit."""

    def validate(value: object) -> str:
        # YAML reads `to: 2024` as a number; a topic may well be all digits.
        if numbers and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise _invalid(expected, value)
        return value

    return validate


def _optional_text_validator(
    expected: str, pattern: re.Pattern[str]
) -> Callable[[object], str | None]:
    """As `_text_validator`, but empty or nothing means None (`${VAR:-}` gives empty text)."""
    check = _text_validator(expected, pattern)

    def validate(value: object) -> str | None:
        return None if value is None or value == "" else check(value)

    return validate


def json_pattern(pattern: str) -> str:
    """A JSON Schema pattern for editors, which see `${VAR}` before it is replaced: allow it."""
    return rf"^(?:{pattern})$|\$\{{"


def _text_schema(
    description: str, pattern: re.Pattern[str], extra: dict[str, Any] | None = None
) -> WithJsonSchema:
    return WithJsonSchema(
        {
            "type": "string",
            "pattern": json_pattern(pattern.pattern),
            "description": description,
            **(extra or {}),
        }
    )


_TOPIC = re.compile(r"(?!\.{1,2}$)[a-zA-Z0-9._-]{1,249}")
_TOPIC_EXPECTED = (
    "a Kafka topic name: 1 to 249 letters, digits, '.', '_' or '-' (and not '.' or '..')"
)
TopicName = Annotated[
    str,
    PlainValidator(_text_validator(_TOPIC_EXPECTED, _TOPIC, numbers=True)),
    _text_schema(
        "A Kafka topic name.",
        re.compile(r"[a-zA-Z0-9._-]{1,249}"),
        {"not": {"enum": [".", ".."]}},
    ),
]

_FLOW_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,199}")
FlowName = Annotated[
    str,
    PlainValidator(
        _text_validator(
            "a name of lowercase letters, digits and '-', starting with a letter or digit "
            "(at most 200 characters), e.g. customer-router",
            _FLOW_NAME,
        )
    ),
    _text_schema("Lowercase letters, digits and '-'; unique across all flow files.", _FLOW_NAME),
]

_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
SchemaName = Annotated[
    str,
    PlainValidator(
        _text_validator(
            "a schema full name (namespace and name, e.g. com.acme.crm.CustomerChanged)",
            _SCHEMA_NAME,
        )
    ),
    _text_schema("Full name of an Avro schema in the catalog.", _SCHEMA_NAME),
]

_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
FieldName = Annotated[
    str,
    PlainValidator(_text_validator("an Avro field name (letters, digits and '_')", _FIELD_NAME)),
    _text_schema("An Avro field name.", _FIELD_NAME),
]

_REFERENCE = re.compile(
    r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*"
)
_REFERENCE_EXPECTED = "a Python function as module:function, e.g. mypackage.flows:normalise"
Reference = Annotated[
    str,
    PlainValidator(_text_validator(_REFERENCE_EXPECTED, _REFERENCE)),
    _text_schema("A Python function as module:function.", _REFERENCE),
]

_LOOKUP = re.compile(rf"{_FLOW_NAME.pattern}|{_REFERENCE.pattern}")
LookupName = Annotated[
    str,
    PlainValidator(
        _text_validator(
            "a lookup name (lowercase letters, digits and '-') or " + _REFERENCE_EXPECTED, _LOOKUP
        )
    ),
    _text_schema("A named lookup or a Python function as module:function.", _LOOKUP),
]


def _expression_text(value: object) -> str:
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, str):
        raise _invalid("an expression", value)
    # `filter: true` or `set_key: 42` are read by YAML as other types; say how to keep them text.
    raise _invalid("an expression as text (quote it in YAML)", value)


Expression = Annotated[
    str,
    PlainValidator(_expression_text),
    WithJsonSchema(
        {"type": "string", "minLength": 1, "description": "An expression, e.g. event.email."}
    ),
]
"""An expression's source text; `bus.flows.validation` checks that it compiles."""

FieldMap = dict[str, Expression]
"""Target field -> expression."""

_DURATION = re.compile(r"(\d+)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
_DURATION_EXPECTED = (
    "a duration as a whole number and a unit (ms, s, m or h), e.g. 200ms, 30s, 5m or 1h"
)


def parse_duration(value: object) -> timedelta:
    """`200ms`, `30s`, `5m`, `1h` -> timedelta; anything else (even `30`) is refused."""
    if isinstance(value, timedelta):
        return value
    match = _DURATION.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise _invalid(_DURATION_EXPECTED, value)
    amount, unit = int(match.group(1)), match.group(2)
    if amount == 0:
        raise _invalid("a duration greater than zero", value)
    return timedelta(seconds=amount * _DURATION_UNITS[unit])


def format_duration(value: timedelta) -> str:
    """The shortest text `parse_duration` reads back as the same duration."""
    milliseconds = round(value.total_seconds() * 1000)
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if milliseconds % size == 0:
            return f"{milliseconds // size}{unit}"
    return f"{milliseconds}ms"


Duration = Annotated[
    timedelta,
    PlainValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": json_pattern(_DURATION.pattern),
            "description": "A duration: 200ms, 30s, 5m or 1h.",
        }
    ),
]


def duration_field(default: str, description: str) -> Any:
    """A duration field whose JSON Schema shows its default as written in YAML (not ISO 8601)."""
    return Field(
        default=parse_duration(default),
        description=description,
        json_schema_extra={"default": default},
    )


# -- blocks -----------------------------------------------------------------------------------


def _suggestion(word: str, choices: Iterable[str], cutoff: float = 0.6) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=cutoff)
    return f" (did you mean {close[0]}?)" if close else ""


KeyProblems = list[tuple[KeyPath, str]]
"""Problems with the keys of a mapping: (where below the mapping, message)."""


def _key_details(problems: KeyProblems, data: Mapping[Any, Any]) -> list[InitErrorDetails]:
    return [
        {
            "type": PydanticCustomError("flow_key", message),
            "loc": loc,
            "input": data.get(loc[0]) if loc else data,
        }
        for loc, message in problems
    ]


def key_errors(title: str, problems: KeyProblems, data: Mapping[Any, Any]) -> ValidationError:
    """The problems as a validation error located at each key, not at the mapping holding it."""
    return ValidationError.from_exception_data(title, _key_details(problems, data))


def _reraisable(invalid: ValidationError) -> list[InitErrorDetails]:
    # Built-in error types cannot be raised by name with their context; as custom errors they
    # keep their type, message and context, which is all the loader reads.
    return [
        {
            "type": PydanticCustomError(error["type"], error["msg"], error.get("ctx")),
            "loc": error["loc"],
            "input": error["input"],
        }
        for error in invalid.errors(include_url=False)
    ]


class Block(BaseModel):
    """A mapping in a flow file: frozen, and a misspelt key is an error naming the allowed ones."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @classmethod
    def yaml_keys(cls) -> list[str]:
        """The keys this mapping accepts in YAML."""
        return [info.alias or name for name, info in cls.model_fields.items()]

    @classmethod
    def _sort_keys(cls, data: dict[Any, Any]) -> tuple[dict[Any, Any], KeyProblems]:
        """The data to validate, and problems with its keys (the data then leaves them out)."""
        allowed = cls.yaml_keys()
        listed = ", ".join(allowed)
        problems: KeyProblems = [
            ((key,), f"unknown key{_suggestion(str(key), allowed)}; allowed keys: {listed}")
            for key in data
            if key not in allowed
        ]
        return {key: value for key, value in data.items() if key in allowed}, problems

    @model_validator(mode="wrap")
    @classmethod
    def _check_keys(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        # Done here rather than by extra="forbid", so that the message can list the allowed
        # keys; the rest of the mapping is still validated, so every problem shows at once.
        if not isinstance(data, dict):
            return handler(data)
        kept, problems = cls._sort_keys(data)
        if not problems:
            return handler(kept)
        details = _key_details(problems, data)
        try:
            handler(kept)
        except ValidationError as invalid:
            details.extend(_reraisable(invalid))
        raise ValidationError.from_exception_data(cls.__name__, details)


_BOOTSTRAP = re.compile(r"[^\s,]+:\d{1,5}(?:,[^\s,]+:\d{1,5})*")
_URL = re.compile(r"https?://\S+")


class KafkaSettings(Block):
    """Where Kafka is; the environment decides when the file does not."""

    bootstrap_servers: Annotated[
        str | None,
        PlainValidator(_optional_text_validator("host:port[,host:port...]", _BOOTSTRAP)),
        WithJsonSchema({"type": "string", "pattern": json_pattern(f"({_BOOTSTRAP.pattern})?")}),
    ] = Field(
        default=None,
        description="Comma-separated host:port list. When omitted (or empty), "
        "KAFKA_BOOTSTRAP_SERVERS decides, and without it the local broker is used.",
    )
    schema_registry: Annotated[
        str | None,
        PlainValidator(_optional_text_validator("an http:// or https:// URL", _URL)),
        WithJsonSchema({"type": "string"}),
    ] = Field(
        default=None,
        description="URL of a Confluent-compatible schema registry; empty or omitted: none "
        "(events then use Avro single-object encoding).",
    )


class TopicDefaults(Block):
    """How topics that the flows create (because they are missing) are configured."""

    partitions: int | None = Field(
        default=None, ge=1, description="Partitions of a created topic; omitted: 6."
    )
    replication_factor: int | None = Field(
        default=None,
        ge=1,
        description="Replicas of a created topic; omitted: the number of brokers, at most 3.",
    )


def _one_or_many(value: object) -> object:
    return [value] if isinstance(value, str | int) and not isinstance(value, bool) else value


Topics = Annotated[
    tuple[TopicName, ...],
    BeforeValidator(_one_or_many),
    Field(min_length=1),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "description": "One topic."},
                {"type": "array", "items": {"type": "string"}, "minItems": 1},
            ],
            "description": "A topic, or a list of topics.",
        }
    ),
]


class AdapterBlock(Block):
    """An inbound or outbound item: its own keys plus exactly one key naming its adapter."""

    adapter: str = Field(description="The adapter's name: the one key besides the others.")
    config: dict[str, Any] = Field(
        default_factory=dict, description="The adapter's own settings, checked by the adapter."
    )

    _ADAPTER_FIELDS: ClassVar[tuple[str, str]] = ("adapter", "config")
    _ADAPTER_NAME: ClassVar[re.Pattern[str]] = re.compile(r"[a-z][a-z0-9_-]*")

    @classmethod
    def yaml_keys(cls) -> list[str]:
        return [key for key in super().yaml_keys() if key not in cls._ADAPTER_FIELDS]

    @classmethod
    def _sort_keys(cls, data: dict[Any, Any]) -> tuple[dict[Any, Any], KeyProblems]:
        allowed = cls.yaml_keys()
        extra = [key for key in data if key not in allowed]
        # An extra key very close to a known one is a typo, not an adapter called `evnt` (but
        # `rest` is as close to `retry` as a typo may be, hence the high cutoff).
        typos = {key: _suggestion(str(key), allowed, cutoff=0.8) for key in extra}
        problems: KeyProblems = [
            ((key,), f"unknown key{hint}; allowed keys: {', '.join(allowed)} and one adapter key")
            for key, hint in typos.items()
            if hint
        ]
        adapters = [str(key) for key in extra if not typos[key]]
        problems += cls._adapter_problems(adapters, data, allowed)
        kept = {key: value for key, value in data.items() if key in allowed}
        if problems:
            # Stand-ins, so that validating the rest reports only the rest's own problems.
            return kept | {"adapter": "adapter", "config": {}}, problems
        return kept | {"adapter": adapters[0], "config": data[adapters[0]] or {}}, problems

    @classmethod
    def _adapter_problems(
        cls, adapters: list[str], data: dict[Any, Any], allowed: list[str]
    ) -> KeyProblems:
        if not adapters:
            return [
                (
                    (),
                    "expected one adapter key (rest, soap, or another installed adapter) "
                    f"besides {', '.join(allowed)}; found none",
                )
            ]
        if len(adapters) > 1:
            found = f"one adapter per item, found {len(adapters)}: {', '.join(adapters)}"
            return [((key,), found) for key in adapters]
        name, config = adapters[0], data[adapters[0]]
        if not cls._ADAPTER_NAME.fullmatch(name):
            return [
                ((name,), "unknown key; an adapter's name is lowercase letters, digits, '_' or '-'")
            ]
        if config is not None and not isinstance(config, dict):
            found = describe_value(config)
            return [
                ((name,), f"expected the {name} adapter's settings as a mapping, found {found}")
            ]
        return []

    @model_serializer(mode="wrap")
    def _adapter_as_key(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Written back in the file's shape, so a dump loads again.
        dumped: dict[str, Any] = handler(self)
        dumped.pop("adapter", None)
        dumped.pop("config", None)
        return dumped | {self.adapter: self.config}

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler.resolve_ref_schema(handler(core_schema))
        for name in cls._ADAPTER_FIELDS:
            schema["properties"].pop(name, None)
        schema["required"] = [key for key in schema.get("required", []) if key != "adapter"]
        schema["additionalProperties"] = {
            "type": "object",
            "description": "Exactly one adapter key (rest, soap, ...) with the adapter's settings.",
        }
        return schema


class InboundEvent(Block):
    """The event that an inbound call becomes."""

    type: SchemaName = Field(description="Full name of the event's schema in the catalog.")
    key: Expression | None = Field(default=None, description="Expression for the Kafka key.")
    subject: Expression | None = Field(
        default=None, description="Expression for the CloudEvents subject."
    )
    map: FieldMap = Field(
        default_factory=dict, description="Event field -> expression over the call (body, ...)."
    )


def default_dlq(item: str) -> str:
    """The dead-letter topic of an item that names none: `<item name>.dlq`."""
    return f"{item}.dlq"


def consumer_group(item: str) -> str:
    """The Kafka consumer group of a mediation flow or an outbound delivery: `bus.<item name>`."""
    return f"bus.{item}"


def _default_dlq(data: dict[str, Any]) -> str:
    return default_dlq(str(data.get("name", "flow")))


class Inbound(AdapterBlock):
    """An external call (REST, SOAP, ...) that becomes an event on a topic."""

    name: FlowName = Field(description="Unique name of this adapter instance.")
    topic: TopicName = Field(description="Where the events go.")
    event: InboundEvent = Field(description="How the call becomes an event.")
    _origin: Origin | None = PrivateAttr(default=None)

    @property
    def origin(self) -> Origin:
        return self._origin or Origin(UNKNOWN_SOURCE, ())


# -- mediation steps --------------------------------------------------------------------------


class FilterStep(Block):
    filter: Expression = Field(description="Predicate: events for which it is false are dropped.")


class SetKeyStep(Block):
    set_key: Expression = Field(description="Expression for the event's new Kafka key.")


class Transform(Block):
    to: SchemaName = Field(description="Full name of the target schema.")
    map: FieldMap = Field(description="Target field -> expression over the event.")


class TransformStep(Block):
    transform: Transform = Field(description="A new event of another schema, field by field.")


class SplitStep(Block):
    split: Expression = Field(description="Expression yielding a list; one event per element.")


class Enrich(Block):
    lookup: LookupName = Field(description="A named lookup, or a Python module:function.")
    with_: FieldMap = Field(
        default_factory=dict, alias="with", description="Argument name -> expression."
    )
    into: FieldName = Field(description="The event field that receives the lookup's result.")


class EnrichStep(Block):
    enrich: Enrich = Field(description="Add the result of a lookup to the event.")


class PythonStep(Block):
    python: Reference = Field(
        description="module:function (sync or async) that receives and returns events."
    )


class WhenRoute(Block):
    when: Expression = Field(description="Predicate choosing this route.")
    to: TopicName = Field(description="Topic of the events this route chooses.")


class OtherwiseRoute(Block):
    otherwise: TopicName = Field(description="Topic of the events no `when` chose.")


def _route_kind(value: Any) -> str | None:
    if isinstance(value, WhenRoute | OtherwiseRoute):
        return "when route" if isinstance(value, WhenRoute) else "otherwise route"
    if isinstance(value, dict):
        return "when route" if "when" in value else "otherwise route"
    return None


def _check_route_shape(value: Any) -> Any:
    if isinstance(value, dict) and ("when" in value) == ("otherwise" in value):
        raise PydanticCustomError(
            "flow_route",
            "expected {when: <expression>, to: <topic>} or {otherwise: <topic>}"
            + (", not both" if "when" in value else ""),
        )
    if not isinstance(value, dict | WhenRoute | OtherwiseRoute):
        raise _invalid("{when: <expression>, to: <topic>} or {otherwise: <topic>}", value)
    return value


RouteChoice = Annotated[
    Annotated[WhenRoute, Tag("when route")] | Annotated[OtherwiseRoute, Tag("otherwise route")],
    Discriminator(_route_kind),
    BeforeValidator(_check_route_shape),
]


class Route(Block):
    mode: Literal["first", "all"] = Field(
        default="first", description="first: the first route that matches; all: every one."
    )
    routes: tuple[RouteChoice, ...] = Field(
        description="`when` routes in order, then at most one `otherwise`."
    )


class RouteStep(Block):
    route: Route = Field(description="Send each event to the topic(s) its content selects.")


STEP_KINDS: dict[str, type[Block]] = {
    "filter": FilterStep,
    "set_key": SetKeyStep,
    "transform": TransformStep,
    "split": SplitStep,
    "enrich": EnrichStep,
    "python": PythonStep,
    "route": RouteStep,
}
"""Each step's one key and its model."""

_STEP_TAGS = {model: f"{key} step" for key, model in STEP_KINDS.items()}
UNION_TAGS = frozenset({*_STEP_TAGS.values(), "when route", "otherwise route"})
"""The tags pydantic puts in error locations after a list index; they are not YAML keys."""


def _step_kind(value: Any) -> str | None:
    if isinstance(value, dict) and len(value) == 1:
        return f"{next(iter(value))} step"
    return _STEP_TAGS.get(type(value))


def _check_step_shape(value: Any) -> Any:
    kinds = ", ".join(STEP_KINDS)
    if not isinstance(value, dict):
        if type(value) in _STEP_TAGS:
            return value
        raise _invalid(f"a step: a mapping with one key of {kinds}", value)
    if len(value) != 1:
        found = f"{len(value)}: {', '.join(map(str, value))}" if value else "none"
        raise PydanticCustomError(
            "flow_step",
            f"a step has exactly one key ({kinds}), found {found}; write each on its own '- ' line",
        )
    key = next(iter(value))
    if key not in STEP_KINDS:
        message = f"unknown step{_suggestion(str(key), STEP_KINDS)}; steps are: {kinds}"
        raise key_errors("Step", [((key,), message)], value)
    return value


Step = Annotated[
    Annotated[FilterStep, Tag("filter step")]
    | Annotated[SetKeyStep, Tag("set_key step")]
    | Annotated[TransformStep, Tag("transform step")]
    | Annotated[SplitStep, Tag("split step")]
    | Annotated[EnrichStep, Tag("enrich step")]
    | Annotated[PythonStep, Tag("python step")]
    | Annotated[RouteStep, Tag("route step")],
    Discriminator(_step_kind),
    BeforeValidator(_check_step_shape),
]


class Mediation(Block):
    """Events from one or more topics, through steps in order, to topics."""

    name: FlowName = Field(description="Unique name; also names the consumer group.")
    from_: Topics = Field(alias="from", description="The topic(s) to consume.")
    guarantee: Literal["at-least-once", "exactly-once"] = Field(
        default="at-least-once",
        description="at-least-once: commit after producing; exactly-once: Kafka transactions.",
    )
    max_in_flight: int = Field(
        default=100, ge=1, description="Records processed at once (backpressure)."
    )
    decode: bool = Field(
        default=True,
        description="false: the steps read only `attributes` (the record's headers) and the "
        "value is passed on as it is, never decoded: filter, route and set_key only.",
    )
    dlq: TopicName = Field(
        default_factory=_default_dlq,
        description="Dead letter topic for events that fail; default <name>.dlq.",
    )
    to: TopicName | None = Field(
        default=None, description="Output topic for events that no route step sends elsewhere."
    )
    steps: tuple[Step, ...] = Field(default=(), description="The steps, in order.")
    _origin: Origin | None = PrivateAttr(default=None)

    @property
    def variables(self) -> tuple[str, ...]:
        """What its steps' expressions see: without decoding, the attributes only."""
        return VARIABLES if self.decode else ("attributes",)

    @property
    def origin(self) -> Origin:
        return self._origin or Origin(UNKNOWN_SOURCE, ())


# -- outbound ---------------------------------------------------------------------------------


class Reply(Block):
    """How the external system's answer becomes an event."""

    type: SchemaName = Field(description="Full name of the reply event's schema.")
    topic: TopicName = Field(description="Where reply events go.")
    map: FieldMap = Field(
        default_factory=dict, description="Reply event field -> expression over the response."
    )


class Backoff(Block):
    initial: Duration = duration_field("200ms", "First wait.")
    max: Duration = duration_field("30s", "Longest wait.")
    multiplier: float = Field(default=2.0, ge=1.0, description="Each wait is the last times this.")
    jitter: float = Field(
        default=0.2, ge=0.0, le=1.0, description="Random share added or removed from each wait."
    )

    @model_validator(mode="after")
    def _max_not_below_initial(self) -> Self:
        if self.max < self.initial:
            raise PydanticCustomError(
                "flow_value",
                f"max ({format_duration(self.max)}) is shorter than initial "
                f"({format_duration(self.initial)})",
            )
        return self


class Retry(Block):
    attempts: int = Field(default=5, ge=1, description="Tries in all, the first included.")
    backoff: Backoff = Field(default_factory=Backoff, description="Waits between tries.")


class CircuitBreaker(Block):
    failures: int = Field(default=5, ge=1, description="Consecutive failures that open it.")
    reset_after: Duration = duration_field("30s", "How long it stays open before a trial call.")


class RateLimit(BaseModel):
    """`count` calls per `per_seconds` seconds."""

    model_config = ConfigDict(frozen=True)

    count: int = Field(ge=1)
    per_seconds: int = Field(ge=1)

    def __str__(self) -> str:
        unit = {1: "s", 60: "min", 3600: "h"}.get(self.per_seconds)
        return f"{self.count}/{unit}" if unit else f"{self.count}/{self.per_seconds}s"


_RATE = re.compile(r"(\d+)/(s|min|h)")
_RATE_SECONDS = {"s": 1, "min": 60, "h": 3600}


def parse_rate_limit(value: object) -> RateLimit:
    """`50/s`, `100/min`, `1000/h` -> RateLimit."""
    if isinstance(value, RateLimit):
        return value
    match = _RATE.fullmatch(value) if isinstance(value, str) else None
    if match is None or int(match.group(1)) == 0:
        raise _invalid("a rate limit as N/s, N/min or N/h with N at least 1, e.g. 50/s", value)
    return RateLimit(count=int(match.group(1)), per_seconds=_RATE_SECONDS[match.group(2)])


RateLimitSpec = Annotated[
    RateLimit,
    PlainValidator(parse_rate_limit),
    PlainSerializer(str, return_type=str, when_used="json"),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": json_pattern(_RATE.pattern),
            "description": "Calls per second, minute or hour: 50/s, 100/min, 1000/h.",
        }
    ),
]


class Outbound(AdapterBlock):
    """Events from a topic, delivered to an external system (REST, SOAP, ...)."""

    name: FlowName = Field(description="Unique name; also names the consumer group.")
    from_: Topics = Field(alias="from", description="The topic(s) to deliver from.")
    map: FieldMap = Field(
        default_factory=dict, description="Request field -> expression over the event."
    )
    reply: Reply | None = Field(default=None, description="Turn the answer into an event.")
    retry: Retry = Field(default_factory=Retry, description="Retries of failed calls.")
    circuit_breaker: CircuitBreaker | None = Field(
        default=None, description="Stop calling for a while after repeated failures."
    )
    rate_limit: RateLimitSpec | None = Field(default=None, description="At most N calls per time.")
    timeout: Duration = duration_field("30s", "Limit of one call.")
    max_in_flight: int = Field(
        default=10,
        ge=1,
        description="Calls under way at once (events of one key are always called one by one).",
    )
    dlq: TopicName = Field(
        default_factory=_default_dlq,
        description="Dead letter topic for events that cannot be delivered; default <name>.dlq.",
    )
    _origin: Origin | None = PrivateAttr(default=None)

    @property
    def origin(self) -> Origin:
        return self._origin or Origin(UNKNOWN_SOURCE, ())


# -- lookups ----------------------------------------------------------------------------------


class LookupItem(AdapterBlock):
    """A call an `enrich` step makes by name (e.g. a SOAP operation); its adapter key says how."""

    name: FlowName = Field(description="The name `enrich.lookup` uses.")
    timeout: Duration = duration_field("10s", "Limit of one call.")
    # Short by default: a lookup's retries happen inside a flow's batch, which has a deadline.
    retry: Retry = Field(
        default_factory=lambda: Retry(
            attempts=3,
            backoff=Backoff(initial=timedelta(milliseconds=200), max=timedelta(seconds=2)),
        ),
        description="Retries of a call that failed transiently; then the record is "
        "dead-lettered. Default: 3 attempts, 200ms to 2s apart.",
    )
    circuit_breaker: CircuitBreaker | None = Field(
        default=None,
        description="After this many failures in a row the service is taken as down: the flow "
        "waits (its batch is redone later) instead of dead-lettering records.",
    )
    rate_limit: RateLimitSpec | None = Field(default=None, description="At most N calls per time.")
    _origin: Origin | None = PrivateAttr(default=None)

    @property
    def origin(self) -> Origin:
        return self._origin or Origin(UNKNOWN_SOURCE, ())


# -- the inbound HTTP server ------------------------------------------------------------------

DEFAULT_MAX_BODY = 512 * 1024
_BYTE_SIZE = TypeAdapter(ByteSize)


def parse_byte_size(value: object) -> int:
    """`512KiB`, `1MiB`, `64KB` or a whole number of bytes -> bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    try:
        size = int(_BYTE_SIZE.validate_python(value))
    except ValidationError:
        size = 0
    if size <= 0:
        raise _invalid("a size in bytes greater than zero, e.g. 512KiB, 1MiB or 65536", value)
    return size


ByteCount = Annotated[
    int,
    PlainValidator(parse_byte_size),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer", "minimum": 1}, {"type": "string"}],
            "description": "A size: bytes, or with a unit (KB, KiB, MB, MiB), e.g. 512KiB.",
        }
    ),
]


class PublishApi(Block):
    """`POST <prefix>/<schema full name>`: internal systems publish events in the schema's
    JSON shape, without a mapping."""

    prefix: str = Field(
        default="/events", pattern=r"^/[A-Za-z0-9/_.-]*[^/]$", description="Path prefix."
    )
    events: dict[SchemaName, TopicName] = Field(
        min_length=1, description="Schema full name -> the topic its events go to."
    )
    auth: dict[str, Any] | None = Field(
        default=None,
        description="Who may publish; the same settings as a rest inbound item's auth. "
        "Required unless http.host is a loopback address (anonymous: true lets anyone publish).",
    )
    max_body: ByteCount = Field(
        default=DEFAULT_MAX_BODY, description="Largest accepted body; larger ones get 413."
    )


class HttpSettings(Block):
    """The one HTTP server of a `bus run` process, shared by every inbound endpoint."""

    host: str = Field(
        default="127.0.0.1",
        description="Address to listen on (0.0.0.0: all); on one that is not a loopback "
        "address, every endpoint needs auth (or auth: {anonymous: true}).",
    )
    port: int = Field(default=8080, ge=0, le=65535, description="Port to listen on.")
    publish: PublishApi | None = Field(default=None, description="The generic publish API.")


class TracingSettings(Block):
    """OpenTelemetry traces: a span per hop, context in the records' `traceparent` header."""

    exporter: Literal["none", "console", "otlp"] = Field(
        default="none",
        description="Where spans go: nowhere (no span is made), stdout, or an OTLP/HTTP collector.",
    )
    endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP traces URL; omitted: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or "
        "OTEL_EXPORTER_OTLP_ENDPOINT, else http://localhost:4318/v1/traces.",
    )
    sample_ratio: float = Field(
        default=1.0, ge=0.0, le=1.0, description="Share of journeys traced (by trace id)."
    )
    service_name: str = Field(default="bus", min_length=1, description="OTel service.name.")


class JourneySettings(Block):
    """Every hop writes a small record to the journey topic, keyed by the journey's root event
    id, which `bus trace` and the admin API's /journeys read."""

    enabled: bool = Field(default=True, description="Write journey records at all.")
    topic: TopicName = Field(default="bus.journeys", description="The journey topic.")
    sample_ratio: float = Field(
        default=1.0,
        ge=0.0,
        le=1.0,
        description="Share of journeys recorded, chosen by root event id (all hops or none).",
    )
    retention: Duration = duration_field("168h", "How long the journey topic keeps records.")


class LogSettings(Block):
    """The process's log lines."""

    format: Literal["json", "text"] = Field(
        default="json", description="JSON lines (time, level, event id, trace id, flow, step)."
    )
    level: Literal["debug", "info", "warning", "error"] = Field(default="info")
    redact: tuple[str, ...] = Field(
        default=(),
        description="Further literal values never to be written (configured secrets always are).",
    )


class AdminSettings(Block):
    """The admin API (health, readiness, metrics, flows, journeys, DLQ) on a port of its own."""

    host: str = Field(default="127.0.0.1", description="Address to listen on (0.0.0.0: all).")
    port: int = Field(default=9180, ge=0, le=65535, description="Port to listen on.")
    auth: dict[str, Any] | None = Field(
        default=None,
        description="Who may call it; the same settings as a rest inbound item's auth. "
        "Required unless host is a loopback address.",
    )


class ObservabilitySettings(Block):
    """Traces, event journeys, logs and the admin API of a `bus run` process."""

    tracing: TracingSettings = Field(default_factory=TracingSettings)
    journeys: JourneySettings = Field(default_factory=JourneySettings)
    logs: LogSettings = Field(default_factory=LogSettings)
    admin: AdminSettings | None = Field(
        default=None, description="The admin API; omitted: none is served."
    )


# -- files and sets ---------------------------------------------------------------------------

FlowItem = Inbound | Mediation | Outbound | LookupItem
SECTIONS = ("inbound", "mediation", "outbound", "lookups")


class FlowFile(Block):
    """One flow file. Validate it with `context={"source": SourceMap}` to locate its items."""

    model_config = ConfigDict(json_schema_extra={"patternProperties": {"^x-": {}}})

    kafka: KafkaSettings | None = Field(default=None, description="Where Kafka is.")
    topics: TopicDefaults | None = Field(
        default=None, description="Settings of topics the flows create when missing."
    )
    http: HttpSettings | None = Field(
        default=None, description="The inbound HTTP server (webhooks, publish API)."
    )
    observability: ObservabilitySettings | None = Field(
        default=None, description="Traces, journeys, logs and the admin API."
    )
    inbound: tuple[Inbound, ...] = Field(default=(), description="External calls to events.")
    mediation: tuple[Mediation, ...] = Field(default=(), description="Events between topics.")
    outbound: tuple[Outbound, ...] = Field(default=(), description="Events to external calls.")
    lookups: tuple[LookupItem, ...] = Field(
        default=(), description="Calls that enrich steps make by name."
    )
    _source: SourceMap = PrivateAttr(default=UNKNOWN_SOURCE)

    @classmethod
    def _sort_keys(cls, data: dict[Any, Any]) -> tuple[dict[Any, Any], KeyProblems]:
        # As in Compose files, top-level `x-` keys are the user's own, e.g. to hold anchors.
        own = {key: value for key, value in data.items() if not str(key).startswith("x-")}
        kept, problems = super()._sort_keys(own)
        return kept, [(loc, f"{message}, or x-<name> for your own") for loc, message in problems]

    @model_validator(mode="after")
    def _locate(self, info: ValidationInfo) -> Self:
        source = (info.context or {}).get("source", UNKNOWN_SOURCE)
        self._source = source
        for section, index, item in self.items():
            item._origin = Origin(source, (section, index))
        return self

    @property
    def source(self) -> SourceMap:
        return self._source

    def items(self) -> Iterator[tuple[str, int, FlowItem]]:
        """Every inbound, mediation and outbound item with its section and index."""
        for section in SECTIONS:
            items: tuple[FlowItem, ...] = getattr(self, section)
            for index, item in enumerate(items):
                yield section, index, item


def flow_set_conflicts(files: Iterable[FlowFile]) -> list[str]:
    """Problems that only show when files come together: a name used twice, two `kafka`s."""
    files = tuple(files)
    problems: list[str] = []
    named: dict[str, Origin] = {}
    for file in files:
        for _, _, item in file.items():
            first = named.setdefault(item.name, item.origin)
            if first is not item.origin:
                problems.append(
                    item.origin.problem(
                        f"name {item.name!r} is already used by {format_path(first.path)} "
                        f"at {first.where()}; names are unique across all flow files",
                        "name",
                    )
                )
    for section in ("kafka", "topics", "http", "observability"):
        problems.extend(_settings_conflicts(files, section))
    return problems


def _settings_conflicts(files: tuple[FlowFile, ...], section: str) -> list[str]:
    first: FlowFile | None = None
    problems = []
    for file in files:
        settings = getattr(file, section)
        if settings is None:
            continue
        if first is None:
            first = file
        elif settings != getattr(first, section):
            problems.append(
                file.source.problem(
                    (section,),
                    f"differs from {section} at {first.source.where((section,))}; "
                    "set it in one file only (or the same in each)",
                )
            )
    return problems


@dataclass(frozen=True)
class FlowSet:
    """All flows of all files; names are unique across them (load_flow_files checks it)."""

    files: tuple[FlowFile, ...] = ()

    def __post_init__(self) -> None:
        problems = flow_set_conflicts(self.files)
        if problems:
            raise ValueError("\n".join(problems))

    @property
    def kafka(self) -> KafkaSettings | None:
        return next((file.kafka for file in self.files if file.kafka is not None), None)

    @property
    def topics(self) -> TopicDefaults | None:
        return next((file.topics for file in self.files if file.topics is not None), None)

    @property
    def http(self) -> HttpSettings | None:
        return next((file.http for file in self.files if file.http is not None), None)

    @property
    def observability(self) -> ObservabilitySettings:
        chosen = (file.observability for file in self.files if file.observability is not None)
        return next(chosen, ObservabilitySettings())

    @property
    def inbound(self) -> tuple[Inbound, ...]:
        return tuple(item for file in self.files for item in file.inbound)

    @property
    def mediation(self) -> tuple[Mediation, ...]:
        return tuple(item for file in self.files for item in file.mediation)

    @property
    def outbound(self) -> tuple[Outbound, ...]:
        return tuple(item for file in self.files for item in file.outbound)

    @property
    def lookups(self) -> tuple[LookupItem, ...]:
        return tuple(item for file in self.files for item in file.lookups)
