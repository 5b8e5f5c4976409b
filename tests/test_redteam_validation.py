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


# ---- network reach: hosts that hide an internal address (these held; kept as regressions) ------
@pytest.mark.parametrize(
    "url",
    [
        "https://localhost./x",
        "https://127.1/x",
        "https://2130706433/x",
        "https://0x7f.0.0.1/x",
        "https://0177.0.0.1/x",
        "https://0.0.0.0/x",
        "https://[::ffff:127.0.0.1]/x",
        "https://[::1]/x",
        "https://169.254.169.254/latest/meta-data",
        "https://user:pw@github.com/x",
        "https://github.com@127.0.0.1/x",
        "https://github.com\u202e/x",
        "https://\uff47\uff49\uff54\uff48\uff55\uff42.com/x",  # fullwidth: NFKC would rewrite it
        "https://github.com%2f@127.0.0.1/x",
        "https://github.com/%2e%2e/%2e%2e/x",
        "https://github.com/x%00",
        "ssh://-oProxyCommand=touch%20/tmp/pwn/x",
        "ssh://-oProxyCommand=x@github.com/x",
        "ssh://git@-oProxyCommand=x/y",
        "git://github.com:0/x",
        "git://github.com:65536/x",
        "git://github.com:+22/x",
        "ext::sh -c id",
        "file:///etc/passwd",
        "fd::17",
        "/srv/git/x",
        "-uhttps://github.com/x",
    ],
)
def test_hosts_hiding_an_internal_address_are_refused(url):
    from r2d_core.validation import validate_repo_url

    with pytest.raises(InvalidRequest):
        validate_repo_url(url)


@pytest.mark.parametrize("address", ["127.0.0.1", "::ffff:127.0.0.1", "0.0.0.0", "10.1.2.3"])
async def test_a_name_resolving_to_an_internal_address_is_refused(monkeypatch, address):
    import socket

    from r2d_core.netpolicy import AddressRefused, NetPolicy

    family = socket.AF_INET6 if ":" in address else socket.AF_INET

    def fake_getaddrinfo(host, port, *args, **kwargs):
        return [(family, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    with pytest.raises(AddressRefused) as info:
        await NetPolicy().resolve_checked("git.example.org", 443)
    assert address not in str(info.value)  # the user is not told the internal address
    with pytest.raises(AddressRefused):
        NetPolicy().resolve_checked_sync("git.example.org", 443)


def test_homoglyph_host_is_not_the_allowed_host():
    from r2d_core.validation import validate_repo_url

    pattern = [r"^https://github\.com/"]
    assert validate_repo_url("https://GitHub.com/x", pattern) == "https://github.com/x"
    for url in ("https://g\u0456thub.com/x", "https://github.com.evil.example/x"):  # Cyrillic i
        with pytest.raises(InvalidRequest):
            validate_repo_url(url, pattern)
