"""Three small external systems for the `make run` demo, each a real aiohttp service on localhost.

- `crm.Crm`: a CRM with a REST API. Users edit customers and the shop places orders through it;
  it sends each change to the bus as a signed webhook (HMAC-SHA256, GitHub style) and retries
  when the bus is busy. The bus calls it back to link a customer to its ERP account and to
  report failed payments.
- `erp.Erp`: an ERP with a SOAP API described by its own WSDL (`examples/flows/wsdl/erp.wsdl`),
  WS-Security UsernameToken on every call: upsert customers (sometimes refusing one with the
  declared CustomerRejected fault), look customers up, create invoices (deduplicated by
  `Idempotency-Key`).
- `gateway.Gateway`: a payment gateway with a REST API behind OAuth2 client credentials, with
  idempotency keys, and transient failures (503, 429, slowness) injected on purpose.

Run all three: `PYTHONPATH=examples python -m demo.systems --bus-url http://127.0.0.1:8080`.
Each keeps a ledger of what it received (`GET /_demo/ledger`), so the demo can prove from the
systems' own records that nothing the bus accepted was lost.
"""
