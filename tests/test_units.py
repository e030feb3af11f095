"""Durations and sizes: examples people write, what must be rejected, and round-trip properties."""

from __future__ import annotations

import math
import string
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cmworker.units import (
    DURATION_UNITS,
    SIZE_UNITS,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
)

MiB = 2**20


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90.0), ("5m", 300.0), ("1h30m", 5400.0), ("1h 30m", 5400.0), ("250ms", 0.25), ("1.5s", 1.5),
    ("1d", 86400.0), (" 2H ", 7200.0), ("90", 90.0), ("0.5", 0.5), (".5s", 0.5), ("0", 0.0), ("-0", 0.0),
    (90, 90.0), (1.5, 1.5), (0, 0.0),
])
def test_parse_duration_examples(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("value", [
    True, False, None, [], {}, "", "   ", "5x", "s", "1m5", "5 minutes", "-5s", "-1", -1, -0.5, "1h-30m",
    "nan", "inf", "-inf", "infinity", math.nan, math.inf, -math.inf, 10**400, "1e400",
])
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(value)


@pytest.mark.parametrize(("text", "size"), [
    ("512MiB", 512 * MiB), ("2GB", 2 * 10**9), ("1.5GiB", 3 * 2**29), ("64k", 64_000), ("64KiB", 65_536),
    ("1.1kB", 1100), ("1.3MiB", 1_363_148), ("100b", 100), ("2 gib", 2 * 2**30), ("1024", 1024),
    (1024, 1024), (4.0, 4), (0, 0),
])
def test_parse_size_examples(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("value", [
    True, False, None, [], "", "MiB", "5 parsecs", "-1", "-1KiB", -1, 1.5, "0.5", "1e3", math.nan, math.inf,
    "nan", "inf",
])
def test_parse_size_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="is not a size"):
        parse_size(value)


def test_error_messages_quote_the_input_but_cut_huge_ones_short() -> None:
    with pytest.raises(ValueError, match="'5x'"):
        parse_duration("5x")
    with pytest.raises(ValueError) as caught:
        parse_duration(10**400)
    assert len(str(caught.value)) < 120


@pytest.mark.parametrize(("seconds", "text"), [
    (90, "1m30s"), (0.25, "250ms"), (0.1, "100ms"), (0, "0s"), (3600, "1h"), (5400, "1h30m"), (290, "4m50s"),
    (1.5, "1.5s"), (90.25, "1m30.25s"), (86400 * 3, "72h"), (1e300, "1e+300"),
])
def test_format_duration_examples(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(("size", "text"), [
    (512 * MiB, "512MiB"), (2 * 10**9, "2GB"), (2 * 2**30, "2GiB"), (0, "0"), (123, "123B"), (1000, "1kB"),
    (1024, "1KiB"), (2_048_000, "2000KiB"),
])
def test_format_size_examples(size: int, text: str) -> None:
    assert format_size(size) == text


@pytest.mark.parametrize("value", [-1, math.nan, math.inf, True])
def test_format_duration_rejects(value: float) -> None:
    with pytest.raises(ValueError):
        format_duration(value)


@pytest.mark.parametrize("value", [-1, True, 1.5])
def test_format_size_rejects(value: int) -> None:
    with pytest.raises(ValueError):
        format_size(value)


# --- properties -----------------------------------------------------------------------------------

@given(st.floats(min_value=0, allow_nan=False, allow_infinity=False))
def test_duration_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.integers(min_value=0))
def test_size_round_trips(size: int) -> None:
    assert parse_size(format_size(size)) == size


@given(st.integers(min_value=0, max_value=10**12), st.sampled_from(sorted(DURATION_UNITS)), st.booleans())
def test_duration_with_unit_is_count_times_factor(count: int, unit: str, upper: bool) -> None:
    assert parse_duration(f"{count}{unit.upper() if upper else unit}") == count * DURATION_UNITS[unit]


@given(st.integers(0, 10**6), st.integers(0, 59), st.integers(0, 59))
def test_compound_duration_adds_its_parts(hours: int, minutes: int, seconds: int) -> None:
    assert parse_duration(f"{hours}h{minutes}m{seconds}s") == hours * 3600 + minutes * 60 + seconds


@given(st.integers(min_value=0, max_value=10**30), st.sampled_from(sorted(SIZE_UNITS)), st.booleans())
def test_size_with_unit_is_count_times_factor(count: int, unit: str, upper: bool) -> None:
    assert parse_size(f"{count}{unit.upper() if upper else unit}") == count * SIZE_UNITS[unit]


@given(st.decimals(min_value=0, max_value=10**9, places=3, allow_nan=False, allow_infinity=False),
       st.sampled_from(sorted(unit for unit, factor in SIZE_UNITS.items() if factor > 1)))
def test_fractional_size_is_exact_then_rounded_down(count: Decimal, unit: str) -> None:
    assert parse_size(f"{count}{unit}") == int(Fraction(count) * SIZE_UNITS[unit])


@given(st.integers(min_value=1), st.sampled_from(["", *sorted(DURATION_UNITS)]))
def test_negative_durations_are_rejected(count: int, unit: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(f"-{count}{unit}")
    with pytest.raises(ValueError):
        parse_duration(-count)


@given(st.integers(min_value=1), st.sampled_from(sorted(SIZE_UNITS)))
def test_negative_sizes_are_rejected(count: int, unit: str) -> None:
    with pytest.raises(ValueError):
        parse_size(f"-{count}{unit}")
    with pytest.raises(ValueError):
        parse_size(-count)


@given(st.text())
def test_any_text_is_a_valid_duration_or_a_value_error(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except ValueError:
        return
    assert isinstance(seconds, float)
    assert math.isfinite(seconds)
    assert seconds >= 0


@given(st.text())
def test_any_text_is_a_valid_size_or_a_value_error(text: str) -> None:
    try:
        size = parse_size(text)
    except ValueError:
        return
    assert type(size) is int
    assert size >= 0


@given(st.text(alphabet="abcefgijklnopqrtuvwxyzABCEFGIJKLNOPQRTUVWXYZ", min_size=1), st.integers(min_value=0))
def test_unknown_duration_units_are_rejected(unit: str, count: int) -> None:
    # Without d, h, m or s no duration unit can be spelled.
    with pytest.raises(ValueError):
        parse_duration(f"{count}{unit}")


@given(st.text(alphabet=string.ascii_letters, min_size=1).filter(lambda u: u.lower() not in SIZE_UNITS),
       st.integers(min_value=0))
def test_unknown_size_units_are_rejected(unit: str, count: int) -> None:
    with pytest.raises(ValueError):
        parse_size(f"{count}{unit}")
