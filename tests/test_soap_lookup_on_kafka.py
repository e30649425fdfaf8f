"""A SOAP operation as an `enrich` lookup of a mediation flow, on the real broker.

The flow file declares the lookup under `lookups:`; the flow runs as `bus run` runs it. A known
customer is enriched; an unknown one (a Client fault) is dead-lettered; while the service is
down (a Server fault) the flow pauses and, once it is back, the record is enriched: an outage
dead-letters nothing. Without a breaker, a record whose lookup keeps failing is dead-lettered
after its attempts, so it cannot stall its partition.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bus.events.publisher import Publisher
from bus.flows.dead_letters import DeadLetter
from tests.flow_harness import CATALOG, decode, read_all, read_records, running_flows, write_flow
from tests.soap_service import SoapService

WSDL = Path(__file__).parent / "data" / "wsdl" / "erp-accounts.wsdl"


@pytest.fixture
async def service() -> AsyncIterator[SoapService]:
    service = SoapService(
        customers={
            "c-known": {"Name": "Ada Lovelace"},
            "c-flaky": {"Name": "Grace Hopper", "down": True},
        }
    )
    await service.start()
    yield service
    await service.stop()


def customer(customer_id: str) -> dict[str, object]:
    return {
        "customerId": customer_id,
        "change": "UPDATED",
        "email": f"{customer_id}@example.com",
        "name": "someone",
        "changedAt": datetime(2026, 11, 24, 12, tzinfo=UTC),
    }


def flow_file(
    folder: Path, service: SoapService, *, flow: str, source: str, target: str, resilience: str
) -> Path:
    """A flow that enriches each customer with the ERP's GetCustomer, with `resilience` (one
    line of the lookup's settings)."""
    return write_flow(
        folder,
        f"""
lookups:
  - name: erp-customer
    soap:
      wsdl: {WSDL}
      service: ErpService
      port: ErpPort
      operation: GetCustomer
      address: {service.url}/erp/accounts
    timeout: 5s
    {resilience}
mediation:
  - name: {flow}
    from: {source}
    steps:
      - enrich: {{lookup: erp-customer, with: {{CustomerId: event.customerId}}, into: account}}
      - transform:
          to: com.acme.erp.CustomerUpsertResult
          map:
            customerId: event.customerId
            erpAccountId: event.account.Customer.Name
            outcome: '"UPDATED"'
            processedAt: attributes.time
    to: {target}
""",
    )


async def test_a_soap_lookup_enriches_dead_letters_and_waits_out_an_outage(
    service: SoapService, bootstrap_servers: str, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    source, target, flow = f"lookup-in-{run}", f"lookup-out-{run}", f"enriched-{run}"
    path = flow_file(
        tmp_path,
        service,
        flow=flow,
        source=source,
        target=target,
        resilience="circuit_breaker: {failures: 2, reset_after: 1s}",
    )
    async with (
        running_flows(path, bootstrap_servers),
        Publisher(bootstrap_servers, CATALOG, source="/test") as publisher,
    ):
        for customer_id in ("c-known", "c-unknown"):
            await publisher.publish(
                source, "com.acme.crm.CustomerChanged", customer(customer_id), key=customer_id
            )
        (known,) = await decode(await read_records(bootstrap_servers, target, 1))
        assert (known.data["customerId"], known.data["erpAccountId"]) == ("c-known", "Ada Lovelace")
        await publisher.publish(
            source, "com.acme.crm.CustomerChanged", customer("c-flaky"), key="c-flaky"
        )
        await asyncio.sleep(3)  # the service is down for this customer: the flow waits...
        assert len(await read_all(bootstrap_servers, target, 1.0)) == 1
        service.customers["c-flaky"]["down"] = False  # ...and goes on once it is back
        events = await decode(await read_records(bootstrap_servers, target, 2, within=90))
        assert [e.data["customerId"] for e in events] == ["c-known", "c-flaky"]
    letters = [
        DeadLetter.from_headers(record.headers)
        for record in await read_all(bootstrap_servers, f"{flow}.dlq")
    ]
    assert len(letters) == 1  # the unknown customer only: the outage dead-lettered nothing
    (letter,) = letters
    assert letter is not None
    assert "no customer c-unknown" in letter.error
    assert letter.step == "steps[0].enrich"


async def test_without_a_breaker_a_lookup_that_keeps_failing_dead_letters_its_record(
    service: SoapService, bootstrap_servers: str, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    source, target, flow = f"lookup-in-{run}", f"lookup-out-{run}", f"stubborn-{run}"
    path = flow_file(
        tmp_path,
        service,
        flow=flow,
        source=source,
        target=target,
        resilience="retry: {attempts: 2, backoff: {initial: 100ms, max: 100ms}}",
    )
    async with (
        running_flows(path, bootstrap_servers),
        Publisher(bootstrap_servers, CATALOG, source="/test") as publisher,
    ):
        for customer_id in ("c-flaky", "c-known"):  # always down, then a good one behind it
            await publisher.publish(
                source, "com.acme.crm.CustomerChanged", customer(customer_id), key="same-key"
            )
        (known,) = await decode(await read_records(bootstrap_servers, target, 1))
        assert known.data["customerId"] == "c-known"
    (letter,) = [
        DeadLetter.from_headers(record.headers)
        for record in await read_all(bootstrap_servers, f"{flow}.dlq")
    ]
    assert letter is not None
    assert "gave up after 2 attempt(s)" in letter.error
    assert "customer archive offline" in letter.error
