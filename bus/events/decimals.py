"""Avro decimals read in linear time, with their size bounded by the declared precision.

fastavro converts decimal bytes in time quadratic in their length, so one forged record of a
megabyte holds a reader for minutes. A decimal of precision p never needs more bytes than
10**p - 1 does in two's complement; anything longer is refused before any arithmetic.
"""

from decimal import Decimal
from functools import cache
from typing import Any

from fastavro.read import LOGICAL_READERS
from fastavro.write import LOGICAL_WRITERS

_WRITE_BYTES_DECIMAL = LOGICAL_WRITERS["bytes-decimal"]
_WRITE_FIXED_DECIMAL = LOGICAL_WRITERS["fixed-decimal"]


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


def _check_precision(datum: Any, schema: Any) -> None:
    """fastavro writes a decimal with more digits than the schema's precision, which readers
    (ours included) then refuse: refuse it when writing instead."""
    if isinstance(datum, Decimal) and datum.is_finite():
        precision, scale = int(schema["precision"]), int(schema.get("scale", 0))
        unscaled = abs(int(datum.scaleb(scale)))
        if unscaled >= 10**precision:
            raise ValueError(f"{datum} has more digits than decimal({precision},{scale}) holds")


def _write_bytes_decimal(datum: Any, schema: Any) -> Any:
    _check_precision(datum, schema)
    return _WRITE_BYTES_DECIMAL(datum, schema)


def _write_fixed_decimal(datum: Any, schema: Any) -> Any:
    _check_precision(datum, schema)
    return _WRITE_FIXED_DECIMAL(datum, schema)


def install() -> None:
    """Make fastavro read and write decimals this way (its C and Python codecs share these)."""
    LOGICAL_READERS["bytes-decimal"] = read_decimal
    LOGICAL_READERS["fixed-decimal"] = read_decimal
    LOGICAL_WRITERS["bytes-decimal"] = _write_bytes_decimal
    LOGICAL_WRITERS["fixed-decimal"] = _write_fixed_decimal
