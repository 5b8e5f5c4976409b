from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r2d_core.errors import InvalidRequest
from r2d_core.naming import (
    DEFAULT_IMAGE_NAME_TEMPLATE,
    MAX_COMPONENT_LENGTH,
    escape_component,
    image_reference,
    parse_reference,
    validate_template,
)

SHA = "0123456789abcdef0123456789abcdef01234567"
owners = st.text(min_size=1, max_size=200)
names = st.text(min_size=1, max_size=64)


def ref(
    owner: str, name: str, template: str = DEFAULT_IMAGE_NAME_TEMPLATE, prefix: str = "r2d-"
) -> str:
    return image_reference(template, prefix=prefix, owner=owner, name=name, sha=SHA)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (("alice", "x-y"), ("alice-x", "y")),
        (("a.b", "n"), ("a_b", "n")),
        (("Alice", "n"), ("alice", "n")),
        (("alice", "N"), ("alice", "n")),
        (("zoë", "n"), ("zoe", "n")),
        (("z", "n"), ("z7a", "n")),
        (("a" * 200, "n"), ("a" * 199 + "b", "n")),
        (("é" * 200, "n"), ("é" * 199 + "e", "n")),
    ],
)
def test_known_collisions_are_distinct(a, b):
    assert ref(*a) != ref(*b)


@settings(max_examples=400, deadline=None)
@given(owners, names, owners, names)
def test_owner_name_to_repository_is_injective(o1, n1, o2, n2):
    r1, r2 = ref(o1, n1), ref(o2, n2)
    assert (r1 == r2) == ((o1, n1) == (o2, n2))


@settings(max_examples=300, deadline=None)
@given(owners, names)
def test_every_reference_is_valid_for_docker(owner, name):
    reference = ref(owner, name, prefix="localhost:5000/r2d/")
    parsed = parse_reference(reference)
    assert parsed.tag == SHA
    assert parsed.domain == "localhost:5000"
    assert len(parsed.repository) <= 255


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=300))
def test_escape_is_alphanumeric_and_bounded(value):
    escaped = escape_component(value)
    assert escaped.isascii() and escaped.isalnum() and escaped == escaped.lower()
    assert len(escaped) <= MAX_COMPONENT_LENGTH


def test_common_names_stay_readable():
    assert escape_component("alice") == "alice"
    assert escape_component("bob42") == "bob42"
    assert escape_component("alice-smith") == "alicez2dsmith"


@pytest.mark.parametrize(
    "template",
    [
        "{owner}{name}:{sha}",  # no separator: ambiguous split
        "{prefix}{owner}-{name}:latest",  # every commit would overwrite one tag
        "{prefix}{owner}-{name}",  # no tag at all
        "{prefix}{owner}-{owner}:{sha}",  # no {name}
        "{prefix}{owner}-{name}:{sha}-{bogus}",  # unknown field
        "{prefix}{owner}-{name}:{sha!r}",  # conversions are not allowed
        "{prefix}{owner}-{name}:{sha:>10}",  # nor format specs
        "{prefix}x/UPPER{owner}-{name}:{sha}",  # Docker refuses upper case paths
        "{prefix}{owner}-{name}:{owner}{sha}",  # owner in tag
    ],
)
def test_bad_templates_are_refused_with_a_fix(template):
    with pytest.raises(InvalidRequest, match="image_name_template"):
        validate_template(template, prefix="r2d-")


@pytest.mark.parametrize(
    "template",
    [
        DEFAULT_IMAGE_NAME_TEMPLATE,
        "{prefix}{owner}/{name}:{short_sha}",
        "{prefix}{name}_{owner}:{ref}-{sha}",
    ],
)
def test_good_templates(template):
    assert validate_template(template, prefix="quay.io/org/r2d-") == template


def test_parse_reference_domains():
    assert parse_reference("busybox").domain is None
    assert parse_reference("library/busybox:1").tag == "1"
    parsed = parse_reference("127.0.0.1:5000/a/b:c")
    assert (parsed.domain, parsed.path, parsed.tag) == ("127.0.0.1:5000", "a/b", "c")
    with pytest.raises(InvalidRequest):
        parse_reference("a/UPPER/case")
