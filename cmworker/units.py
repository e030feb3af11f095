"""Durations and sizes as people write them in ``cmworker.toml`` and on the command line.

Durations: ``"90s"``, ``"5m"``, ``"1h30m"``, ``"1h 30m"``, ``"250ms"``, ``"1.5s"``, or plain seconds (an int,
a float, or a numeric string). Sizes: ``"512MiB"``, ``"2GB"``, ``"1.5GiB"``, ``"64k"``, or plain bytes (an
int, an integral float, or a numeric string). Binary suffixes (KiB, MiB, GiB, TiB) are powers of 1024;
decimal ones (kB/k, MB/M, GB/G, TB/T) powers of 1000; suffixes are case-insensitive.

Both parsers reject booleans (``True`` is an ``int`` to Python, never a duration to a person), negatives,
NaN and infinity with a ``ValueError`` that quotes the input; any other input type is a ``ValueError``
too, so callers catch exactly one exception. Sizes are computed with exact fractions, so ``"1.1kB"`` is
1100 bytes, not 1100.0000000000002 truncated; a fraction of a byte is dropped.

The two formatters are the parsers' inverses: ``parse_duration(format_duration(x)) == x`` for every finite
``x >= 0`` and ``parse_size(format_size(n)) == n`` for every ``n >= 0``; they pick the most readable
spelling that reads back exactly.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from decimal import Decimal
from fractions import Fraction

__all__ = ["DURATION_UNITS", "SIZE_UNITS", "format_duration", "format_size", "parse_duration",
           "parse_size"]

# Seconds per duration unit, as written after a number.
DURATION_UNITS: dict[str, float] = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# Bytes per size unit (lower case; the parser lowers its input). "" and "b" are plain bytes.
SIZE_UNITS: dict[str, int] = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
# "ms" comes before "m" and "s" so that "5ms" is five milliseconds, not five minutes and a stray "s".
_DURATION_PART = re.compile(rf"\s*({_NUMBER})\s*(ms|s|m|h|d)")
_DURATION = re.compile(rf"(?:{_DURATION_PART.pattern})+\s*")
_SIZE = re.compile(rf"({_NUMBER})\s*([a-z]*)")

# format_size's candidates, most preferred first when two spell the count with as many digits.
_SIZE_SPELLINGS = (("TiB", 2**40), ("TB", 10**12), ("GiB", 2**30), ("GB", 10**9),
                   ("MiB", 2**20), ("MB", 10**6), ("KiB", 2**10), ("kB", 10**3))

# Spellings longer than this lose to the plain repr() of the seconds.
_READABLE = 24

_DURATION_HELP = "use seconds or a number with ms, s, m, h or d (for example '90s', '5m', '1h30m')"
_DURATION_RANGE = "it must be a finite number of seconds, 0 or more"
_SIZE_HELP = "use bytes or a number with KiB, MiB, GiB, TiB, kB, MB, GB or TB (for example '512MiB', '2GB')"


def parse_duration(value: object) -> float:
    """Seconds from a duration; ``ValueError`` names what was wrong with ``value``."""
    if isinstance(value, bool):
        raise ValueError(f"{_shown(value)} is not a duration: {_DURATION_HELP}")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an int too large for a float
            raise ValueError(f"{_shown(value)} is not a duration: it is far too large") from None
    elif isinstance(value, str):
        seconds = _duration_from_text(value)
    else:
        raise ValueError(f"{_shown(value)} is not a duration: {_DURATION_HELP}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{_shown(value)} is not a duration: {_DURATION_RANGE}")
    return seconds + 0.0  # turns -0.0 ("-0") into 0.0


def _duration_from_text(value: str) -> float:
    text = value.strip().lower()
    try:
        return float(text)  # plain seconds, as a string (a flag or an environment variable)
    except ValueError:
        pass
    if not _DURATION.fullmatch(text):
        raise ValueError(f"{_shown(value)} is not a duration: {_DURATION_HELP}")
    return sum(float(number) * DURATION_UNITS[unit] for number, unit in _DURATION_PART.findall(text))


def parse_size(value: object) -> int:
    """Bytes from a size; ``ValueError`` names what was wrong with ``value``."""
    if isinstance(value, bool):
        raise ValueError(f"{_shown(value)} is not a size: {_SIZE_HELP}")
    if isinstance(value, int):
        size = value
    elif isinstance(value, float):
        if not value.is_integer():  # also rejects NaN and infinity
            raise ValueError(f"{_shown(value)} is not a size: it must be a whole number of bytes")
        size = int(value)
    elif isinstance(value, str):
        size = _size_from_text(value)
    else:
        raise ValueError(f"{_shown(value)} is not a size: {_SIZE_HELP}")
    if size < 0:
        raise ValueError(f"{_shown(value)} is not a size: it must be 0 or more bytes")
    return size


def _size_from_text(value: str) -> int:
    match = _SIZE.fullmatch(value.strip().lower())
    if match is None or match.group(2) not in SIZE_UNITS:
        raise ValueError(f"{_shown(value)} is not a size: {_SIZE_HELP}")
    # Fraction, not float: "1.1kB" must be 1100 bytes exactly, and huge inputs must not overflow.
    size = Fraction(match.group(1)) * SIZE_UNITS[match.group(2)]
    if SIZE_UNITS[match.group(2)] == 1 and size.denominator != 1:
        raise ValueError(f"{_shown(value)} is not a size: it must be a whole number of bytes")
    return int(size)  # "1.3MiB" is 1363148.8 bytes: the fraction of a byte is dropped


def _shown(value: object) -> str:
    """``repr(value)`` cut short, so a 400-digit number does not swamp the message about it."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def format_duration(seconds: float) -> str:
    """The most readable spelling that parses back exactly: ``90 -> '1m30s'``, ``0.25 -> '250ms'``."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise ValueError(f"{_shown(seconds)} is not a number of seconds")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{_shown(seconds)} is not a duration: {_DURATION_RANGE}")
    for text in _duration_spellings(float(seconds)):
        if len(text) > _READABLE:  # 1e300 reads better as "1e+300" than as a 300-digit hour count
            continue
        try:
            if parse_duration(text) == seconds:
                return text
        except ValueError:
            continue
    # float() reads back its own repr exactly, and parse_duration accepts plain seconds as a string.
    return repr(float(seconds))


def _duration_spellings(seconds: float) -> Iterator[str]:
    """Candidate spellings, most readable first; format_duration keeps the first that reads back exactly."""
    if seconds == 0:
        yield "0s"
    if seconds < 1:
        yield f"{_plain(round(seconds * 1000, 9))}ms"
        yield f"{_plain(seconds * 1000)}ms"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    # seconds - whole is exact for floats >= 1, and secs + that fraction is below 60, so it stays exact.
    tail = secs + (seconds - whole)
    parts = [(hours, "h"), (minutes, "m"), (tail, "s")]
    yield "".join(f"{_plain(count)}{unit}" for count, unit in parts if count) or "0s"


def _plain(number: float) -> str:
    """``number`` in positional notation without a trailing ``.0``: 250.0 -> '250', 1e-05 -> '0.00001'."""
    text = format(Decimal(repr(float(number))), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def format_size(size: int) -> str:
    """The shortest exact spelling, binary units winning ties: ``536870912 -> '512MiB'``, ``2e9 -> '2GB'``."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"{_shown(size)} is not a size: it must be a whole number of bytes, 0 or more")
    if size == 0:
        return "0"
    exact = [(len(str(size // factor)), order, f"{size // factor}{unit}")
             for order, (unit, factor) in enumerate(_SIZE_SPELLINGS) if size % factor == 0]
    return min(exact)[2] if exact else f"{size}B"


def describe_size(size: int) -> str:
    """A measured size for people: ``268959744 -> '256.5 MiB'`` (not exact; for messages only)."""
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{size} bytes"


def human_duration(seconds: float) -> str:
    """Rounded for a person reading a console, not to be parsed back: ``8 µs``, ``12 ms``, ``1.2 s``, ``3m05s``."""
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1000:.3g} ms"
    if seconds < 60:
        return f"{seconds:.3g} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def human_size(size: int) -> str:
    """Rounded for a person: ``512 B``, ``1.2 KiB``, ``340 MiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.3g} {unit}"
        value /= 1024
    return f"{size} B"
