from __future__ import annotations

import re

import pytest
from traitlets import TraitError

from r2d_core.errors import InvalidRequest
from r2d_core.manager import BuildManager
from r2d_core.validation import (
    DEFAULT_ALLOWED_REPO_PATTERNS,
    NAME_PATTERN,
    check_allowed_pattern,
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
    url = "git://127.0.0.1:9419/hello"
    with pytest.raises(InvalidRequest, match="not allowed here"):
        validate_repo_url(url)
    assert validate_repo_url(url, LOOPBACK) == url
    assert validate_repo_url("https://github.com/org/repo") == "https://github.com/org/repo"


@pytest.mark.parametrize(
    ("url", "canonical"),
    [
        ("HTTPS://GitHub.COM:443//org/repo.git/", "https://github.com/org/repo.git"),
        ("https://github.com/org/./repo", "https://github.com/org/repo"),
        ("https://github.com/org/re%70o", "https://github.com/org/repo"),
        ("https://github.com", "https://github.com/"),
    ],
)
def test_returns_the_canonical_url(url, canonical):
    assert validate_repo_url(url) == canonical
    assert validate_repo_url(url, [r"^https://github\.com/"]) == canonical


@pytest.mark.parametrize(
    "url",
    [
        'https://[v1.a"][core]fsmonitor=touch${IFS}PWNED;@github.com/attacker/repo.git',
        "https://[x]/",
        "https://[::1::]/",
        "https://[v7.x]/r",
        "https://169.254.169.254/latest/meta-data",  # IP-address hosts: not in the default list
        "https://10.0.0.1/r",
        "https://[::1]/r",
        "https://2130706433/r",
        "https://github.com/org/../../etc",
    ],
)
def test_hostile_urls_are_a_clean_400(url):
    with pytest.raises(InvalidRequest) as e:
        validate_repo_url(url)
    assert e.value.status == 400 and e.value.details.get("field") == "repo"


def test_allow_list_sees_the_canonical_url():
    """A pattern written for the canonical form cannot be dodged by spelling the URL otherwise."""
    patterns = [r"^https://github\.com/org/"]
    for spelled in (
        "HTTPS://GITHUB.COM/org/r",
        "https://github.com:443/org/r",
        "https://github.com//org/r",
    ):
        assert validate_repo_url(spelled, patterns) == "https://github.com/org/r"
    for other in (
        "https://github.com/org2/r",
        "https://github.com/x/../org/r",
        "https://evil.org/org/",
    ):
        with pytest.raises(InvalidRequest):
            validate_repo_url(other, patterns)
    # a path-anchored deny cannot be escaped through encoding: %2F stays a literal, not a slash
    assert (
        validate_repo_url("https://github.com/org%2Fr", [r"^https://"])
        == "https://github.com/org%2Fr"
    )


@pytest.mark.parametrize(
    "pattern",
    [
        DEFAULT_ALLOWED_REPO_PATTERNS[0],
        r"^https://",
        r"^https://github\.com/",
        r"^https://(github\.com|gitlab\.com)/",
        r"^https://[^/]*\.github\.com/",
        r"^https://github\.com(:|/)",
        r"^https://git\.corp(:[0-9]+)?/",
        r"^git://127\.0\.0\.1:\d+/",
        r"^ssh://git@github\.com/",
    ],
)
def test_patterns_that_pin_the_host(pattern):
    check_allowed_pattern(pattern)
    BuildManager(allowed_repo_patterns=[pattern])


@pytest.mark.parametrize(
    ("pattern", "fix"),
    [
        (r"^https://github\.com", "github.com.r2dprobe.invalid"),
        (r"^https://github\.com(:\d+)?", "end the host with '/'"),
        (r"^https://gith", "does not pin the host"),
        (r"^https://.*\.github\.com/", "r2dprobe.invalid/x/.github.com"),
        (r"github\.com/", "start it with '^'"),
        (r"^ssh://git@github\.com", "does not pin the host"),
        (r"^https://github.com/", "unescaped '.'"),
        (r"^https://GitHub\.com/", "lower case"),
        (r"^https://github\.com:443/", "leave ':443' out"),
        (r"(", "not a regular expression"),
    ],
)
def test_patterns_that_do_not_pin_the_host(pattern, fix):
    with pytest.raises(ValueError) as e:
        check_allowed_pattern(pattern)
    assert fix in str(e.value)
    with pytest.raises(TraitError, match="allowed_repo_patterns: "):
        BuildManager(allowed_repo_patterns=[pattern])
    probe = re.search(r"matches '([^']+)'", str(e.value))
    if probe:  # every refusal comes with a URL the pattern really lets through
        assert re.search(pattern, validate_repo_url(probe.group(1), [pattern]))


def test_default_allow_list():
    for ok in (
        "https://github.com/org/r",
        "https://gitlab.example.org:8443/g/p",
        "https://xn--bcher-kva.example/r",
    ):
        assert validate_repo_url(ok) == ok
    for refused in (
        "http://github.com/r",
        "git://github.com/r",
        "https://192.0.2.1/r",
        "https://[2001:db8::1]/r",
    ):
        with pytest.raises(InvalidRequest, match="not allowed here"):
            validate_repo_url(refused)


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


def test_patterns_from_the_environment_are_checked_at_start(monkeypatch):
    monkeypatch.setenv("R2D_ALLOWED_REPO_PATTERNS", r"^https://github\.com/, ^https://gitlab\.com/")
    assert BuildManager().allowed_repo_patterns == [
        r"^https://github\.com/",
        r"^https://gitlab\.com/",
    ]
    monkeypatch.setenv("R2D_ALLOWED_REPO_PATTERNS", r"^https://github\.com")
    with pytest.raises(TraitError, match="does not pin the host"):
        BuildManager()
