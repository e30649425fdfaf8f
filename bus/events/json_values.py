"""Event data as JSON, the way the inbound side reads it back.

Avro-ready Python values (Decimal, datetime, UUID, bytes) have no JSON type of their own. They
are written as the text the inbound validation accepts for the same field: a decimal as its
exact digits (a JSON number would go through a binary float on many readers), a timestamp or
date as ISO 8601, a UUID as its canonical text, and bytes as standard base64.
"""

import base64
import json
from collections.abc import Mapping
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any
from uuid import UUID


def json_ready(value: Any) -> Any:
    """A copy of `value` made of JSON types only."""
    if isinstance(value, Mapping):
        return {str(key): json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(item) for item in value]
    if isinstance(value, Decimal | UUID):
        return str(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON of `value` (any Avro-ready data)."""
    return json.dumps(json_ready(value), separators=(",", ":"), ensure_ascii=False).encode()
