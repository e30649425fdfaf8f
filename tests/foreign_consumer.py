"""A consumer written with only aiokafka and fastavro, as a team without bus would write one.

Run as a script so that nothing of bus is even importable by accident:
    python tests/foreign_consumer.py BOOTSTRAP TOPIC SCHEMA_HISTORY_DIR
It prints one JSON line per record: the headers, the key and the decoded data.
"""

import asyncio
import io
import json
import sys
from pathlib import Path

from aiokafka import AIOKafkaConsumer
from fastavro import parse_schema, schemaless_reader
from fastavro.schema import fingerprint, to_parsing_canonical_form


def writer_schemas(history: Path) -> dict[bytes, dict]:
    """Every released schema by its CRC-64-AVRO fingerprint (8 bytes, little-endian)."""
    schemas = {}
    for path in history.glob("*/v*.avsc"):
        schema = parse_schema(json.loads(path.read_text()))
        key = bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))
        schemas[key] = schema
    return schemas


async def main(bootstrap: str, topic: str, history: Path, count: int) -> None:
    schemas = writer_schemas(history)
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        for _ in range(count):
            record = await asyncio.wait_for(consumer.getone(), 30)
            value = record.value
            assert value[:2] == b"\xc3\x01", "not Avro single-object encoding"
            schema = schemas[value[2:10]]
            data = schemaless_reader(io.BytesIO(value[10:]), schema, None)
            print(
                json.dumps(
                    {
                        "headers": {name: raw.decode() for name, raw in record.headers},
                        "key": record.key.decode(),
                        "data": data,
                    },
                    default=str,
                ),
                flush=True,
            )
    finally:
        await consumer.stop()
    imported = sorted(name for name in sys.modules if name.split(".")[0] in ("bus", "adapters"))
    assert not imported, f"the foreign consumer must not use bus, yet imported {imported}"


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])))
