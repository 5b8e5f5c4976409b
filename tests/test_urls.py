"""The one URL model (r2d_core/urls.py): strict grammar, canonical form, properties."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from r2d_core import urls
from r2d_core.urls import RepoURL, URLError, parse_repo_url

#: the URL of issue 9, defect 1 (gitconfig injection through the userinfo)
INJECTION = 'https://[v1.a"][core]fsmonitor=touch${IFS}PWNED;@github.com/attacker/repo.git'
#: characters with a meaning in a gitconfig file (section names, quoted values, comments)
GITCONFIG_SPECIAL = set('"\\\n[];#')


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("https://github.com/org/repo", "https://github.com/org/repo"),
        ("HTTPS://GitHub.COM:443/org//repo.git/", "https://github.com/org/repo.git"),
        ("http://127.0.0.1:80/x/./y", "http://127.0.0.1/x/y"),
        ("git://127.0.0.1:9418/repo", "git://127.0.0.1/repo"),
        ("git://127.0.0.1:9419/repo", "git://127.0.0.1:9419/repo"),
        ("ssh://git@github.com/org/repo.git", "ssh://git@github.com/org/repo.git"),
        ("ssh://github.com:2222/~/repo", "ssh://github.com:2222/~/repo"),
        ("https://[0:0::1]:8443/r", "https://[::1]:8443/r"),
        ("https://[::FFFF:127.0.0.1]/r", "https://[::ffff:7f00:1]/r"),
        ("https://h.example/%7e%41b/c%2fd", "https://h.example/~Ab/c%2Fd"),
        ("https://h.example/a;b/c'd(e)", "https://h.example/a%3Bb/c%27d%28e%29"),
        ("https://h.example/My%20Project/_git/r", "https://h.example/My%20Project/_git/r"),
        ("https://h.example/caf\u00e9", "https://h.example/caf%C3%A9"),
        ("https://b\u00fccher.example/r", "https://xn--bcher-kva.example/r"),
        ("https://h.example", "https://h.example/"),
    ],
)
def test_canonical_form(text, canonical):
    url = parse_repo_url(text)
    assert str(url) == url.canonical == canonical
    assert parse_repo_url(canonical) == url


def test_fields_and_origin():
    url = parse_repo_url("ssh://git@[::1]:2222/org/repo.git")
    assert url == RepoURL(scheme="ssh", host="::1", port=2222, path="/org/repo.git", user="git")
    assert url.origin == "ssh://[::1]:2222"
    assert url.host_is_ip and url.effective_port == 2222
    url = parse_repo_url("https://github.com/org/repo")
    assert (url.port, url.effective_port, url.host_is_ip) == (None, 443, False)
    assert url.origin == "https://github.com"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (INJECTION, "credentials"),
        ("https://user:pw@github.com/r", "credentials"),
        ("https://user@github.com/r", "credentials"),
        ("git://user@127.0.0.1/r", "credentials"),
        ("ssh://git:pw@github.com/r", "password"),
        ("ssh://-oProxyCommand=x@github.com/r", "user name"),
        ("ssh://a;b@github.com/r", "user name"),
        ("https://[x]/", "IPv6"),
        ("https://[::1/", "unclosed"),
        ("https://[::1]x/", "after the ']'"),
        ("https://[v1.a]/", "IPvFuture"),
        ("https://[fe80::1%25eth0]/", "zone"),
        ("https://[::1::2]/", "IPv6"),
        ("https://a[b]c/", "IPv6"),
        ("https://h/a%00b", "control"),
        ("https://h/a%0Ab", "control"),
        ("https://h/a%7F", "control"),
        ("https://h/a%C2%85", "control"),
        ("https://h/a\nb", "control"),
        ("https://h/a b", "spaces"),
        ("https://h/a\u00a0b", "spaces"),
        ("https://h/a\u200bb", "spaces"),
        ("https:///r", "no host"),
        ("https://:443/r", "no host"),
        ("https://h:0/r", "port"),
        ("https://h:65536/r", "port"),
        ("https://h:/r", "port"),
        ("https://h:+1/r", "port"),
        ("https://h/a/../b", "'..'"),
        ("https://h/a/%2E%2e/b", "'..'"),
        ("https://h/a/.%2E", "'..'"),
        ("https://h/r?x=1", "query"),
        ("https://h/r#x", "fragment"),
        ("https://h\\@evil/r", "backslash"),
        ('https://h/a"b', "percent-encode"),
        ("https://h/a[b", "percent-encode"),
        ("https://h/a%zz", "two hex"),
        ("https://0177.0.0.1/", "IPv4"),
        ("https://2130706433/", "IPv4"),
        ("https://0x7f.1/", "IPv4"),
        ("https://127.1/", "IPv4"),
        ("https://h.example./r", "end with"),
        ("https://-h.example/r", "host name"),
        ("https://h_x.example/r", "host name"),
        ("https://h%2Eexample/r", "percent"),
        ("https://stra\u00dfe.example/r", "xn--"),
        ("git@github.com:org/repo.git", "ssh://git@github.com/org/repo.git"),
        ("https:/github.com/org/repo", "two slashes"),
        ("HTTPS:github.com/org/repo", "'https://'"),
        ("file:///etc/passwd", "local paths"),
        ("/srv/repo", "local paths"),
        ("ext::sh -c touch% /tmp/x", "spaces"),
        ("ext::sh", "remote helpers"),
        ("ftp://h/r", "not supported"),
        ("git+ssh://h/r", "ssh://"),
        ("", "non-empty"),
        ("https://h/" + "a" * 2048, "longer"),
    ],
)
def test_refused(text, message):
    with pytest.raises(URLError) as info:
        parse_repo_url(text)
    assert message in str(info.value)


def test_non_string_refused():
    for value in (None, 1, ["https://h/"], b"https://h/"):
        with pytest.raises(URLError):
            parse_repo_url(value)


def test_url_error_is_value_error():
    assert issubclass(URLError, ValueError)


def test_stdlib_only_and_runs_alone(tmp_path):
    """h2's fetch stage copies urls.py/netpolicy.py into build containers: no other imports."""
    for name in ("urls.py", "netpolicy.py"):
        source = (Path(urls.__file__).parent / name).read_text()
        imports = re.findall(r"^\s*(?:from|import)\s+([\w.]+)", source, re.M)
        assert all(not m.startswith((".", "r2d_core")) for m in imports), imports
        copy = tmp_path / name
        copy.write_text(source)
    out = subprocess.run(
        [
            sys.executable,
            "-S",  # no site-packages: the standard library only
            "-E",
            "-s",
            "-c",
            "import urls, netpolicy; print(urls.parse_repo_url('HTTPS://H.example//r/'),"
            " netpolicy.is_internal('169.254.169.254'))",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["https://h.example/r", "True"]


# ---- properties ---------------------------------------------------------------------------------
_label = st.from_regex(r"\A[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,8}[a-zA-Z0-9])?\Z").filter(
    lambda s: not re.fullmatch(r"0x[0-9a-f]*|[0-9]+", s, re.IGNORECASE)
)
_dns_host = st.lists(_label, min_size=1, max_size=4).map(".".join)
_ipv4 = st.ip_addresses(v=4).map(str)
_ipv6 = st.ip_addresses(v=6).map(lambda a: f"[{a.exploded if hash(a) % 2 else a.compressed}]")
_host = st.one_of(_dns_host, _ipv4, _ipv6)
_segment_chars = st.characters(
    codec="utf-8", exclude_categories=("Cs",), exclude_characters="/"
) | st.sampled_from(list("%;#[]\"\\'$`{}|<>^ .~:@+,=!&()*"))
_segment = st.one_of(
    st.text(_segment_chars, max_size=8),
    st.sampled_from([".", "..", "%2e%2E", "%2F", "%00", "%41", "%7e", "%C3%A9", "%ff", ""]),
)
_path = st.lists(_segment, max_size=5).map(lambda s: "/" + "/".join(s))


@st.composite
def _candidate_urls(draw):
    scheme = draw(st.sampled_from(["https", "HTTP", "git", "ssh", "Https", "ftp"]))
    user = draw(st.none() | st.sampled_from(["git", "a.b-c_d", "x:y", "-o", 'v1.a"]']))
    port = draw(st.none() | st.integers(min_value=-1, max_value=70000).map(str) | st.just(""))
    auth = (f"{user}@" if user else "") + draw(_host) + (f":{port}" if port is not None else "")
    return f"{scheme}://{auth}{draw(_path)}"


_safe_segment = (
    st.lists(
        st.sampled_from(list("abcXYZ019-._~:@+,=!$&'()*;\u00e9"))
        | st.sampled_from(["%41", "%2F", "%25", "%20", "%C3%A9", "%FF"]),
        min_size=1,
        max_size=6,
    )
    .map("".join)
    .filter(lambda s: s.replace("%2E", ".").replace("%2e", ".") not in (".", ".."))
)


@st.composite
def _valid_urls(draw):
    """URLs the grammar accepts: each must parse, and its canonical form must be a fixed point."""
    scheme = draw(st.sampled_from(["https", "HTTPS", "http", "git", "ssh"]))
    user = draw(st.none() | st.sampled_from(["git", "a.b-c_d"])) if scheme == "ssh" else None
    port = draw(st.none() | st.integers(min_value=1, max_value=65535).map(str))
    host = draw(_host)
    auth = (f"{user}@" if user else "") + host + (f":{port}" if port is not None else "")
    segments = draw(st.lists(_safe_segment | st.just(""), max_size=5))
    return f"{scheme}://{auth}/" + "/".join(segments)


@settings(max_examples=400)
@given(_valid_urls())
def test_property_valid_urls_accepted(text):
    _check_canonical(parse_repo_url(text))


def _check_canonical(url: RepoURL) -> None:
    canonical = url.canonical
    assert parse_repo_url(canonical) == url  # parse(canonical(x)) == x
    assert parse_repo_url(canonical).canonical == canonical  # idempotent
    assert canonical.isascii() and canonical.isprintable()
    # gitconfig-special characters: none, except the brackets of an IPv6 host
    outside = canonical.replace(url.netloc_host, "", 1) if url.host_is_ip else canonical
    assert not (set(outside) & GITCONFIG_SPECIAL), canonical
    assert not re.search(r"[\s'$`<>{}|^?]", canonical)
    assert "//" not in canonical.split("://", 1)[1]
    assert "/../" not in canonical + "/" and not canonical.endswith("/..")
    assert all(
        m.group(1).isupper() or m.group(1).isdigit() for m in re.finditer(r"%(..)", canonical)
    )
    assert url.scheme == url.scheme.lower() and url.host == url.host.lower()
    assert url.user is None or url.scheme == "ssh"


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(_candidate_urls())
@example(INJECTION)
@example("https://[x]/")
def test_property_structured(text):
    try:
        url = parse_repo_url(text)
    except URLError:
        return
    _check_canonical(url)


@settings(max_examples=600)
@given(st.text(max_size=60) | st.text(max_size=40).map(lambda s: "https://" + s))
def test_property_any_text_is_parsed_or_refused_cleanly(text):
    """No input raises anything but URLError (which the service maps to 400, never 500)."""
    try:
        url = parse_repo_url(text)
    except URLError:
        return
    _check_canonical(url)
