"""How an Avro body is framed in a Kafka record value, so a reader can find its writer schema.

- Single-object encoding (the Avro specification): `C3 01`, the writer schema's 8-byte
  little-endian CRC-64-AVRO fingerprint, then the body.
- Confluent framing (for a Confluent-compatible schema registry): `00`, the registry's 4-byte
  big-endian schema id, then the body.
"""

import struct
from dataclasses import dataclass
from typing import Literal

from bus.errors import WrongMagicError

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"
SINGLE_OBJECT_HEADER = len(SINGLE_OBJECT_MAGIC) + 8
CONFLUENT_HEADER = len(CONFLUENT_MAGIC) + 4
_SCHEMA_ID = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class Frame:
    """Where a value says its writer schema is, and where its body starts."""

    kind: Literal["single-object", "confluent"]
    fingerprint: bytes | None  # single-object
    schema_id: int | None  # confluent
    body_offset: int


def single_object(fingerprint: bytes) -> bytes:
    return SINGLE_OBJECT_MAGIC + fingerprint


def confluent(schema_id: int) -> bytes:
    return CONFLUENT_MAGIC + _SCHEMA_ID.pack(schema_id)


def read_frame(value: bytes) -> Frame:
    if value[:2] == SINGLE_OBJECT_MAGIC:
        if len(value) < SINGLE_OBJECT_HEADER:
            raise WrongMagicError(
                f"single-object encoded value is {len(value)} bytes long; expected at least "
                f"{SINGLE_OBJECT_HEADER} (C3 01 and an 8-byte fingerprint)"
            )
        return Frame("single-object", value[2:SINGLE_OBJECT_HEADER], None, SINGLE_OBJECT_HEADER)
    if value[:1] == CONFLUENT_MAGIC:
        if len(value) < CONFLUENT_HEADER:
            raise WrongMagicError(
                f"Confluent-framed value is {len(value)} bytes long; expected at least "
                f"{CONFLUENT_HEADER} (00 and a 4-byte schema id)"
            )
        (schema_id,) = _SCHEMA_ID.unpack_from(value, 1)
        return Frame("confluent", None, schema_id, CONFLUENT_HEADER)
    raise WrongMagicError(
        f"record value starts with {value[:4].hex(' ') or 'nothing (empty value)'}; expected "
        "C3 01 (Avro single-object encoding) or 00 (Confluent schema registry framing)"
    )
