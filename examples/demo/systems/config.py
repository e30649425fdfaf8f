"""What the demo systems read from the environment: shared secrets and the fault switch.

Every value has a default, so the systems and the flow files (which write the same defaults as
`${NAME:-default}`) agree out of the box. As in the flow files, an empty variable counts as
unset. The defaults are demo values: anything real sets its own.
"""

import os
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULTS = {
    "CRM_WEBHOOK_SECRET": "demo-crm-webhook-secret",
    "CRM_API_TOKEN": "demo-crm-api-token",
    "ERP_PASSWORD": "demo-erp-password",
    "GATEWAY_CLIENT_ID": "bus",
    "GATEWAY_CLIENT_SECRET": "demo-gateway-secret",
}
ERP_USER = "bus"
"""The WS-Security user the ERP knows (the flows send it as `wsse.username`)."""


def setting(name: str, environ: Mapping[str, str] | None = None) -> str:
    """The variable's value, or its default when it is unset or empty."""
    value = (os.environ if environ is None else environ).get(name, "")
    return value or DEFAULTS[name]


@dataclass(frozen=True)
class Secrets:
    crm_webhook_secret: str
    """Signs the CRM's webhooks (the bus checks the signature)."""
    crm_api_token: str
    """The bearer token the bus presents to the CRM's API."""
    erp_password: str
    """The ERP's WS-Security password for user `bus`."""
    gateway_client_id: str
    gateway_client_secret: str
    """The bus's OAuth2 client credentials at the payment gateway."""

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> "Secrets":
        return cls(
            crm_webhook_secret=setting("CRM_WEBHOOK_SECRET", environ),
            crm_api_token=setting("CRM_API_TOKEN", environ),
            erp_password=setting("ERP_PASSWORD", environ),
            gateway_client_id=setting("GATEWAY_CLIENT_ID", environ),
            gateway_client_secret=setting("GATEWAY_CLIENT_SECRET", environ),
        )


IDEMPOTENCY_KEY = "Idempotency-Key"
"""The header by which the bus names each call, and the systems recognise a repeated one."""
