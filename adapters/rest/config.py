"""The `rest:` settings of inbound and outbound items, as the flow file declares them.

```yaml
inbound:
  - name: crm-webhook
    rest: {path: /hooks/crm/customers, auth: {hmac: {preset: github, secrets: [...]}}}
    event: {type: com.acme.crm.CustomerChanged, key: body.id, map: {id: body.id}}
    topic: crm.customer-changed.v1
outbound:
  - name: crm-update
    from: crm.customer-upserted.v1
    rest: {method: PUT, url: "https://crm.example/api/customers/{event.customer_id}"}
```
An inbound item either serves a `path` (a webhook) or polls (`poll:`, see polling.py).
"""

import re
from typing import Annotated, Literal, Self

from pydantic import ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from adapters.rest.polling import RestPoll
from bus.auth.settings import InboundAuth, OutboundAuthConfig
from bus.flows.model import DEFAULT_MAX_BODY, Block, ByteCount, Expression

INBOUND_VARIABLES = ("body", "query", "headers", "path")
"""What an inbound item's expressions see: the JSON body, query parameters, headers (names in
lower case) and path parameters of the request."""
OUTBOUND_VARIABLES = ("event", "attributes")

_PATH = re.compile(r"/(?:[A-Za-z0-9._~!$&'()*+,;=:@-]+|\{[A-Za-z_][A-Za-z0-9_]*\}|/)*")

RoutePath = Annotated[
    str,
    Field(
        pattern=_PATH.pattern,
        description="The path served, from /; `{name}` segments become `path.name`.",
    ),
]


class RestInbound(Block):
    """A webhook endpoint (`path`) or a polling source (`poll`)."""

    # Settings hold secrets: an error message may quote the input, so it must not.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    path: RoutePath | None = Field(default=None, description="The path to serve.")
    method: Literal["POST", "PUT", "PATCH"] = Field(default="POST", description="HTTP method.")
    auth: InboundAuth | None = Field(
        default=None,
        description="Who may call; omitted: refused unless http.host is a loopback address "
        "(anonymous: true lets anyone call on purpose).",
    )
    max_body: ByteCount = Field(
        default=DEFAULT_MAX_BODY, description="Largest accepted body; larger ones get 413."
    )
    poll: RestPoll | None = Field(default=None, description="Poll a collection instead.")

    @model_validator(mode="after")
    def _path_or_poll(self) -> Self:
        if (self.path is None) == (self.poll is None):
            raise PydanticCustomError(
                "flow_value",
                "expected either path (serve a webhook) or poll (poll a collection), "
                + ("not both" if self.path else "found neither"),
            )
        return self


PLACEHOLDER = re.compile(r"\{([^{}]+)\}")


def url_placeholders(template: str) -> list[str]:
    """The expressions of a URL template: `https://x/customers/{event.id}` -> [`event.id`]."""
    return [match.strip() for match in PLACEHOLDER.findall(template)]


class RestOutbound(Block):
    """An HTTP call per event."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = Field(
        default="POST", description="HTTP method."
    )
    url: str = Field(
        pattern=r"^https?://",
        description="URL template: `{expression}` parts are filled from the event, URL-encoded.",
    )
    headers: dict[str, Expression] = Field(
        default_factory=dict, description="Header name -> expression (its value as text)."
    )
    query: dict[str, Expression] = Field(
        default_factory=dict, description="Query parameter -> expression."
    )
    body: Expression | None = Field(
        default=None,
        description="Expression for the JSON body; omitted: the item's `map` if it has one, "
        "else the event's data.",
    )
    auth: OutboundAuthConfig | None = Field(default=None, description="How to authenticate.")

    def placeholders(self) -> list[str]:
        return url_placeholders(self.url)
