"""Whether the admin API's settings say who may call it, checked without building anything, so
that `bus validate` finds what `bus run` would refuse.

An admin API without auth is only allowed on a loopback address: it lists the flows, shows dead
letters (event data) and replays them, so anyone who can reach it must be someone we trust.
"""

from pydantic import ValidationError

from bus.auth.settings import ANONYMOUS, InboundAuth, is_loopback
from bus.flows.loading import settings_problems
from bus.flows.model import AdminSettings, KeyPath

SETTING = "observability.admin.auth"
_EXAMPLE = "auth: {api_key: {header: X-Admin-Key, keys: [${BUS_ADMIN_KEY}]}}"


def auth_problems(settings: AdminSettings) -> list[tuple[KeyPath, str]]:
    """What is wrong with the admin API's auth, each at its key path below observability.admin:
    an `auth` that is not valid (the same settings as a rest inbound item's), or none on a host
    that is not a loopback address."""
    if settings.auth is None:
        if is_loopback(settings.host):
            return []
        return [
            (
                ("auth",),
                f"missing, while the admin API would listen on {settings.host}, which is not a "
                "loopback address, so anyone on the network could read dead letters and replay "
                f"them; set {SETTING} (e.g. {_EXAMPLE}), or host: 127.0.0.1",
            )
        ]
    try:
        auth = InboundAuth.model_validate(settings.auth)
    except ValidationError as invalid:
        return [
            (("auth", *path), message)
            for path, message in settings_problems(invalid, settings.auth)
        ]
    if auth.anonymous_callers:
        # What an inbound endpoint may opt into, the admin API may not: it replays dead letters.
        return [
            (
                ("auth", ANONYMOUS),
                "the admin API cannot let anyone call: it shows dead letters (event data) and "
                f"replays them; set {SETTING} to a credential (e.g. {_EXAMPLE}), or remove auth "
                "and listen on host: 127.0.0.1",
            )
        ]
    return []


__all__ = ["SETTING", "auth_problems", "is_loopback"]
