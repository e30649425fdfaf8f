"""The external system's answer as an event: the outbound item's `reply` block.

A reply is a new event of `reply.type`, each field mapped by an expression over `response`
(status, headers, body), `event` (the request event's data) and `attributes` (its CloudEvents
attributes). It keeps the request's key and subject, so it lands in the partition of the
request's key and can be joined to it; `ce_parentid` names the request and `ce_rootid` the
request's journey (`bus.events.lineage`), which the reply joins. Its id derives from
(flow, request id): delivering a request again after a crash makes a reply with the same id,
which consumers drop as a duplicate.
"""

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from bus.delivery.contract import Response
from bus.events.catalog import SchemaCatalog
from bus.events.codec import DecodedEvent
from bus.events.event import Event
from bus.events.lineage import child_extensions
from bus.events.validation import new_event
from bus.flows import model
from bus.flows.expressions import Expression, compile_expression
from bus.flows.steps import attributes_of

REPLY_VARIABLES = ("response", "event", "attributes")
"""The names a reply expression sees."""
_REPLY_IDS = uuid.UUID("3c0f8e52-6a2d-4b7f-9d41-8e5b1f0a2c97")


@dataclass(frozen=True)
class ReplyPlan:
    """Where replies go, of which type, and how each field is made."""

    type: str
    topic: str
    map: Mapping[str, Expression] = field(default_factory=dict)


def reply_plan_from(reply: model.Reply) -> ReplyPlan:
    """Compile a flow file's `reply` block (ExpressionError if an expression does not compile;
    `bus validate` has said so already)."""
    return ReplyPlan(
        type=reply.type,
        topic=reply.topic,
        map={
            name: compile_expression(source, variables=REPLY_VARIABLES)
            for name, source in reply.map.items()
        },
    )


def reply_event_id(flow: str, request_id: str) -> str:
    """The reply's id: the same for every delivery of one request by one flow."""
    return str(uuid.uuid5(_REPLY_IDS, f"{flow}/{request_id}/reply"))


def reply_event(
    plan: ReplyPlan,
    catalog: SchemaCatalog,
    *,
    flow: str,
    source: str,
    request: DecodedEvent,
    response: Response,
) -> Event:
    """The reply to `request`. Raises ExpressionError when a mapping fails and
    EventValidationError when the mapped data does not fit `plan.type`."""
    event = request.event
    values = {
        "response": response.as_variable(),
        "event": event.data,
        "attributes": attributes_of(event),
    }
    data = {name: expression.evaluate_in(values) for name, expression in plan.map.items()}
    return new_event(
        catalog,
        plan.type,
        data,
        source=source,
        key=event.key,
        subject=event.subject,
        event_id=reply_event_id(flow, event.id),
        extensions=child_extensions(event),
    )
