"""`GET /openapi.json`: an OpenAPI 3.1 document of the bus's inbound REST endpoints.

Two kinds of endpoint are described:

- a flow file's inbound webhooks (`EndpointDoc`): the request body is derived from the event
  mapping. `body.a.b` mapped as it is to an event field makes `a.b` a property with that field's
  schema (required if the field is); any other mention of a body path (`body.first + " " +
  body.last`, `has(body.x) ? ...`) makes the path a property of any value. `{id}` in the path,
  `query.x` and `headers.x` (or `headers["x-foo"]`) become parameters. The body may carry any
  other property: webhook payloads have many fields that no mapping reads.
- the generic publish API (`PublishDoc`): `POST {prefix}/{schema full name}`, whose body is
  exactly the event data as `bus.events.validation.json_schema` describes it, unknown fields
  refused.

The event schemas and the named Avro types in them are `components/schemas`, under their Avro
full names. Every operation answers 202 with the event id, or an RFC 9457 problem.
"""

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from bus.events.catalog import SchemaVersion
from bus.events.validation import json_schema
from bus.flows.expressions import LITERAL_OR_COMMENT, NAME_PATTERN

OPENAPI_VERSION = "3.1.0"
IDEMPOTENCY_HEADER = "Idempotency-Key"
PROBLEM_MEDIA_TYPE = "application/problem+json"


@dataclass(frozen=True)
class SecurityDoc:
    """How an endpoint authenticates, for `components/securitySchemes`."""

    kind: Literal["api_key_header", "api_key_query", "basic", "hmac", "jwt"]
    name: str | None = None  # the header or query parameter name (api_key_*, hmac's header)
    description: str = ""


@dataclass(frozen=True)
class EndpointDoc:
    """One inbound webhook endpoint of a flow file."""

    name: str  # the inbound item's name (operationId)
    method: str  # "POST", "PUT", ...
    path: str  # aiohttp-style, may contain {id} path parameters
    event: SchemaVersion  # the canonical event it becomes
    topic: str
    event_map: Mapping[str, str]  # event field -> expression over body, query, headers, path
    security: SecurityDoc | None
    max_body_bytes: int
    description: str = ""


@dataclass(frozen=True)
class PublishDoc:
    """The generic publish API: POST {prefix}/{schema full name}."""

    prefix: str  # e.g. "/events"
    schemas: Mapping[str, tuple[SchemaVersion, str]]  # schema full name -> (version, topic)
    security: SecurityDoc | None
    max_body_bytes: int


def openapi_document(
    endpoints: Sequence[EndpointDoc],
    publish: PublishDoc | None,
    *,
    title: str = "bus inbound API",
    version: str,
    server_url: str | None = None,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `endpoints` and the publish API; ValueError if two
    operations share a method and path or an operationId, or a security scheme lacks its name."""
    builder = _Builder()
    # Current versions first: they get the plain names when two versions of a type differ.
    events = [endpoint.event for endpoint in endpoints]
    if publish is not None:
        events += [event for event, _ in publish.schemas.values()]
    for event in sorted(events, key=lambda event: not event.current):
        builder.event(event)
    for endpoint in endpoints:
        builder.add_endpoint(endpoint)
    if publish is not None:
        builder.add_publish(publish)
    return builder.document(title, version, server_url)


# --- what an expression reads -------------------------------------------------------------------

_VARIABLES = ("body", "query", "headers", "path")
_MENTION = re.compile(
    rf"(?P<skip>{LITERAL_OR_COMMENT})"
    rf"|(?<![\w.])(?P<var>{'|'.join(_VARIABLES)})\b(?!\s*\()"
)
_STEP = re.compile(
    rf"\s*(?:\.\s*(?P<name>{NAME_PATTERN})(?!\s*\()"
    r"|\[\s*(?:\"(?P<double>[^\"\\\n]*)\"|'(?P<single>[^'\\\n]*)')\s*\])"
)
# aiohttp's own pattern for a variable part of a path: {name} or {name:regex}
_ROUTE_VARIABLE = re.compile(
    r"\{(?P<name>[_a-zA-Z][_a-zA-Z0-9]*)(?::(?P<re>[^{}]*(?:\{[^{}]*\}[^{}]*)*))?\}"
)
# OpenAPI ignores these as header parameters: they are described elsewhere
_RESERVED_HEADERS = frozenset({"accept", "content-type", "authorization"})


@dataclass(frozen=True)
class _Mention:
    variable: str
    path: tuple[str, ...]  # the fields selected after it: `body.a["b"]` is ("a", "b")
    whole: bool  # the expression is nothing but this path


def _mentions(source: str) -> list[_Mention]:
    """Every mention of an inbound variable in `source` (outside literals and comments), with
    the field path that follows it, as far as it is made of names and quoted keys."""
    found = []
    for mention in _MENTION.finditer(source):
        if mention["var"] is None:
            continue
        path: list[str] = []
        at = mention.end()
        while step := _STEP.match(source, at):
            for part in (step["name"], step["double"], step["single"]):
                if part is not None:
                    path.append(part)
                    break
            at = step.end()
        whole = _blank(source[: mention.start()]) and _blank(source[at:])
        found.append(_Mention(mention["var"], tuple(path), whole))
    return found


def _blank(text: str) -> bool:
    """Whether `text` is only white space and comments."""
    return not re.sub(r"//[^\n]*", "", text).strip()


# --- the request body derived from the mapping -------------------------------------------------


@dataclass
class _BodyNode:
    """One property of the request body: the schemas it must meet and its own properties."""

    schemas: list[dict[str, Any]] = field(default_factory=list)
    children: dict[str, "_BodyNode"] = field(default_factory=dict)
    required: bool = False

    def add(self, path: tuple[str, ...], schema: dict[str, Any], required: bool) -> None:
        node = self
        for name in path:
            node = node.children.setdefault(name, _BodyNode())
            node.required = node.required or required  # its parents must be there too
        if schema:
            node.schemas.append(schema)

    def render(self, *, root: bool = False) -> dict[str, Any]:
        parts = list(self.schemas)
        if self.children or root:
            shape: dict[str, Any] = {"type": "object"}
            if self.children:
                shape["properties"] = {
                    name: child.render() for name, child in sorted(self.children.items())
                }
                required = sorted(name for name, child in self.children.items() if child.required)
                if required:
                    shape["required"] = required
            if root:
                shape["additionalProperties"] = True
            parts.append(shape)
        if not parts:
            return {}
        return parts[0] if len(parts) == 1 else {"allOf": parts}


# --- the document ------------------------------------------------------------------------------


def _problem_content(schema: str = "Problem") -> dict[str, Any]:
    return {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": f"#/components/schemas/{schema}"}}}


_FIXED_SCHEMAS: dict[str, dict[str, Any]] = {
    "Accepted": {
        "type": "object",
        "description": "The event was stored in Kafka (acknowledged by every in-sync replica).",
        "properties": {
            "id": {
                "type": "string",
                "description": "The event id (its CloudEvents id); a retry with the same "
                f"{IDEMPOTENCY_HEADER} yields the same id.",
            }
        },
        "required": ["id"],
    },
    "Problem": {
        "type": "object",
        "description": "An RFC 9457 problem details object.",
        "properties": {
            "type": {
                "type": "string",
                "format": "uri",
                "description": "Identifies the kind of problem: a tag: URI, not meant to be "
                "fetched.",
            },
            "title": {"type": "string", "description": "The same for every problem of a type."},
            "status": {"type": "integer", "minimum": 100, "maximum": 599},
            "detail": {
                "type": "string",
                "description": "What was wrong with this request, and how to fix it.",
            },
            "instance": {
                "type": "string",
                "format": "uri-reference",
                "description": "The path that was called.",
            },
        },
        "required": ["type", "title", "status", "detail"],
    },
    "FieldProblem": {
        "type": "object",
        "properties": {
            "field": {
                "type": "string",
                "description": "The invalid field's path in the event, e.g. "
                "lines[0].unitPrice.amount.",
            },
            "problem": {"type": "string", "description": "What was expected."},
        },
        "required": ["field", "problem"],
    },
    "ValidationProblem": {
        "allOf": [
            {"$ref": "#/components/schemas/Problem"},
            {
                "type": "object",
                "properties": {
                    "errors": {
                        "type": "array",
                        "items": {"$ref": "#/components/schemas/FieldProblem"},
                        "description": "One entry per invalid field.",
                    }
                },
                "required": ["errors"],
            },
        ]
    },
}

_RESPONSES: dict[str, dict[str, Any]] = {
    "Accepted": {
        "description": "Accepted: the event is stored in Kafka.",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Accepted"}}},
    },
    "BadRequest": {
        "description": "The body is not JSON, or a header or parameter is malformed.",
        "content": _problem_content(),
    },
    "Unauthorized": {
        "description": "Credentials or signature missing or not valid.",
        "content": _problem_content(),
    },
    "Forbidden": {
        "description": "The token is valid but does not grant this endpoint.",
        "content": _problem_content(),
    },
    "UnsupportedMediaType": {
        "description": "The body is not application/json.",
        "content": _problem_content(),
    },
    "UnprocessableContent": {
        "description": "The event the request makes does not match its schema; `errors` names "
        "each invalid field.",
        "content": _problem_content("ValidationProblem"),
    },
    "ServiceUnavailable": {
        "description": "Kafka did not store the event in time; nothing was stored. Retry after "
        f"the time given, with the same {IDEMPOTENCY_HEADER} if one was sent.",
        "headers": {"Retry-After": {"$ref": "#/components/headers/Retry-After"}},
        "content": _problem_content(),
    },
}

_HEADERS: dict[str, dict[str, Any]] = {
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "integer", "minimum": 0},
    }
}

_PARAMETERS: dict[str, dict[str, Any]] = {
    IDEMPOTENCY_HEADER: {
        "name": IDEMPOTENCY_HEADER,
        "in": "header",
        "required": False,
        "description": "Any key the caller chooses for this request: a retry with the same key "
        "yields the same event id, so a retried request never makes a second, different event.",
        "schema": {"type": "string", "minLength": 1},
    }
}


class _Builder:
    def __init__(self) -> None:
        self.schemas: dict[str, dict[str, Any]] = copy.deepcopy(_FIXED_SCHEMAS)
        self.schemes: dict[str, dict[str, Any]] = {}
        self.paths: dict[str, dict[str, Any]] = {}
        self.responses: set[str] = set()
        self.tags: dict[str, str] = {}
        self._operation_ids: set[str] = set()
        self._events: dict[str, str] = {}  # SchemaVersion.identity -> component name

    # -- operations

    def add_endpoint(self, endpoint: EndpointDoc) -> None:
        event = self.event(endpoint.event)
        body = _BodyNode()
        from_path: dict[str, list[str]] = {}
        query: dict[str, list[str]] = {}
        headers: dict[str, tuple[str, list[str]]] = {}  # lowercase -> (as written, fields)
        for target, source in endpoint.event_map.items():
            for mention in _mentions(source):
                if mention.variable == "body":
                    if mention.whole:
                        schema, required = self.field_schema(event, target)
                        body.add(mention.path, _leads_to(schema, target), required)
                    else:
                        body.add(mention.path, {}, False)
                elif mention.variable == "path" and mention.path:
                    from_path.setdefault(mention.path[0], []).append(target)
                elif mention.variable == "query" and mention.path:
                    query.setdefault(mention.path[0], []).append(target)
                elif mention.variable == "headers" and mention.path:
                    name = mention.path[0]
                    headers.setdefault(name.lower(), (name, []))[1].append(target)
        security = self.security(endpoint.security)
        path, parameters = _path_parameters(endpoint.path, from_path)
        parameters += _other_parameters(endpoint.security, query, headers)
        version = endpoint.event
        summary = f"{endpoint.name}: becomes {version.full_name} on {endpoint.topic}"
        lines = [endpoint.description] if endpoint.description else []
        lines.append(
            f"A webhook that becomes a `{version.full_name}` event (schema version "
            f"{version.version}) on the Kafka topic `{endpoint.topic}`; bodies over "
            f"{endpoint.max_body_bytes} bytes are refused. The event's fields come from the "
            "request:"
        )
        lines.append(_mapping_table(endpoint.event_map))
        operation = self.operation(
            endpoint.name,
            endpoint.method,
            summary=summary,
            description="\n\n".join(lines),
            tag=("webhooks", "Webhooks that flow files receive, each becoming one event."),
            parameters=parameters,
            body=body.render(root=True),
            security=security,
            max_body_bytes=endpoint.max_body_bytes,
            version=version,
            topic=endpoint.topic,
        )
        operation["x-bus-event-map"] = dict(endpoint.event_map)
        self.put(path, endpoint.method, operation)

    def add_publish(self, publish: PublishDoc) -> None:
        base = "/" + publish.prefix.strip("/") if publish.prefix.strip("/") else ""
        security = self.security(publish.security)
        for full_name, (version, topic) in sorted(publish.schemas.items()):
            schema = {"$ref": f"#/components/schemas/{self.event(version)}"}
            operation = self.operation(
                f"publish.{full_name}",
                "POST",
                summary=f"Publish a {full_name} event to {topic}",
                description=(
                    f"The body is the event's data: a `{full_name}` (schema version "
                    f"{version.version}) as JSON, checked against the schema; unknown fields "
                    f"are refused. It is stored on the Kafka topic `{topic}`. Bodies over "
                    f"{publish.max_body_bytes} bytes are refused."
                ),
                tag=("publish", "The generic publish API: one operation per event type."),
                parameters=[],
                body=schema,
                security=security,
                max_body_bytes=publish.max_body_bytes,
                version=version,
                topic=topic,
            )
            self.put(f"{base}/{full_name}", "POST", operation)

    def operation(
        self,
        operation_id: str,
        method: str,
        *,
        summary: str,
        description: str,
        tag: tuple[str, str],
        parameters: list[dict[str, Any]],
        body: dict[str, Any],
        security: tuple[str, SecurityDoc] | None,
        max_body_bytes: int,
        version: SchemaVersion,
        topic: str,
    ) -> dict[str, Any]:
        if operation_id in self._operation_ids:
            raise ValueError(f"two operations are named {operation_id!r}; names must differ")
        self._operation_ids.add(operation_id)
        self.tags.setdefault(*tag)
        if method.upper() == "POST":
            parameters = [*parameters, {"$ref": f"#/components/parameters/{IDEMPOTENCY_HEADER}"}]
        operation: dict[str, Any] = {
            "operationId": operation_id,
            "summary": summary,
            "description": description,
            "tags": [tag[0]],
        }
        if parameters:
            operation["parameters"] = parameters
        operation["requestBody"] = {
            "required": True,
            "description": f"JSON, at most {max_body_bytes} bytes.",
            "content": {"application/json": {"schema": body}},
        }
        responses: dict[str, Any] = {"202": self.response("Accepted")}
        responses["400"] = self.response("BadRequest")
        if security is not None:
            responses["401"] = self.response("Unauthorized")
            if security[1].kind == "jwt":
                responses["403"] = self.response("Forbidden")
        responses["413"] = {
            "description": f"The body is longer than {max_body_bytes} bytes.",
            "content": _problem_content(),
        }
        responses["415"] = self.response("UnsupportedMediaType")
        responses["422"] = self.response("UnprocessableContent")
        responses["503"] = self.response("ServiceUnavailable")
        operation["responses"] = responses
        if security is not None:
            operation["security"] = [{security[0]: []}]
        operation["x-bus-topic"] = topic
        operation["x-bus-event-type"] = version.full_name
        operation["x-bus-schema-version"] = version.version
        operation["x-bus-max-body-bytes"] = max_body_bytes
        return operation

    def put(self, path: str, method: str, operation: dict[str, Any]) -> None:
        item = self.paths.setdefault(path, {})
        verb = method.lower()
        if verb in item:
            raise ValueError(f"two operations serve {method.upper()} {path}")
        item[verb] = operation

    def response(self, name: str) -> dict[str, str]:
        self.responses.add(name)
        return {"$ref": f"#/components/responses/{name}"}

    # -- schemas

    def event(self, version: SchemaVersion) -> str:
        """The component name of an event's schema, added with its named types."""
        known = self._events.get(version.identity)
        if known is not None:
            return known
        schema = json_schema(version)
        schema.pop("$schema", None)
        named: dict[str, dict[str, Any]] = {**schema.pop("$defs", {}), version.full_name: schema}
        names = {name: _component_key(name) for name in named}
        while True:  # a name taken by a different schema gets a suffix, and so its users change
            placed = {name: _with_refs(body, names) for name, body in named.items()}
            clashes = [
                name
                for name, body in placed.items()
                if names[name] in self.schemas and self.schemas[names[name]] != body
            ]
            if not clashes:
                break
            for name in clashes:
                names[name] = _free_key(names[name], {*self.schemas, *names.values()})
        for name, body in placed.items():
            self.schemas[names[name]] = body
        self._events[version.identity] = names[version.full_name]
        return names[version.full_name]

    def field_schema(self, component: str, target: str) -> tuple[dict[str, Any], bool]:
        """The schema of an event field (`address.city` for a nested one), and whether the
        event requires it: no default, and null is not a value of it."""
        node: dict[str, Any] = {"$ref": f"#/components/schemas/{component}"}
        required = False
        for name in target.split("."):
            record = self._record(node)
            if record is None or name not in record.get("properties", {}):
                return {}, False
            node = record["properties"][name]
            required = name in record.get("required", ()) and not _nullable(node)
        leaf = {key: value for key, value in node.items() if key != "default"}
        return copy.deepcopy(leaf), required

    def _record(self, node: dict[str, Any]) -> dict[str, Any] | None:
        if "$ref" in node:
            return self._record(self.schemas[node["$ref"].rpartition("/")[2]])
        options = [option for option in node.get("anyOf", ()) if option != {"type": "null"}]
        if len(options) == 1:
            return self._record(options[0])
        return node if "properties" in node else None

    # -- security

    def security(self, doc: SecurityDoc | None) -> tuple[str, SecurityDoc] | None:
        if doc is None:
            return None
        scheme, key = _scheme(doc)
        while key in self.schemes and self.schemes[key] != scheme:
            key = _free_key(key, set(self.schemes))
        self.schemes[key] = scheme
        return key, doc

    # -- the whole

    def document(self, title: str, version: str, server_url: str | None) -> dict[str, Any]:
        document: dict[str, Any] = {
            "openapi": OPENAPI_VERSION,
            "info": {
                "title": title,
                "version": version,
                "description": "Inbound endpoints of the bus: each call becomes one canonical "
                "event, stored in Kafka before the answer. Errors are RFC 9457 problem details.",
            },
        }
        if server_url is not None:
            document["servers"] = [{"url": server_url}]
        if self.tags:
            document["tags"] = [
                {"name": name, "description": text} for name, text in self.tags.items()
            ]
        document["paths"] = {path: self.paths[path] for path in sorted(self.paths)}
        components: dict[str, Any] = {"schemas": dict(sorted(self.schemas.items()))}
        if self.responses:
            components["responses"] = {name: _RESPONSES[name] for name in sorted(self.responses)}
        if "ServiceUnavailable" in self.responses:
            components["headers"] = copy.deepcopy(_HEADERS)
        if self.paths:
            components["parameters"] = copy.deepcopy(_PARAMETERS)
        if self.schemes:
            components["securitySchemes"] = dict(sorted(self.schemes.items()))
        document["components"] = copy.deepcopy(components)
        return document


def _path_parameters(route: str, read: Mapping[str, list[str]]) -> tuple[str, list[dict[str, Any]]]:
    """An aiohttp route as an OpenAPI path (`{id:\\d+}` becomes `{id}`), and its parameters;
    `read` says which event fields each one goes into."""
    parameters = []
    for variable in _ROUTE_VARIABLE.finditer(route):
        parameter = _parameter(variable["name"], "path", read.get(variable["name"], []))
        parameter["required"] = True
        if variable["re"]:
            parameter["schema"]["pattern"] = f"^(?:{variable['re']})$"
        parameters.append(parameter)
    path = _ROUTE_VARIABLE.sub(lambda variable: "{" + variable["name"] + "}", route)
    return (path if path.startswith("/") else "/" + path), parameters


def _other_parameters(
    security: SecurityDoc | None,
    query: Mapping[str, list[str]],
    headers: Mapping[str, tuple[str, list[str]]],
) -> list[dict[str, Any]]:
    """Query and header parameters, but for what the security scheme describes."""
    credential = security.name if security is not None else None
    in_query = security is not None and security.kind == "api_key_query"
    skip = {IDEMPOTENCY_HEADER.lower(), *_RESERVED_HEADERS}
    if credential is not None and not in_query:
        skip.add(credential.lower())
    parameters = [
        _parameter(name, "query", targets)
        for name, targets in sorted(query.items())
        if not (in_query and name == credential)
    ]
    parameters += [
        _parameter(name, "header", targets)
        for lower, (name, targets) in sorted(headers.items())
        if lower not in skip
    ]
    return parameters


def _parameter(name: str, where: str, targets: list[str]) -> dict[str, Any]:
    fields = ", ".join(f"`{target}`" for target in sorted(set(targets)))
    text = f"Read by the event mapping of {fields}." if fields else "Not read by the mapping."
    return {
        "name": name,
        "in": where,
        "required": False,
        "description": text,
        "schema": {"type": "string"},
    }


def _leads_to(schema: dict[str, Any], target: str) -> dict[str, Any]:
    """A body property's schema that says which event field it becomes."""
    known = schema.get("description")
    text = f"Becomes the event's `{target}`." + (f" {known}" if known else "")
    return {**schema, "description": text}


def _mapping_table(event_map: Mapping[str, str]) -> str:
    rows = ["| event field | from the request |", "|---|---|"]
    for target, source in event_map.items():
        escaped = source.replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{target}` | `{escaped}` |")
    return "\n".join(rows)


def _nullable(schema: dict[str, Any]) -> bool:
    kind = schema.get("type")
    if kind == "null" or (isinstance(kind, list) and "null" in kind):
        return True
    return any(_nullable(option) for option in schema.get("anyOf", ()))


def _with_refs(node: Any, names: Mapping[str, str]) -> Any:
    """A copy of a JSON Schema whose `#/$defs/X` references point into components/schemas."""
    if isinstance(node, dict):
        result = {key: _with_refs(value, names) for key, value in node.items()}
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            result["$ref"] = f"#/components/schemas/{names[ref.removeprefix('#/$defs/')]}"
        return result
    if isinstance(node, list):
        return [_with_refs(item, names) for item in node]
    return node


def _component_key(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9._-]", "_", name) or "_"


def _free_key(key: str, taken: set[str]) -> str:
    stem = re.sub(r"-\d+$", "", key)
    number = 2
    while f"{stem}-{number}" in taken:
        number += 1
    return f"{stem}-{number}"


def _scheme(doc: SecurityDoc) -> tuple[dict[str, Any], str]:
    """The security scheme object for `doc`, and the key it is listed under."""
    if doc.kind in ("api_key_header", "api_key_query", "hmac") and not doc.name:
        raise ValueError(f"a {doc.kind} security scheme needs the name of its header or parameter")
    name = doc.name or ""
    scheme: dict[str, Any]
    if doc.kind == "api_key_header":
        scheme = {"type": "apiKey", "in": "header", "name": name}
        key, text = f"apiKey-{name}", f"An API key in the {name} header."
    elif doc.kind == "api_key_query":
        scheme = {"type": "apiKey", "in": "query", "name": name}
        key, text = f"apiKeyQuery-{name}", f"An API key in the {name} query parameter."
    elif doc.kind == "basic":
        scheme = {"type": "http", "scheme": "basic"}
        key, text = "basic", "HTTP Basic authentication."
    elif doc.kind == "jwt":
        scheme = {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
        key, text = "jwt", "A JWT bearer token; a valid token without the required claims is 403."
    else:
        scheme = {"type": "apiKey", "in": "header", "name": name}
        key = f"hmac-{name}"
        text = (
            f"An HMAC signature of the raw request body (with the sender's shared secret) in the "
            f"{name} header; not a key that could be sent as it is."
        )
    scheme["description"] = f"{text} {doc.description}".strip()
    return scheme, _component_key(key)
