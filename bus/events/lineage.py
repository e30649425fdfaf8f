"""Event lineage: which event an event was made from, and which journey it belongs to.

Two CloudEvents extensions, carried as `ce_parentid` and `ce_rootid` headers, say it. Every event
the bus writes downstream of another (a mediation output, an outbound reply) gets them from
`child_extensions`; an event without `rootid` (one published from outside) is the root of its
own journey. Journey records are keyed by the root id, so `bus trace` finds a whole tree from it.
"""

from collections.abc import Mapping

from bus.events.event import Event

PARENT_ID = "parentid"
"""CloudEvents extension (`ce_parentid`): the event this one was made from."""
ROOT_ID = "rootid"
"""CloudEvents extension (`ce_rootid`): the first event of the journey."""


def root_id_of(event: Event) -> str:
    """The journey an event belongs to: its `rootid`, else the event itself."""
    return event.extensions.get(ROOT_ID) or event.id


def child_extensions(parent: Event, extensions: Mapping[str, str] | None = None) -> dict[str, str]:
    """The extensions of an event made from `parent`: its own `extensions`, with `parentid`
    naming `parent` and `rootid` its journey (which replace any the child carried over from
    an ancestor, as an event passed through unchanged does)."""
    return {**(extensions or {}), PARENT_ID: parent.id, ROOT_ID: root_id_of(parent)}
