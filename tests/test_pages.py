"""Pages of the build list (r2d_core.pages) and their query parameters (r2d_core.schema): the
HTTP behaviour through both adapters is in tests/test_service.py."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from r2d_core import pages
from r2d_core.errors import InvalidRequest
from r2d_core.models import Build
from r2d_core.schema import validate_query


def build(n: int, created: float) -> Build:
    return Build(
        id=f"{n:012x}", owner="o", name="i", repo="r", ref="HEAD", sha="0" * 40, image="i:x",
        created=created,
    )  # fmt: skip


def walk(builds: list[Build], limit: int) -> tuple[list[Build], int]:
    seen: list[Build] = []
    before, requests = None, 0
    while True:
        chunk, before = pages.page(builds, limit, before)
        requests += 1
        assert len(chunk) <= limit
        seen += chunk
        if before is None:
            return seen, requests


def test_default_page_is_bounded_and_newest_first():
    builds = [build(n, 1_700_000_000 + n) for n in range(pages.DEFAULT_LIMIT + 5)]
    random.Random(1).shuffle(builds)
    first, after = pages.page(builds)
    assert len(first) == pages.DEFAULT_LIMIT
    assert [b.created for b in first] == sorted((b.created for b in builds), reverse=True)[:100]
    rest, end = pages.page(builds, before=after)
    assert len(rest) == 5 and end is None
    assert {b.id for b in first} | {b.id for b in rest} == {b.id for b in builds}


@given(
    st.lists(
        st.sampled_from([0.0, 1.5, 1_764_584_300.1234567, 1_764_584_300.1234569]), max_size=40
    ),
    st.integers(1, 7),
)
def test_walking_the_pages_sees_every_build_once_in_order(times, limit):
    """Equal creation times (records restored with created=0, bursts) included: a total order."""
    builds = [build(n, t) for n, t in enumerate(times)]
    seen, requests = walk(builds, limit)
    assert [b.id for b in seen] == [b.id for b in sorted(builds, key=lambda b: (b.created, b.id))][
        ::-1
    ]
    assert requests == max(1, -(-len(builds) // limit))


def test_a_cursor_outlives_the_build_it_names_and_new_builds_go_first():
    builds = [build(n, 1000.0 + n) for n in range(6)]
    first, after = pages.page(builds, 2)
    assert [b.id for b in first] == [builds[5].id, builds[4].id]
    # the build the cursor points after is forgotten, a new one arrives: the walk goes on
    builds = [b for b in builds if b is not builds[4]] + [build(99, 2000.0)]
    rest, _ = pages.page(builds, 10, after)
    assert [b.id for b in rest] == [builds[n].id for n in (3, 2, 1, 0)]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"limit": ["0"]}, "limit"),
        ({"limit": [str(pages.MAX_LIMIT + 1)]}, "limit"),
        ({"limit": ["ten"]}, "limit"),
        ({"limit": ["1", "2"]}, "limit"),
        ({"before": ["abc"]}, "before"),
        ({"before": ["nan_abc"]}, "before"),
        ({"before": ["1e5_abc"]}, "before"),
        ({"before": ["1.5_abc\n"]}, "before"),
        ({"before": ["1" * 70 + "_ab"]}, "before"),
    ],
)
def test_bad_parameters_answer_400_naming_them(query, field):
    with pytest.raises(InvalidRequest) as info:
        validate_query("get /api/builds", query)
    assert info.value.details["field"] == field


def test_good_parameters_are_typed():
    cursor = pages.cursor(build(7, 1_764_584_300.1234567))
    assert cursor == "1764584300.1234567_000000000007"
    values = validate_query("get /api/builds", {"limit": ["500"], "before": [cursor]})
    assert values == {"limit": 500, "before": cursor}


def test_page_itself_refuses_what_the_schema_would():
    with pytest.raises(InvalidRequest):
        pages.page([], 0)
    with pytest.raises(InvalidRequest) as info:
        pages.page([], 1, "not-a-cursor")
    assert info.value.details["field"] == "before"
