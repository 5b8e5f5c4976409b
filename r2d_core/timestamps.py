"""RFC 3339 times as Docker, registries and Go programs write them, parsed the same on every Python.

Go's ``time.RFC3339Nano`` drops trailing zeros of the fraction (``.1234Z``, ``.5Z``: 1 to 9
digits) and writes ``Z`` for UTC. ``datetime.fromisoformat`` takes those since Python 3.11 only;
3.10 (the Hub's own Python on Ubuntu 22.04, where the TLJH plugin runs) takes exactly 3 or 6
digits and no ``Z``, so one image in every few thousand lost its time there.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

__all__ = ["parse_rfc3339"]

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d{1,32}))?"
    r"(?:([Zz])|([+-])(\d{2}):?(\d{2}))?",
    re.ASCII,
)


def parse_rfc3339(text: str) -> datetime:
    """``text`` as a datetime: aware when it names an offset (``Z`` is UTC), else naive.

    The fraction is cut to microseconds, as Python 3.11 does. Nothing is left to
    ``datetime.fromisoformat``, whose other forms differ between versions (3.11 takes
    ``07:00:00.Z``, 3.10 does not). Raises ValueError for anything else.
    """
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise ValueError(f"not an RFC 3339 time: {text[:64]!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    fraction, zulu, sign, off_h, off_m = m.groups()[6:]
    tz: timezone | None = None
    if zulu:
        tz = timezone.utc
    elif sign:
        if int(off_m) >= 60:
            raise ValueError(f"offset out of range in {text!r}")
        # timezone() itself refuses 24 hours or more
        offset = timedelta(hours=int(off_h), minutes=int(off_m))
        tz = timezone(-offset if sign == "-" else offset)
    micro = int((fraction or "").ljust(6, "0")[:6])
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=tz)
