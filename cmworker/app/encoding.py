"""Encoding results as the official SDK does, so callers see the same JSON after a migration.

Dataclasses become objects without their ``None`` fields, datetimes UTC strings with a ``Z`` suffix
(microseconds only when present), dates ISO strings. Decimals, which the SDK cannot encode at all,
become strings so that no precision is lost; sets and tuples become arrays.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any


def datetime_to_string(value: datetime) -> str:
    utc = value.astimezone(timezone.utc)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if utc.microsecond else "%Y-%m-%dT%H:%M:%SZ")


def _default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if getattr(obj, f.name) is not None}
    if isinstance(obj, datetime):
        return datetime_to_string(obj)
    if isinstance(obj, date):
        return obj.isoformat()
    if isinstance(obj, Decimal):
        return str(obj)
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


_encoder = json.JSONEncoder(default=_default, allow_nan=True)


def encode_result(value: Any) -> bytes:
    """UTF-8 JSON bytes of ``value``; ``TypeError``/``ValueError`` when it cannot be encoded."""
    return _encoder.encode(value).encode()
