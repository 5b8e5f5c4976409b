from __future__ import annotations

import re

import pytest

from r2d_core.errors import InvalidRequest
from r2d_core.validation import (
    NAME_PATTERN,
    default_name_for_repo,
    validate_name,
    validate_owner,
    validate_ref,
    validate_repo_url,
)

LOOPBACK = [r"^https://", r"^git://127\.0\.0\.1:\d+/"]


@pytest.mark.parametrize(
    "url",
    [
        "/etc/passwd",
        "./repo",
        "~/repo",
        "file:///etc",
        "FILE:///etc",
        "ext::sh -c touch% /tmp/pwned",
        "ext::sh",
        "fd::3",
        "-uhttps://x",
        "--upload-pack=touch /tmp/x",
        "https://example.org/a b",
        "https://example.org/a\nb",
        "https://example.org/a\x00",
        "https://user:secret@example.org/a",
        "ftp://example.org/a",
        "http://example.org/a",  # not in the default allow-list
        "",
        None,
        42,
    ],
)
def test_bad_urls_rejected(url):
    with pytest.raises(InvalidRequest) as e:
        validate_repo_url(url)
    assert "secret" not in str(e.value)


def test_allow_list_widening():
    url = "git://127.0.0.1:9418/hello"
    with pytest.raises(InvalidRequest, match="not allowed here"):
        validate_repo_url(url)
    assert validate_repo_url(url, LOOPBACK) == url
    assert validate_repo_url("https://github.com/org/repo") == "https://github.com/org/repo"


@pytest.mark.parametrize("ref", ["main", "HEAD", "v1.0", "feature/x", "0123abc", "a" * 40])
def test_good_refs(ref):
    assert validate_ref(ref) == ref


@pytest.mark.parametrize(
    "ref", ["", "-b", "--upload-pack=x", "a..b", "a b", "a\nb", "x.lock", "a@{1}", "a//b", None]
)
def test_bad_refs(ref):
    with pytest.raises(InvalidRequest):
        validate_ref(ref)


@pytest.mark.parametrize("name", ["a", "my-repo", "My_Repo.2", "x" * 64])
def test_good_names(name):
    assert validate_name(name) == name
    assert re.match(NAME_PATTERN, name)


@pytest.mark.parametrize("name", ["", "-a", ".a", "a b", "a/b", "x" * 65, "é", None])
def test_bad_names(name):
    with pytest.raises(InvalidRequest):
        validate_name(name)


def test_owner_rules():
    assert validate_owner("alice@example.org") == "alice@example.org"
    for bad in ["", "a/b", "a\x00", "x" * 256, None]:
        with pytest.raises(InvalidRequest):
            validate_owner(bad)


def test_default_name():
    assert default_name_for_repo("https://github.com/org/my-repo.git") == "my-repo"
    assert default_name_for_repo("https://github.com/org/My Repo/") == "My-Repo"
    assert validate_name(default_name_for_repo("https://example.org/"))
