# ruff: noqa: UP006, UP035, UP045 - the old typing spellings are among the hints under test
"""Typed functions covering every type the schema knows, for schema parity with the SDK and typed events.

No ``from __future__ import annotations`` here on purpose: the SDK resolves annotations in an empty
namespace, so only real (non-string) annotations let it infer these same functions for comparison.
"""

import dataclasses
import datetime
import sys
from collections.abc import Iterable
from decimal import Decimal
from enum import Enum
from typing import Any, Dict, List, Optional, Set

if sys.version_info >= (3, 11):
    from typing import NotRequired, TypedDict
else:
    from typing_extensions import NotRequired, TypedDict

import cmworker
from cmworker import Context


class Colour(str, Enum):
    RED = "red"
    GREEN = "green"


@dataclasses.dataclass
class LineItem:
    sku: str
    qty: int
    price: Decimal
    shipped: Optional[datetime.datetime] = None


@dataclasses.dataclass
class Order:
    order_id: str
    placed: datetime.datetime
    items: List[LineItem]
    due: datetime.date
    note: Optional[str]
    discount: Decimal = Decimal(0)
    tags: Set[str] = dataclasses.field(default_factory=set)

    def __post_init__(self) -> None:
        if any(item.qty < 0 for item in self.items):
            raise ValueError("quantities cannot be negative")


class Search(TypedDict):
    text: str
    limit: NotRequired[int]
    colour: Optional[Colour]


class Filters(TypedDict, total=False):
    since: datetime.date
    owners: list[str]


class Point:
    """An annotated class: a constructor that takes exactly its annotated fields."""

    x: float
    y: float

    def __init__(self, x: float, y: float = 0.0) -> None:
        self.x = x
        self.y = y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)


@dataclasses.dataclass
class Bag:
    """Kept to what the SDK can build too (an ``Any`` field or Enum map keys break its converter), so
    coercions can be compared; test_schema covers those hints one by one."""

    blob: bytes
    flag: bool
    ratios: Iterable[float]
    by_day: Dict[datetime.date, int]
    groups: dict[str, list[int]]
    maybe_days: dict[int, Optional[datetime.date]]
    where: Optional[Point]
    search: Optional[Search] = None


@dataclasses.dataclass
class Receipt:
    order_id: str
    total: Decimal
    lines: list[LineItem]
    issued: datetime.datetime
    points: Optional[dict[str, float]] = None


@dataclasses.dataclass
class Count:
    upto: int = 3


@dataclasses.dataclass
class Empty:
    pass


@cmworker.function
def untyped(context, event):
    return {"event": event, "context_keys": sorted(context)}


@cmworker.function
def returns_int(context, event) -> int:
    return 1


@cmworker.function
def returns_none(context, event) -> None:
    return None


@cmworker.function
def returns_any_map(context, event) -> dict[str, Any]:
    return {}


@cmworker.function
def order_total(context, event: Order) -> Decimal:
    return sum((item.price * item.qty for item in event.items), Decimal(0)) - event.discount


@cmworker.function
def receipt(context, event: Order) -> Receipt:
    return Receipt(event.order_id, order_total(context, event), event.items, event.placed)


@cmworker.function
def search(context, event: Search) -> list[str]:
    return [event["text"]] * event.get("limit", 1)


@cmworker.function
def filters(context, event: Filters) -> Optional[str]:
    return None


@cmworker.function
def distance(context, event: Point) -> float:
    return float((event.x**2 + event.y**2) ** 0.5)


@cmworker.function
def bag(context, event: Bag) -> Set[int]:
    return set()


@cmworker.function
def no_fields(context, event: Empty) -> List[Optional[int]]:
    return []


@cmworker.function(streaming=True)
def count(context, event: Count) -> Iterable[int]:
    return iter(range(event.upto))


@cmworker.function(name="whoami")
def with_context(context: Context, event: Count) -> Dict[str, Optional[str]]:
    return {"job": context.jobId, "user": context.userId, "type": type(event).__name__}


@cmworker.function
def echo_typed(context, event: Order) -> str:
    return repr(event)
