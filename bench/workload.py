"""The benchmark's events and the mediation every pipe scenario performs.

Every scenario reads the same records: canonical `com.acme.crm.CustomerChanged` events of about
1 KB (10 fields, a nested address, tags and a map of CRM custom fields), written by bus's own
codec (single-object Avro framing, CloudEvents headers), keyed by customer. One in ten is a
DELETED change and one in twenty has no address: the mediation's filters drop those.

The mediation (bus's flow in `mediation_flow`, hand-written in `mediate` for the raw and
FastStream subjects) is: drop deleted and address-less customers, map to
`com.acme.erp.CustomerUpsertRequest`, and route EU and US customers to two topics.
"""

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bus.events.catalog import SchemaCatalog
from bus.events.codec import EventCodec, KafkaRecord
from bus.events.event import Event
from bus.events.framing import SINGLE_OBJECT_HEADER, single_object
from bus.events.validation import validated

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = ROOT / "schemas"
CATALOG = SchemaCatalog.load(SCHEMAS)
INPUT_TYPE = "com.acme.crm.CustomerChanged"
OUTPUT_TYPE = "com.acme.erp.CustomerUpsertRequest"
PARTITIONS = 6
US_COUNTRIES = frozenset({"US", "CA"})
_IDS = uuid.UUID("0b7e3f7a-54a4-4d0c-9d57-b1d43b0f6a12")


def customer_data(number: int) -> dict[str, Any]:
    """The data of customer `number`'s change (Avro-ready Python values)."""
    deleted = number % 10 == 3
    return {
        "customerId": f"c-{number}",
        "change": "DELETED" if deleted else "UPDATED",
        "email": f"customer{number}@example.com",
        "name": f"Customer {number} Holdings Limited",
        "phone": "+44 20 7946 0000",
        "status": "ACTIVE",
        "address": None
        if number % 20 == 7
        else {
            "line1": f"{number} St James's Square",
            "line2": None,
            "city": "London" if number % 2 else "New York",
            "postalCode": "SW1Y 4JH",
            "region": None,
            "country": "GB" if number % 2 else "US",
        },
        "tags": ["vip", "newsletter", "enterprise", "renewal-2027"],
        "attributes": {
            f"custom_field_{field:02d}": f"value {field} of customer {number} ........"
            for field in range(16)
        },
        "changedAt": datetime.now(UTC),
    }


def passes(number: int) -> bool:
    """Whether customer `number`'s change survives the mediation's filters."""
    return number % 10 != 3 and number % 20 != 7


async def encoded_records(count: int) -> list[KafkaRecord]:
    """`count` records as bus's codec writes them (what an inbound adapter would produce)."""
    codec = EventCodec(CATALOG)
    schema = CATALOG.current(INPUT_TYPE)
    records = []
    for number in range(count):
        event = Event(
            type=INPUT_TYPE,
            data=validated(schema, customer_data(number)),
            source="/crm",
            key=f"c-{number}",
        )
        records.append(await codec.encode(event))
    return records


# The hand-written mediation, for the subjects that do not use bus: bare fastavro with parsed
# schemas, the same filters, mapping and route as `mediation_flow`.
INPUT_SCHEMA = CATALOG.current(INPUT_TYPE).parsed
OUTPUT_SCHEMA = CATALOG.current(OUTPUT_TYPE).parsed
INPUT_PREFIX_LENGTH = SINGLE_OBJECT_HEADER
OUTPUT_PREFIX = single_object(CATALOG.current(OUTPUT_TYPE).fingerprint)


def mediate(data: Mapping[str, Any], time: datetime) -> tuple[str, dict[str, Any]] | None:
    """The route ("EU" or "US") and the CustomerUpsertRequest for one decoded CustomerChanged,
    or None when the filters drop it."""
    if data["change"] == "DELETED" or data["email"] == "":
        return None
    address = data["address"]
    if address is None:
        return None
    region = "US" if address["country"] in US_COUNTRIES else "EU"
    return region, {
        "customerId": data["customerId"],
        "erpAccountId": None,
        "legalName": data["name"],
        "email": data["email"],
        "billingAddress": address,
        "salesRegion": region,
        "creditLimit": None,
        "requestedAt": time,
    }


def output_headers(headers: list[tuple[str, bytes]], input_id: str) -> list[tuple[str, bytes]]:
    """The hand-written subjects' output headers: the input's CloudEvents headers with a new
    id (derived, as bus derives it) and the output type, so outputs are readable events."""
    new_id = str(uuid.uuid5(_IDS, input_id)).encode()
    changed = {"ce_id": new_id, "ce_type": OUTPUT_TYPE.encode(), "ce_source": b"/bench"}
    return [(name, changed.get(name, value)) for name, value in headers]


QUIET = """
observability:
  tracing: {exporter: none}
  journeys: {enabled: false}
  logs: {level: warning}
"""
"""The bench's flow files measure the flows, not tracing or journeys (`make bench-tracing` does)."""


def mediation_flow(
    *, name: str, source: str, eu_topic: str, us_topic: str, guarantee: str = "at-least-once"
) -> str:
    """bus's flow file for the mediation: decode, two filters, transform, route."""
    return QUIET + mediation_block(
        name=name, source=source, eu_topic=eu_topic, us_topic=us_topic, guarantee=guarantee
    )


def mediation_block(
    *, name: str, source: str, eu_topic: str, us_topic: str, guarantee: str = "at-least-once"
) -> str:
    """The `mediation:` section of `mediation_flow`, for a file with observability of its own
    (bench/tracing_overhead.py)."""
    return f"""
mediation:
  - name: {name}
    from: {source}
    guarantee: {guarantee}
    max_in_flight: 500
    steps:
      - filter: event.change != "DELETED" && event.email != ""
      - filter: event.address != null
      - transform:
          to: {OUTPUT_TYPE}
          map:
            customerId: event.customerId
            legalName: event.name
            email: event.email
            billingAddress: event.address
            salesRegion: 'event.address.country in ["US", "CA"] ? "US" : "EU"'
            requestedAt: attributes.time
      - route:
          routes:
            - when: event.salesRegion == "US"
              to: {us_topic}
            - otherwise: {eu_topic}
"""


def passthrough_flow(*, name: str, source: str, eu_topic: str, us_topic: str) -> str:
    """bus's flow file for the pass-through: route on a CloudEvents attribute (a header), the
    Avro value never decoded (`decode: false`)."""
    return (
        QUIET
        + f"""
mediation:
  - name: {name}
    from: {source}
    decode: false
    max_in_flight: 500
    steps:
      - route:
          routes:
            - when: attributes.key.endsWith("1") || attributes.key.endsWith("3")
              to: {us_topic}
            - otherwise: {eu_topic}
"""
    )
