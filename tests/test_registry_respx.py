"""RegistryClient/RegistryAuth against answers a local docker-registry cannot give (respx).

Docker Hub's 401 for missing repositories, tokens expiring server-side, 429 with Retry-After, a
registry switching from Bearer to Basic, odd challenges, tag pagination (distribution 2.8 ignores
``n`` on tag lists), broken digests and schema1 manifests.
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import httpx
import pytest
import respx

from r2d_core.errors import NotFound, RateLimited, Unavailable, UpstreamError, http_status
from r2d_core.registry import RegistryAuth, RegistryAuthError, RegistryClient
from r2d_core.registry.auth import parse_retry_after, parse_www_authenticate, predict_scope

REGISTRY = "https://registry.test"
REALM = "https://auth.test/token"
AUTH_HOST = "auth.test"  # the token server is on another host: allowed by configuration
BASIC = "Basic " + base64.b64encode(b"alice:s3cret-pw").decode()


def bearer_challenge(scope: str, error: str | None = None) -> dict[str, str]:
    value = f'Bearer realm="{REALM}",service="registry.test",scope="{scope}"'
    if error:
        value += f',error="{error}"'
    return {"WWW-Authenticate": value}


def unauthorized(scope: str, error: str | None = None) -> httpx.Response:
    body = {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}
    return httpx.Response(401, json=body, headers=bearer_challenge(scope, error))


class TokenServer:
    """Issues ``t1``, ``t2``, ... and remembers what was asked."""

    def __init__(self, expires_in: int = 300) -> None:
        self.issued: list[str] = []
        self.requests: list[httpx.Request] = []
        self.expires_in = expires_in

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        token = f"t{len(self.issued) + 1}"
        self.issued.append(token)
        return httpx.Response(200, json={"token": token, "expires_in": self.expires_in})


@pytest.fixture
def mock():
    with respx.mock(assert_all_called=False) as router:
        yield router


def client(**kwargs) -> RegistryClient:
    kwargs.setdefault("auth", RegistryAuth("alice", "s3cret-pw", token_realm_hosts=[AUTH_HOST]))
    # respx replaces httpx's own connection pool; what these tests check (auth flow, errors,
    # retries) lives in the httpx client above the pool, the same over the aiohttp one
    kwargs.setdefault("http_pool", "httpx")
    return RegistryClient(REGISTRY, **kwargs)


# ---- challenge parsing and helpers -------------------------------------------------------------------
def test_parse_www_authenticate():
    (c,) = parse_www_authenticate(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/ubuntu:pull,push",error="insufficient_scope"'
    )
    assert c.scheme == "bearer"
    assert c.params["scope"] == "repository:library/ubuntu:pull,push"
    assert c.params["error"] == "insufficient_scope"
    basic, bearer = parse_www_authenticate('Basic realm="a, \\"b\\"", Bearer realm=x,service=y')
    assert (basic.scheme, basic.params) == ("basic", {"realm": 'a, "b"'})
    assert (bearer.scheme, bearer.params) == ("bearer", {"realm": "x", "service": "y"})
    negotiate, basic = parse_www_authenticate('Negotiate abc==, Basic realm="r"')
    assert (negotiate.scheme, negotiate.params, basic.scheme) == ("negotiate", {}, "basic")
    (c,) = parse_www_authenticate('Bearer scope="repository:a:pull repository:b:pull"')
    assert c.scopes == ["repository:a:pull", "repository:b:pull"]
    assert parse_www_authenticate("") == []


def test_predict_scope():
    assert predict_scope("GET", "/v2/") == ""
    assert predict_scope("GET", "/v2/_catalog") == "registry:catalog:*"
    assert predict_scope("GET", "/v2/a/b/tags/list") == "repository:a/b:pull"
    assert predict_scope("HEAD", "/v2/a/manifests/v1") == "repository:a:pull"
    assert predict_scope("DELETE", "/v2/a/manifests/sha256:00") == "repository:a:delete"
    assert predict_scope("PUT", "/v2/a/manifests/v1") == "repository:a:pull,push"
    assert predict_scope("GET", "/other") is None


def test_parse_retry_after():
    assert parse_retry_after("7") == 7.0
    later = datetime.now(timezone.utc) + timedelta(seconds=120)
    assert 100 < parse_retry_after(format_datetime(later, usegmt=True)) <= 120
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    # digits of other scripts (str.isdigit() says yes, float() raises): not a number of seconds
    for odd in ("\u00b2", "\u2460", "\u0663"):
        assert parse_retry_after(odd) is None


def test_auth_needs_both_credentials_and_hides_them():
    with pytest.raises(ValueError, match="both"):
        RegistryAuth("alice", "")
    auth = RegistryAuth("alice", "s3cret-pw", token_realm_hosts=[AUTH_HOST])
    assert "s3cret-pw" not in repr(auth) and "alice" in repr(auth)
    with pytest.raises(RuntimeError, match="AsyncClient"):
        httpx.Client(auth=auth).get("https://registry.test/v2/")


# ---- bearer flows --------------------------------------------------------------------------------------
async def test_docker_hub_style_401_for_a_missing_repository(mock):
    tokens = TokenServer()
    token_route = mock.get(REALM).mock(side_effect=tokens)
    scope = "repository:library/missing:pull"

    def registry(request: httpx.Request) -> httpx.Response:
        if "Authorization" not in request.headers:
            return unauthorized(scope)
        return unauthorized(scope, "insufficient_scope")  # a valid token, still refused

    route = mock.get(f"{REGISTRY}/v2/library/missing/tags/list").mock(side_effect=registry)
    async with client() as c:
        with pytest.raises(NotFound, match=r"does not exist .* or user 'alice' may not access it"):
            await c.tags("library/missing")
    assert token_route.call_count == 1
    assert route.call_count == 2  # bare, then once with the token: no retry loop
    (token_request,) = tokens.requests
    assert token_request.url.params.get_list("scope") == [scope]
    assert token_request.url.params["service"] == "registry.test"
    assert token_request.url.params["account"] == "alice"
    assert token_request.headers["Authorization"] == BASIC


async def test_expired_token_is_dropped_and_retried_once(mock):
    tokens = TokenServer()
    mock.get(REALM).mock(side_effect=tokens)
    state = {"valid": "t1", "seen": []}

    def registry(request: httpx.Request) -> httpx.Response:
        auth = request.headers.get("Authorization", "")
        state["seen"].append(auth)
        if auth == f"Bearer {state['valid']}":
            return httpx.Response(200, json={"name": "a", "tags": ["v1"]})
        return unauthorized("repository:a:pull", "invalid_token" if auth else None)

    mock.get(f"{REGISTRY}/v2/a/tags/list").mock(side_effect=registry)
    async with client() as c:
        assert await c.tags("a") == ["v1"]
        assert state["seen"] == ["", "Bearer t1"]
        state["seen"].clear()
        state["valid"] = "t2"  # the registry now considers t1 expired
        assert await c.tags("a") == ["v1"]
        assert state["seen"] == ["Bearer t1", "Bearer t2"]
        assert tokens.issued == ["t1", "t2"]
        # a registry refusing every token: one retry with a fresh token, then a clear error
        state["seen"].clear()
        state["valid"] = "never"
        with pytest.raises(RegistryAuthError, match="refused user 'alice'"):
            await c.tags("a")
        assert state["seen"] == ["Bearer t2", "Bearer t3"]


async def test_token_lifetime_is_respected(mock, monkeypatch):
    tokens = TokenServer(expires_in=60)
    mock.get(REALM).mock(side_effect=tokens)

    def registry(request: httpx.Request) -> httpx.Response:
        if request.headers.get("Authorization", "").startswith("Bearer t"):
            return httpx.Response(200, json={"name": "a", "tags": []})
        return unauthorized("repository:a:pull")

    mock.get(f"{REGISTRY}/v2/a/tags/list").mock(side_effect=registry)
    clock = {"now": 1000.0}
    monkeypatch.setattr("r2d_core.registry.auth.time.monotonic", lambda: clock["now"])
    async with client() as c:
        await c.tags("a")
        clock["now"] += 45  # 60 s lifetime minus the 10 s margin: still good
        await c.tags("a")
        assert tokens.issued == ["t1"]
        clock["now"] += 10
        await c.tags("a")
        assert tokens.issued == ["t1", "t2"]


async def test_registry_asking_another_scope_is_learned(mock):
    tokens = TokenServer()
    mock.get(REALM).mock(side_effect=tokens)
    odd = "repository:a:pull,push"  # some registries ask for more than the request needs
    route = mock.get(f"{REGISTRY}/v2/a/tags/list").mock(
        side_effect=lambda r: (
            httpx.Response(200, json={"tags": ["x"]})
            if r.headers.get("Authorization") == "Bearer t1"
            else unauthorized(odd)
        )
    )
    async with client() as c:
        await c.tags("a")
        assert route.call_count == 2
        await c.tags("a")
        assert route.call_count == 3  # the learned scope's token went along at once
    assert tokens.requests[0].url.params["scope"] == odd
    assert len(tokens.issued) == 1


async def test_basic_challenge_where_a_token_was_expected(mock):
    tokens = TokenServer()
    token_route = mock.get(REALM).mock(side_effect=tokens)
    state = {"mode": "bearer", "seen": []}

    def registry(request: httpx.Request) -> httpx.Response:
        auth = request.headers.get("Authorization", "")
        state["seen"].append(auth.split(" ")[0])
        if state["mode"] == "bearer":
            if auth.startswith("Bearer "):
                return httpx.Response(200, json={"tags": ["v1"]})
            return unauthorized("repository:a:pull")
        if auth == BASIC:
            return httpx.Response(200, json={"tags": ["v2"]})
        return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="registry"'})

    mock.get(f"{REGISTRY}/v2/a/tags/list").mock(side_effect=registry)
    async with client() as c:
        assert await c.tags("a") == ["v1"]
        state["mode"] = "basic"  # e.g. the registry was reconfigured behind a proxy
        state["seen"].clear()
        assert await c.tags("a") == ["v2"]
        assert state["seen"] == ["Bearer", "Basic"]
        state["seen"].clear()
        assert await c.tags("a") == ["v2"]
        assert state["seen"] == ["Basic"]  # remembered
    assert token_route.call_count == 1
    # without credentials a Basic challenge is a clear configuration error
    async with client(auth=RegistryAuth(token_realm_hosts=[AUTH_HOST])) as anonymous:
        with pytest.raises(RegistryAuthError, match="requires credentials"):
            await anonymous.tags("a")


async def test_token_server_failures(mock):
    mock.get(f"{REGISTRY}/v2/").mock(return_value=unauthorized(""))
    realm = mock.get(REALM)
    realm.mock(return_value=httpx.Response(401, json={"details": "nope"}))
    async with client() as c:
        with pytest.raises(
            RegistryAuthError, match=r"token server .* refused the credentials"
        ) as e:
            await c.ping()
        assert "s3cret-pw" not in str(e.value)
    async with client(auth=RegistryAuth(token_realm_hosts=[AUTH_HOST])) as c:
        with pytest.raises(RegistryAuthError, match="refused anonymous access"):
            await c.ping()
    realm.mock(return_value=httpx.Response(200, json={"nothing": "here"}))
    async with client() as c:
        with pytest.raises(UpstreamError, match="sent no token"):
            await c.ping()
    realm.mock(return_value=httpx.Response(429, headers={"Retry-After": "3"}))
    async with client() as c:
        with pytest.raises(RateLimited) as limited:
            await c.ping()
        assert limited.value.retry_after == 3.0
    realm.mock(side_effect=httpx.ConnectError("refused"))
    async with client() as c:
        with pytest.raises(Unavailable, match=r"https://auth\.test \(the registry's token server"):
            await c.ping()


async def test_unsupported_scheme(mock):
    mock.get(f"{REGISTRY}/v2/").mock(
        return_value=httpx.Response(401, headers={"WWW-Authenticate": "Negotiate"})
    )
    async with client() as c:
        with pytest.raises(RegistryAuthError, match=r"does not speak \(Negotiate\)"):
            await c.ping()


# ---- status mapping ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("headers", "expected"),
    [({"Retry-After": "7"}, 7.0), ({}, None)],
)
async def test_429_is_rate_limited(mock, headers, expected):
    body = {"errors": [{"code": "TOOMANYREQUESTS", "message": "slow down"}]}
    mock.get(f"{REGISTRY}/v2/a/tags/list").mock(
        return_value=httpx.Response(429, json=body, headers=headers)
    )
    async with client(auth=None) as c:
        with pytest.raises(RateLimited) as caught:
            await c.tags("a")
    assert caught.value.retry_after == expected
    assert http_status(caught.value) == 429
    assert caught.value.to_dict()["retry_after"] == expected


@pytest.mark.parametrize(
    ("status", "error", "match"),
    [
        (503, Unavailable, "unavailable"),
        (500, UpstreamError, "HTTP 500"),
        (403, RegistryAuthError, "forbids"),
    ],
)
async def test_status_mapping(mock, status, error, match):
    mock.get(f"{REGISTRY}/v2/a/tags/list").mock(return_value=httpx.Response(status))
    async with client(auth=None) as c:
        with pytest.raises(error, match=match):
            await c.tags("a")


async def test_not_a_registry(mock):
    mock.get(f"{REGISTRY}/v2/").mock(return_value=httpx.Response(404, text="<html>"))
    async with client(auth=None) as c:
        with pytest.raises(UpstreamError, match=r"is it a registry"):
            await c.ping()


async def test_invalid_names_never_reach_the_registry(mock):
    from r2d_core.errors import InvalidRequest

    async with client(auth=None) as c:
        for bad in ("../etc", "A", "a?b", "a//b", ""):
            with pytest.raises(InvalidRequest):
                await c.tags(bad)
        with pytest.raises(InvalidRequest):
            await c.image("a", "bad tag")
    assert not mock.calls


async def test_cookies_from_the_registry_or_its_token_server_are_never_sent(mock):
    # a registry, token server or object storage setting a cookie must not get it back later
    # (nor another origin): the client keeps no cookies at all
    scope = "repository:r2d-alice-x:pull"
    cookie = {"Set-Cookie": "session=stolen; Path=/"}
    mock.get(f"{REGISTRY}/v2/").mock(return_value=httpx.Response(200, json={}, headers=cookie))
    mock.get(url__startswith=REALM).mock(
        return_value=httpx.Response(200, json={"token": "t1"}, headers=cookie)
    )
    tags = mock.get(f"{REGISTRY}/v2/r2d-alice-x/tags/list").mock(
        side_effect=[
            unauthorized(scope),
            httpx.Response(200, json={"name": "r2d-alice-x", "tags": ["v1"]}, headers=cookie),
            httpx.Response(200, json={"name": "r2d-alice-x", "tags": ["v1"]}),
        ]
    )
    async with client() as c:
        await c.ping()
        assert await c.tags("r2d-alice-x") == ["v1"]
        assert await c.tags("r2d-alice-x") == ["v1"]
    assert len(tags.calls) == 3
    sent = [call.request for call in mock.calls]
    assert len(sent) == 5  # ping, 401, token, tags, tags
    assert all("cookie" not in request.headers for request in sent)


# ---- pagination ----------------------------------------------------------------------------------------
async def test_tag_pagination_follows_link_headers(mock):
    pages = {
        None: (["a", "b"], '</v2/r/tags/list?last=b&n=2>; rel="next"'),
        "b": (["c", "d"], f'<{REGISTRY}/v2/r/tags/list?last=d&n=2>; rel="next"'),
        "d": (["e"], None),
    }

    def registry(request: httpx.Request) -> httpx.Response:
        tags, link = pages[request.url.params.get("last")]
        return httpx.Response(
            200, json={"name": "r", "tags": tags}, headers={"Link": link} if link else {}
        )

    route = mock.get(f"{REGISTRY}/v2/r/tags/list").mock(side_effect=registry)
    async with client(auth=None, page_size=2) as c:
        assert await c.tags("r") == ["a", "b", "c", "d", "e"]
    assert route.call_count == 3
    assert route.calls[0].request.url.params["n"] == "2"


async def test_pagination_loop_and_foreign_links(mock):
    route = mock.get(f"{REGISTRY}/v2/_catalog").mock(
        return_value=httpx.Response(
            200,
            json={"repositories": ["a"]},
            headers={"Link": '</v2/_catalog?last=a>; rel="next"'},
        )
    )
    async with client(auth=None) as c:
        assert await c.catalog() == ["a", "a"]  # stops once the cursor repeats
        assert route.call_count == 2
        route.mock(
            return_value=httpx.Response(
                200,
                json={"repositories": ["a"]},
                headers={"Link": '<https://elsewhere.test/v2/_catalog?last=a>; rel="next"'},
            )
        )
        with pytest.raises(UpstreamError, match="leaves it"):
            await c.catalog()


# ---- content checks -------------------------------------------------------------------------------------
def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def test_manifest_digest_mismatch(mock):
    body = json.dumps({"schemaVersion": 2, "mediaType": "x", "layers": []}).encode()
    mock.get(f"{REGISTRY}/v2/a/manifests/v1").mock(
        return_value=httpx.Response(200, content=body, headers={"Docker-Content-Digest": _sha(b"")})
    )
    mock.get(f"{REGISTRY}/v2/a/manifests/{_sha(b'other')}").mock(
        return_value=httpx.Response(200, content=body)
    )
    async with client(auth=None) as c:
        with pytest.raises(UpstreamError, match="does not match"):
            await c.manifest("a", "v1")
        with pytest.raises(UpstreamError, match="not matching its digest"):
            await c.manifest("a", _sha(b"other"))


async def test_config_blob_digest_mismatch(mock):
    config_digest = _sha(b"{}")
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "c", "size": 2, "digest": config_digest},
            "layers": [],
        }
    ).encode()
    mock.get(f"{REGISTRY}/v2/a/manifests/v1").mock(
        return_value=httpx.Response(200, content=manifest)
    )
    mock.get(f"{REGISTRY}/v2/a/blobs/{config_digest}").mock(
        return_value=httpx.Response(200, content=b'{"tampered": 1}')
    )
    async with client(auth=None) as c:
        with pytest.raises(UpstreamError, match="not matching"):
            await c.image("a", "v1")


async def test_schema1_manifest_gives_labels(mock):
    v1 = {
        "architecture": "arm64",
        "created": "2024-05-06T07:08:09.123456789Z",
        "config": {"Labels": {"k": "v"}},
    }
    body = json.dumps(
        {
            "schemaVersion": 1,
            "name": "a",
            "tag": "old",
            "history": [{"v1Compatibility": json.dumps(v1)}],
        }
    ).encode()
    mock.get(f"{REGISTRY}/v2/a/manifests/old").mock(
        return_value=httpx.Response(
            200,
            content=body,
            headers={"Content-Type": "application/vnd.docker.distribution.manifest.v1+prettyjws"},
        )
    )
    async with client(auth=None) as c:
        image = await c.image("a", "old")
    assert image.labels == {"k": "v"}
    assert image.architecture == "arm64"
    assert image.created == datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone.utc)
    assert image.size is None
    assert image.digest == _sha(body)


async def test_expired_tokens_are_swept(mock, monkeypatch):
    tokens = TokenServer(expires_in=60)
    mock.get(REALM).mock(side_effect=tokens)

    def registry(request: httpx.Request) -> httpx.Response:
        if request.headers.get("Authorization", "").startswith("Bearer t"):
            return httpx.Response(200, json={"tags": []})
        name = request.url.path.split("/")[2]
        return unauthorized(f"repository:{name}:pull")

    mock.get(url__regex=rf"{REGISTRY}/v2/\w+/tags/list").mock(side_effect=registry)
    clock = {"now": 1000.0}
    monkeypatch.setattr("r2d_core.registry.auth.time.monotonic", lambda: clock["now"])
    auth = RegistryAuth("alice", "s3cret-pw", token_realm_hosts=[AUTH_HOST])
    auth.max_tokens = 2
    async with client(auth=auth) as c:
        await c.tags("a")
        await c.tags("b")
        clock["now"] += 120  # both expired
        await c.tags("c")
    assert [key[2] for key in auth._tokens] == ["repository:c:pull"]
    assert [key[2] for key in auth._locks] == ["repository:c:pull"]
