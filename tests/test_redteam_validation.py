"""Red-team cases against the pure checks: values a regular expression's ``$`` lets through.

Python's ``$`` also matches right before a final newline, so ``re.match("^[a-z]+$", "main\\n")``
succeeds. The JSON body of ``POST api/builds`` is checked with ECMA semantics (r2d_core.schema),
but the BinderHub endpoint's ref (from the path) and ``?name=`` reach the core checks directly.
"""

from __future__ import annotations

import pytest

from r2d_core.errors import InvalidRequest
from r2d_core.fetch import _FULL_SHA as FETCH_FULL_SHA
from r2d_core.naming import parse_reference
from r2d_core.providers import DEFAULT_URL_TEMPLATES, resolve_spec
from r2d_core.refs import pick_sha
from r2d_core.validation import validate_name, validate_ref

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize("ref", ["main\n", f"{SHA}\n", "v1.0\n", "HEAD\n"])
def test_ref_with_a_final_newline_is_refused(ref):
    with pytest.raises(InvalidRequest):
        validate_ref(ref)


@pytest.mark.parametrize("name", ["image\n", "a\n"])
def test_name_with_a_final_newline_is_refused(name):
    with pytest.raises(InvalidRequest):
        validate_name(name)


def test_a_sha_with_a_final_newline_is_not_a_sha():
    # a full sha is taken as it is (no lookup): "<sha>\n" must not count as one
    assert pick_sha({}, f"{SHA}\n") is None
    assert not FETCH_FULL_SHA.match(f"{SHA}\n")
    assert pick_sha({}, SHA) == SHA


def test_image_reference_with_a_final_newline_is_refused():
    with pytest.raises(InvalidRequest):
        parse_reference(f"r2d-alice-x:{SHA}\n")
    assert parse_reference(f"r2d-alice-x:{SHA}").tag == SHA


def test_binder_spec_segment_with_a_final_newline_is_refused():
    with pytest.raises(InvalidRequest):
        resolve_spec("gh", "org%0A/repo/main", DEFAULT_URL_TEMPLATES)
    with pytest.raises(InvalidRequest):
        resolve_spec("gh", "org/repo%0A/main", DEFAULT_URL_TEMPLATES)
