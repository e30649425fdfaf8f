"""A SOAP operation as an `enrich` lookup: the step's arguments in, the output message out.

```yaml
lookups:
  - name: erp-customer
    soap: {wsdl: wsdl/erp.wsdl, port: ErpPort, operation: GetCustomer}   # as an outbound's soap:
    timeout: 5s
mediation:
  - name: enrich-orders
    from: orders.placed.v1
    steps:
      - enrich: {lookup: erp-customer, with: {CustomerId: event.customerId}, into: customer}
```

The arguments are the operation's input elements (as an outbound item's `map`); the result is
the output message as plain data (`response.body` of an outbound call), e.g.
`{"Customer": {"CustomerId": "c-1", "CreditLimit": Decimal("5000.00"), ...}}`. `headers`
expressions see the arguments as `arguments`.

Failures are the outbound call's errors, which the flow treats by kind: a Client/Sender fault, or
arguments the operation cannot take, is a `PermanentDeliveryError`, which the enrich step turns
into a dead letter for that event; a Server/Receiver fault, a timeout or a connection failure is
a `TransientDeliveryError`, an outage of the service, which fails the batch (to be redone) rather
than dead-letter every event while the service is down.
"""

from typing import Any

import aiohttp

from adapters.soap.outbound import LOOKUP_VARIABLES, SoapCall, SoapOutbound
from adapters.soap.wsdl import WsdlDocument
from bus.auth.outbound import OutboundAuth


class SoapLookup:
    """The `bus.flows.steps.enrich.Lookup` of one SOAP lookup item."""

    def __init__(
        self,
        name: str,
        settings: SoapOutbound,
        *,
        session: aiohttp.ClientSession,
        auth: OutboundAuth | None,
        call_timeout: float,
        wsdl: WsdlDocument | None = None,
    ) -> None:
        self.name = name
        self.soap = SoapCall(
            settings,
            session=session,
            auth=auth,
            call_timeout=call_timeout,
            header_variables=LOOKUP_VARIABLES,
            wsdl=wsdl,
        )

    def __repr__(self) -> str:
        return f"SoapLookup({self.name!r}, {self.soap!r})"

    async def __call__(self, **arguments: Any) -> Any:
        response = await self.soap.invoke(arguments, header_values={"arguments": arguments})
        return response.body

    async def close(self) -> None:
        """Nothing of its own to close: the session and credentials belong to the runtime."""
