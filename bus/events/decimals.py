"""Avro decimals read in linear time, with their size bounded by the declared precision.

fastavro converts decimal bytes in time quadratic in their length, so one forged record of a
megabyte holds a reader for minutes. A decimal of precision p never needs more bytes than
10**p - 1 does in two's complement; anything longer is refused before any arithmetic.
"""

from decimal import Decimal
from functools import cache
from typing import Any

from fastavro.read import LOGICAL_READERS


@cache
def _max_bytes(precision: int) -> int:
    # +1: a writer may keep one sign-extension byte more than the minimum
    largest: int = 10**precision - 1
    return (largest.bit_length() + 8) // 8 + 1


def read_decimal(data: bytes, writer_schema: Any = None, reader_schema: Any = None) -> Decimal:
    precision = int(writer_schema["precision"])
    scale = int(writer_schema.get("scale", 0))
    if len(data) > _max_bytes(precision):
        raise ValueError(
            f"a decimal of precision {precision} takes at most {_max_bytes(precision)} bytes, "
            f"found {len(data)}"
        )
    unscaled = int.from_bytes(data, "big", signed=True)
    digits = tuple(int(digit) for digit in str(abs(unscaled)))
    return Decimal((1 if unscaled < 0 else 0, digits, -scale))


def install() -> None:
    """Make fastavro read decimals this way (both its C and Python readers use this table)."""
    LOGICAL_READERS["bytes-decimal"] = read_decimal
    LOGICAL_READERS["fixed-decimal"] = read_decimal
