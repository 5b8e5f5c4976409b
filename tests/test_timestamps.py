"""RFC 3339 times from Docker, registries and our records parse the same on Python 3.10 and 3.11+.

Python 3.10's ``datetime.fromisoformat`` refuses Go's trailing-zero-trimmed fractions
(``.12345Z``): such an image had no time there. ``nox -s tests-3.10`` runs these on 3.10.
"""

from __future__ import annotations

import sys
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from r2d_core.models import parse_time
from r2d_core.registry.models import ImageConfig, parse_created
from r2d_core.timestamps import parse_rfc3339

UTC = timezone.utc


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-26T07:00:00Z", datetime(2026, 11, 26, 7, tzinfo=UTC)),
        # Go's RFC3339Nano drops trailing zeros: every length from 1 to 9 digits occurs
        ("2026-11-26T07:00:00.5Z", datetime(2026, 11, 26, 7, 0, 0, 500000, tzinfo=UTC)),
        ("2026-11-26T07:00:00.12Z", datetime(2026, 11, 26, 7, 0, 0, 120000, tzinfo=UTC)),
        ("2026-11-26T07:00:00.1234Z", datetime(2026, 11, 26, 7, 0, 0, 123400, tzinfo=UTC)),
        ("2026-11-26T07:00:00.12345Z", datetime(2026, 11, 26, 7, 0, 0, 123450, tzinfo=UTC)),
        ("2026-11-26T07:00:00.123456789Z", datetime(2026, 11, 26, 7, 0, 0, 123456, tzinfo=UTC)),
        ("2026-11-26t07:00:00.1234567z", datetime(2026, 11, 26, 7, 0, 0, 123456, tzinfo=UTC)),
        (
            "2026-11-26T09:30:00.25+02:30",
            datetime(2026, 11, 26, 9, 30, 0, 250000, tzinfo=timezone(timedelta(hours=2.5))),
        ),
        (
            "2026-11-26T07:00:00.1-05:00",
            datetime(2026, 11, 26, 7, 0, 0, 100000, tzinfo=timezone(timedelta(hours=-5))),
        ),
        ("2026-11-26T07:00:00", datetime(2026, 11, 26, 7)),  # naive: the caller decides
        ("2026-11-26 07:00:00.1", datetime(2026, 11, 26, 7, 0, 0, 100000)),
        ("0001-01-01T00:00:00Z", datetime(1, 1, 1, tzinfo=UTC)),  # Docker's "never"
    ],
)
def test_rfc3339_as_go_and_docker_write_it(text, expected):
    parsed = parse_rfc3339(text)
    assert parsed == expected
    assert parsed.utcoffset() == expected.utcoffset()


@pytest.mark.parametrize(
    "text",
    ["", "yesterday", "2026-13-01T00:00:00Z", "2026-11-26T25:00:00Z", "2026-11-26T07:00:00+24:00",
     "2026-11-26T07:00:00+01:60", "2026-11-26T07:00:00.Z", "\uff12\uff10\uff12\uff16-11-26T07:00:00Z",
     # forms fromisoformat takes on one version and not the other: refused on both
     "2026-11-26", "20261126T070000Z", "2026-11-26T07:00Z", "2026-11-26T07:00:00+01"],
)  # fmt: skip
def test_not_a_time_is_a_value_error(text):
    with pytest.raises(ValueError):
        parse_rfc3339(text)


def test_docker_and_registry_times_with_short_fractions_are_kept():
    """The two callers: Docker's ``Created``/``StartedAt`` and an image config's ``created``."""
    assert parse_time("2026-11-26T07:00:00.12345Z") == pytest.approx(
        datetime(2026, 11, 26, 7, 0, 0, 123450, tzinfo=UTC).timestamp()
    )
    assert parse_time("2026-11-26T07:00:00.5+01:00") == pytest.approx(
        datetime(2026, 11, 26, 6, 0, 0, 500000, tzinfo=UTC).timestamp()
    )
    assert parse_time("not a time") is None
    assert parse_created(" 2026-11-26T07:00:00.1Z ") == datetime(
        2026, 11, 26, 7, 0, 0, 100000, tzinfo=UTC
    )
    assert parse_created("2026-11-26T07:00:00.1234") == datetime(
        2026, 11, 26, 7, 0, 0, 123400, tzinfo=UTC
    )  # naive: UTC
    assert parse_created("garbage") is None
    config = ImageConfig.parse(b'{"created": "2026-11-26T07:00:00.123Z", "config": {}}')
    assert config.created == datetime(2026, 11, 26, 7, 0, 0, 123000, tzinfo=UTC)


def _go_rfc3339nano(moment: datetime, nanos: int) -> str:
    """What Go's ``time.Format(time.RFC3339Nano)`` writes for a UTC time."""
    fraction = f"{nanos:09d}".rstrip("0")
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + "Z"


@given(
    st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1)),
    st.integers(0, 999_999_999),
)
def test_every_go_time_parses_to_its_microsecond(moment, nanos):
    moment = moment.replace(microsecond=0, tzinfo=UTC)
    text = _go_rfc3339nano(moment, nanos)
    parsed = parse_rfc3339(text)
    assert parsed == moment + timedelta(microseconds=nanos // 1000)
    if sys.version_info >= (3, 11):  # the same answer as the standard library's, where it can
        assert parsed == datetime.fromisoformat(text)
