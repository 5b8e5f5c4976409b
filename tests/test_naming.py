from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
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
        "{prefix}{owner}{ref}-{name}:{sha}",  # issue 9, defect 6: (bob, main) = (bo, bmain)
        "{prefix}{owner}-{ref}-{name}:{sha}",  # the requester's ref in the repository
        "{prefix}{owner}{sha}{name}:{sha}",  # nothing ends {owner}
        "{prefix}{owner}-{name}{short_sha}:{sha}",  # nothing ends {name}
        "{prefix}{owner}a-{name}:{sha}",  # 'a' can be part of an owner
        "{prefix}{owner}9{name}:{sha}",
        "{prefix}{name}{owner}:{sha}",
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
        "{prefix}{owner}/{sha}{name}:{sha}",  # a fixed-length field needs no separator
        "{prefix}{owner}.{name}:{short_sha}-{ref}",
        "{prefix}{owner}-x-{name}:{sha}",
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


def test_defect_6_message_says_the_fix():
    with pytest.raises(InvalidRequest, match=r"put \{ref\} in the tag"):
        validate_template("{prefix}{owner}{ref}-{name}:{sha}", prefix="r2d-")
    with pytest.raises(InvalidRequest, match=r"put '-', '_', '.' or '/' right after \{owner\}"):
        validate_template("{prefix}{owner}{sha}{name}:{sha}", prefix="r2d-")


# Adversarial values for the exhaustive check: prefixes and suffixes of one another, so that a
# field "absorbing" its neighbour's characters would show up as a collision.
_OWNERS = ["b", "bo", "bob", "o", "ob", "bob-x", "x"]
_NAMES = ["x", "n", "bx", "xn", "main", "b-main"]
_REFS = ["main", "bmain", "b", "x-n", "x/y", "Main", "0" * 12]
_SHAS = ["0" * 40, "0" * 12 + "b" * 28, "b" * 40]

_FIELDS = ["{owner}", "{name}", "{sha}", "{short_sha}", "{ref}", "x", "a9"]
#: mostly real separators, sometimes nothing or a letter/digit that a field could absorb
_SEPARATORS = ["-", "_", ".", "/", "-", "/", "", "a", "0", "x-"]


@st.composite
def _templates(draw):
    fields = draw(st.lists(st.sampled_from(_FIELDS), max_size=3))
    for field in ("{owner}", "{name}"):
        fields.insert(draw(st.integers(0, len(fields))), field)
    body = "".join(f + draw(st.sampled_from(_SEPARATORS)) for f in fields[:-1]) + fields[-1]
    tag = draw(st.sampled_from(["{sha}", "{ref}-{sha}", "{short_sha}", "x{sha}{ref}"]))
    return "{prefix}" + body + ":" + tag


@settings(max_examples=300, deadline=None)
@given(_templates(), st.sampled_from(["", "r2d-", "localhost:5000/r2d/", "r2d"]))
def test_every_accepted_template_is_injective(template, prefix):
    """Over every template validate_template accepts: no two (owner, name) share a repository,
    whatever ref and sha the requesters pick (checked exhaustively on adversarial values)."""
    try:
        validate_template(template, prefix=prefix)
    except InvalidRequest:
        assume(False)  # hypothesis fails the test if too few drawn templates are accepted
    seen: dict[str, tuple[str, str]] = {}
    for owner in _OWNERS:
        for name in _NAMES:
            for ref in _REFS:
                for sha in _SHAS:
                    try:
                        reference = image_reference(
                            template, prefix=prefix, owner=owner, name=name, sha=sha, ref=ref
                        )
                    except InvalidRequest:
                        continue
                    repository = parse_reference(reference).repository
                    assert seen.setdefault(repository, (owner, name)) == (owner, name), (
                        template,
                        repository,
                    )


_DIGESTS = ["", "0123456789abcdef", "fedcba9876543210"]
_OPTION_REFS = ["main", "o0123456789abcdef", "o0123456789abcdef-main", "_o0123456789abcdef"]
_OPTION_REFS += ["main-o0123456789abcdef", "0123456789abcdef", "x"]


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(
        [
            "{sha}",
            "{short_sha}",
            "{sha}-{ref}",
            "{ref}-{sha}",
            "{sha}{ref}",
            "{sha}_{ref}",
            "{short_sha}.{ref}",
            "{ref}{sha}",
            "{sha}{options}-{ref}",
            "{short_sha}{options}",
            "x{sha}{options}{ref}",
        ]
    )
)
def test_the_options_digest_is_read_back_from_every_tag(tag):
    """Two builds of one (owner, name) differ in commit or effective options => their references
    differ, whatever refs the requesters pick (refs chosen to look like digests)."""
    template = "{prefix}{owner}-{name}:" + tag
    validate_template(template, prefix="r2d-")
    seen: dict[str, tuple[str, str]] = {}
    for sha in ("0" * 40, "b" * 40):
        for digest in _DIGESTS:
            for ref in _OPTION_REFS:
                reference = image_reference(
                    template,
                    prefix="r2d-",
                    owner="o",
                    name="n",
                    sha=sha,
                    ref=ref,
                    options_digest=digest,
                )
                assert seen.setdefault(reference, (sha, digest)) == (sha, digest), (
                    tag,
                    reference,
                )
