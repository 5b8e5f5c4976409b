"""Sizes in bytes for settings: ``"10G"``-style parsing and formatting, a traitlet that takes both,
and environment fallbacks that fail loudly on nonsense instead of silently using a default."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

from traitlets import Integer, TraitError

__all__ = [
    "ByteSize",
    "check_settings",
    "env_bool",
    "env_choice",
    "env_value",
    "format_bytes",
    "parse_bytes",
]

_BYTES_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


def parse_bytes(value: str | int | float) -> int:
    """``"10G"`` → 10 GiB. Units K, M, G, T, P are powers of 1024 (as JupyterHub's ``mem_limit``);
    ``Gi``, ``GB`` and ``GiB`` mean the same. A plain number is bytes."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"a size cannot be negative: {value!r}")
        return int(value)
    match = _BYTES_RE.match(value)
    if not match:
        raise ValueError(f"not a size: {value!r} (use e.g. 500M, 10G, 1.5T or a number of bytes)")
    number, unit, _ = match.groups()
    return int(float(number) * 1024 ** _UNITS[unit.lower()])


def format_bytes(value: int | float) -> str:
    """``1536`` → ``"1.5 KiB"``: sizes in messages, as ``du -h`` would say them."""
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


class ByteSize(Integer):  # type: ignore[type-arg]
    """An integer number of bytes that also accepts ``"10G"``-style strings (config and CLI)."""

    info_text = "a size in bytes, or a string such as 500M, 10G, 1.5T"

    def validate(self, obj: Any, value: Any) -> int:
        if isinstance(value, str):
            try:
                value = parse_bytes(value)
            except ValueError as e:
                raise TraitError(f"{self.name}: {e}") from None
        return super().validate(obj, value)

    def from_string(self, s: str) -> int:
        return parse_bytes(s)


def env_value(name: str, parse: Any, fallback: Any, *, expected: str | None = None) -> Any:
    """The value of environment variable ``name`` read by ``parse`` (``int``, ``float``,
    :func:`parse_bytes`, :func:`env_bool` or any function raising ValueError), ``fallback``
    when it is unset or empty. A value ``parse`` refuses is an error naming the variable and
    what it takes, not a silent fallback: an admin's typo must not quietly mean the default."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return fallback
    try:
        return parse(raw.strip())
    except ValueError:
        what = expected or _EXPECTED.get(parse, "another value")
        raise TraitError(
            f"environment variable {name}={raw[:100]!r} is not valid: expected {what} "
            "(or unset it for the default)"
        ) from None


def env_choice(name: str, choices: Sequence[str], fallback: str) -> str:
    """One of ``choices`` (lower case; the variable's value in any case) from environment
    variable ``name``, ``fallback`` when it is unset or empty; an error naming them otherwise."""

    def parse(raw: str) -> str:
        value = raw.lower()
        if value not in choices:
            raise ValueError(raw)
        return value

    expected = ", ".join(choices[:-1]) + f" or {choices[-1]}" if len(choices) > 1 else choices[0]
    return str(env_value(name, parse, fallback, expected=expected))


def check_settings(*configurables: Any) -> None:
    """Read every ``config=True`` trait of each object now. traitlets computes a default (and
    its environment fallback) at first use, which for most settings is the first build
    request: a bad environment value must stop the service at start, not answer that
    request with an error."""
    for obj in configurables:
        for name in obj.trait_names(config=True):
            getattr(obj, name)


def env_bool(raw: str) -> bool:
    """``1/true/yes/on`` or ``0/false/no/off``, any case; ValueError otherwise."""
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


_EXPECTED: dict[Any, str] = {
    int: "a whole number, e.g. 2",
    float: "a number, e.g. 3600 or 0.5",
    parse_bytes: "a size in bytes, e.g. 5G, 500M or 1048576",
    env_bool: "1/0, true/false, yes/no or on/off",
}
