"""Durations and sizes as people write them in ``cmworker.toml`` and on the command line.

Durations: ``"90s"``, ``"5m"``, ``"1h30m"``, ``"250ms"``, ``"1.5s"``, or plain seconds (int or float).
Sizes: ``"512MiB"``, ``"2GB"``, ``"1.5GiB"``, ``"64k"``, or plain bytes (int). Binary suffixes (KiB, MiB,
GiB, TiB) are powers of 1024; decimal ones (kB/k, MB/M, GB/G, TB/T) powers of 1000.
Both reject booleans, negatives, NaN and infinity with a ``ValueError`` that quotes the input.
"""

from __future__ import annotations

import math
import re

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h|d)")
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_SIZE = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*([a-z]*)")


def parse_duration(value: object) -> float:
    """Seconds from a duration; ``ValueError`` names what was wrong with ``value``."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration (write seconds or a string like '90s')")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        try:
            seconds = float(text)
        except ValueError:
            pos, seconds = 0, 0.0
            for match in _DURATION_PART.finditer(text):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
                pos = match.end()
            if pos != len(text) or not text:
                raise ValueError(
                    f"{value!r} is not a duration: use a number of seconds or units ms, s, m, h, d "
                    "(for example '90s', '5m', '1h30m')"
                ) from None
    else:
        raise ValueError(f"{value!r} is not a duration (write seconds or a string like '90s')")
    if math.isnan(seconds) or math.isinf(seconds) or seconds < 0:
        raise ValueError(f"{value!r} is not a duration: it must be a finite number of seconds, 0 or more")
    return seconds


def parse_size(value: object) -> int:
    """Bytes from a size; ``ValueError`` names what was wrong with ``value``."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size (write bytes or a string like '512MiB')")
    if isinstance(value, int):
        size = value
    elif isinstance(value, float) and value.is_integer():
        size = int(value)
    elif isinstance(value, str):
        match = _SIZE.fullmatch(value.strip().lower())
        if match is None or match.group(2) not in _SIZE_UNITS:
            raise ValueError(
                f"{value!r} is not a size: use bytes or a number with KiB, MiB, GiB, TiB, kB, MB, GB or TB "
                "(for example '512MiB', '2GB')"
            )
        size = int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])
    else:
        raise ValueError(f"{value!r} is not a size (write bytes or a string like '512MiB')")
    if size < 0:
        raise ValueError(f"{value!r} is not a size: it must be 0 or more bytes")
    return size


def format_duration(seconds: float) -> str:
    """The shortest exact spelling: ``90 -> '1m30s'``, ``0.25 -> '250ms'``."""
    if seconds < 1 and seconds != 0:
        return f"{seconds * 1000:g}ms"
    whole, frac = divmod(seconds, 1)
    parts = []
    for unit, size in (("h", 3600), ("m", 60)):
        count, whole = divmod(whole, size)
        if count:
            parts.append(f"{int(count)}{unit}")
    if whole or frac or not parts:
        parts.append(f"{whole + frac:g}s")
    return "".join(parts)


def format_size(size: int) -> str:
    """Bytes in the largest binary unit that divides them exactly: ``536870912 -> '512MiB'``."""
    for unit, factor in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B" if size else "0"
