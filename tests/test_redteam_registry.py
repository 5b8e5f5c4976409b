"""Red team: the registry is an untrusted remote server (issue 9's rule for every remote).

A hostile registry (:mod:`tests.harness.hostile_registry`, loopback, free port) attacks the
service's registry client: endless and looping pagination, huge and never-ending bodies, a slow
drip, 100 000 deep JSON, wrong-typed fields, content not matching its digest, a token realm on a
foreign host, redirects. Each must end in an :class:`~r2d_core.errors.R2DError` with a message (so
the HTTP layer answers 502/503, never 500), quickly, with memory bounded, and with no credentials
sent anywhere but the registry.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time

import httpx
import pytest
import respx

from r2d_core.errors import R2DError, UpstreamError, http_status
from r2d_core.registry import RegistryAuth, RegistryClient
from r2d_core.registry.auth import RegistryAuthError
from tests.harness.hostile_registry import DOCKER_MANIFEST, HostileRegistry, deep_json, sha256

BASIC = "Basic " + base64.b64encode(b"svc:s3cret-pw").decode()


@pytest.fixture
def registry():
    with HostileRegistry() as server:
        yield server


@pytest.fixture
def foreign():
    """A second server on another loopback address: a host that is not the registry."""
    with HostileRegistry(host="127.0.0.2") as server:
        yield server


def client(server: HostileRegistry, **kwargs) -> RegistryClient:
    kwargs.setdefault("auth", RegistryAuth("svc", "s3cret-pw"))
    kwargs.setdefault("timeout", 2.0)
    return RegistryClient(server.url, **kwargs)


async def bounded(awaitable, seconds: float = 20.0):
    """The attack's outcome within ``seconds`` (a hang fails the test instead of the suite)."""
    return await asyncio.wait_for(awaitable, seconds)


def refused(error: BaseException) -> None:
    """What every attack must end in: one of our errors, mapped to a 5xx other than 500."""
    assert isinstance(error, R2DError), repr(error)
    assert http_status(error) != 500, error


# ---- pagination --------------------------------------------------------------------------------
async def test_endless_link_pagination_stops_at_the_entry_cap(registry):
    """Every page names a fresh next page: the client stops at its entry cap, not never."""

    @registry.route("GET", r"^/v2/_catalog$")
    def pages(h, match):
        n = int(h.path.rsplit("=", 1)[-1]) if "last=" in h.path else 0
        names = [f"r2d-x{n * 100 + i}" for i in range(100)]
        h.send_json(
            {"repositories": names}, headers={"Link": f'</v2/_catalog?last={n + 1}>; rel="next"'}
        )

    async with client(registry) as c:
        c.max_list_entries = 5000  # the default (100 000) is as good, and slower to reach
        started = time.monotonic()
        with pytest.raises(UpstreamError) as info:
            await bounded(c.catalog())
    refused(info.value)
    assert "entries" in str(info.value)
    pages_read = len(registry.seen("GET", "/v2/_catalog"))
    assert pages_read <= c.max_list_entries // 100 + 1
    assert time.monotonic() - started < 15


async def test_pagination_cycle_between_two_cursors_ends(registry):
    """A cursor that alternates a -> b -> a ... (the seen set ends it: already safe)."""

    @registry.route("GET", r"^/v2/r2d-a/tags/list$")
    def pages(h, match):
        nxt = "b" if h.path.endswith("=a") else "a"
        h.send_json(
            {"tags": [f"t{len(registry.requests)}"]},
            headers={"Link": f'</v2/r2d-a/tags/list?last={nxt}>; rel="next"'},
        )

    async with client(registry) as c:
        tags = await bounded(c.tags("r2d-a"))
    assert len(tags) <= 3


async def test_next_link_to_another_host_is_refused(registry, foreign):
    @registry.route("GET", r"^/v2/_catalog$")
    def page(h, match):
        h.send_json(
            {"repositories": ["r2d-a"]},
            headers={"Link": f'<{foreign.url}/v2/_catalog>; rel="next"'},
        )

    async with client(registry) as c:
        with pytest.raises(UpstreamError):
            await c.catalog()
    assert foreign.requests == []


# ---- size --------------------------------------------------------------------------------------
async def test_huge_tag_list_page_is_refused_without_reading_it_all(registry):
    """One 64 MiB page (distribution ignores ``n`` on tag lists, so one page can be all tags)."""
    chunk = b'"' + b"t" * 60 + b'",'

    @registry.route("GET", r"^/v2/r2d-a/tags/list$")
    def huge(h, match):
        h.stream([b'{"tags":['] + [chunk * 16384] * 64 + [b'"x"]}'])

    async with client(registry) as c:
        with pytest.raises(UpstreamError) as info:
            await bounded(c.tags("r2d-a"))
    refused(info.value)
    assert "larger than" in str(info.value)
    assert registry.sent < 48 * 1024 * 1024  # the client hung up early


async def test_never_ending_manifest_body_is_cut(registry):
    @registry.route("GET", r"^/v2/r2d-a/manifests/")
    def endless(h, match):
        h.stream(iter(lambda: b" " * 65536, None))

    async with client(registry) as c:
        with pytest.raises(UpstreamError) as info:
            await bounded(c.manifest("r2d-a", "latest"))
    refused(info.value)
    assert registry.sent < 64 * 1024 * 1024


async def test_never_ending_blob_is_cut_at_its_limit(registry):
    @registry.route("GET", r"^/v2/r2d-a/blobs/")
    def endless(h, match):
        h.stream(iter(lambda: b"\0" * 65536, None))

    async with client(registry) as c:
        with pytest.raises(UpstreamError):
            await bounded(c.blob("r2d-a", "sha256:" + "0" * 64, max_bytes=1024 * 1024))
    assert registry.sent < 32 * 1024 * 1024


# ---- time --------------------------------------------------------------------------------------
async def test_slow_drip_hits_the_total_deadline(registry):
    """A byte every 0.2 s: no read phase ever times out, the request as a whole must."""
    registry.put_image("r2d-a", "v1")

    @registry.route("GET", r"^/v2/r2d-a/manifests/v1$")
    def drip(h, match):
        h.drip(b'{"schemaVersion": 2' + b" " * 400 + b"}", interval=0.2)

    async with client(registry, timeout=1.0) as c:
        started = time.monotonic()
        with pytest.raises(R2DError) as info:
            await bounded(c.manifest("r2d-a", "v1"), 60)
        elapsed = time.monotonic() - started
    refused(info.value)
    assert elapsed < 10, elapsed
    assert "within" in str(info.value)


# ---- JSON that is not what it says -------------------------------------------------------------
@pytest.mark.parametrize("where", ["catalog", "tags", "manifest", "config", "error", "token"])
async def test_deeply_nested_json_is_an_upstream_error(registry, where):
    """100 000 nested arrays: ``json`` raises RecursionError, which no ``except ValueError``
    catches; every parse of registry JSON must turn it into an UpstreamError."""
    deep = deep_json()
    registry.put_image("r2d-a", "v1")
    routes = {
        "catalog": r"^/v2/_catalog$",
        "tags": r"^/v2/r2d-a/tags/list$",
        "manifest": r"^/v2/r2d-a/manifests/v1$",
        "config": r"^/v2/r2d-a/blobs/",
        "error": r"^/v2/r2d-a/manifests/v1$",
        "token": r"^/token$",
    }

    @registry.route("*", routes[where])
    def nested(h, match):
        if where == "error":
            h.send(404, deep)
        elif where == "config":
            h.send(200, deep, {"Docker-Content-Digest": sha256(deep)})
        else:
            h.send(200, deep)

    if where == "config":
        # a manifest whose config digest is the deep document's (so the digest check passes)
        config_digest = registry.put_blob("r2d-a", deep)
        registry.put_manifest(
            "r2d-a",
            "v1",
            {
                "schemaVersion": 2,
                "mediaType": DOCKER_MANIFEST,
                "layers": [],
                "config": {"mediaType": "x", "digest": config_digest, "size": len(deep)},
            },
            DOCKER_MANIFEST,
        )
    if where == "token":

        @registry.route("GET", r"^/v2/")
        def challenge(h, match):
            h.send(
                401, b"{}", {"WWW-Authenticate": f'Bearer realm="{registry.url}/token",service="r"'}
            )

    async with client(registry) as c:
        if where == "catalog":
            call = c.catalog()
        elif where in ("tags", "token"):
            call = c.tags("r2d-a")
        else:
            call = c.image("r2d-a", "v1")
        with pytest.raises(R2DError) as info:
            await bounded(call)
    refused(info.value)


@pytest.mark.parametrize(
    "manifest",
    [
        {"schemaVersion": 2, "mediaType": ["x"]},
        {"schemaVersion": 2, "mediaType": {"a": 1}, "config": {}},
        {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "layers": 5},
        {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "config": "sha256:x"},
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": 7,
        },
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": {"a": 1},
        },
        {"schemaVersion": 1, "history": [{"v1Compatibility": "[[[]]]"}]},
        {"schemaVersion": 1, "history": [{"v1Compatibility": deep_json(50_000).decode()}]},
        [1, 2, 3],
        "a string",
    ],
    ids=lambda m: json.dumps(m)[:40],
)
async def test_wrong_typed_manifest_fields(registry, manifest):
    registry.put_manifest("r2d-a", "v1", json.dumps(manifest).encode(), DOCKER_MANIFEST)
    async with client(registry) as c:
        try:
            image = await bounded(c.image("r2d-a", "v1"))
        except R2DError as e:
            refused(e)
        else:
            assert image.labels == {}


async def test_wrong_typed_labels_are_strings_or_dropped(registry):
    config = json.dumps({"config": {"Labels": {"a": ["b"], "c": None, "d": 5}}}).encode()
    digest = registry.put_blob("r2d-a", config)
    registry.put_manifest(
        "r2d-a",
        "v1",
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "layers": [],
            "config": {"mediaType": "x", "digest": digest, "size": len(config)},
        },
        DOCKER_MANIFEST,
    )
    async with client(registry) as c:
        image = await c.image("r2d-a", "v1")
    assert all(isinstance(v, str) for v in image.labels.values())


# ---- digests -----------------------------------------------------------------------------------
async def test_manifest_digest_header_of_another_algorithm_is_checked(registry):
    """A ``sha512:`` header not matching the body must not become the cached digest."""
    _, body = registry.put_image("r2d-a", "v1")
    fake = "sha512:" + hashlib.sha512(b"another manifest").hexdigest()

    @registry.route("GET", r"^/v2/r2d-a/manifests/v1$")
    def lying(h, match):
        h.send(200, body, {"Docker-Content-Digest": fake}, content_type=DOCKER_MANIFEST)

    async with client(registry) as c:
        with pytest.raises(UpstreamError):
            await c.manifest("r2d-a", "v1")
        assert c._manifests.get(fake) is None


@pytest.mark.parametrize("algorithm", ["sha512", "md5"])
async def test_blob_of_another_algorithm_is_verified_or_refused(registry, algorithm):
    """Content the client cannot check against its digest is refused (sha512 is checked)."""
    data = b"the real log"
    digest = f"{algorithm}:" + hashlib.new(algorithm, b"something else").hexdigest()

    @registry.route("GET", r"^/v2/r2d-a/blobs/")
    def blob(h, match):
        h.send(200, data, content_type="application/octet-stream")

    async with client(registry) as c:
        with pytest.raises(UpstreamError):
            await c.blob("r2d-a", digest, max_bytes=1024)


async def test_sha512_blob_that_matches_is_accepted(registry):
    data = b"the real log"
    digest = "sha512:" + hashlib.sha512(data).hexdigest()

    @registry.route("GET", r"^/v2/r2d-a/blobs/")
    def blob(h, match):
        h.send(200, data, content_type="application/octet-stream")

    async with client(registry) as c:
        assert await c.blob("r2d-a", digest, max_bytes=1024) == data


async def test_config_blob_not_matching_a_sha512_digest_is_refused(registry):
    config = json.dumps({"config": {"Labels": {"owner": "mallory"}}}).encode()
    fake = "sha512:" + hashlib.sha512(b"the real config").hexdigest()
    registry.put_manifest(
        "r2d-a",
        "v1",
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "layers": [],
            "config": {"mediaType": "x", "digest": fake, "size": len(config)},
        },
        DOCKER_MANIFEST,
    )

    @registry.route("GET", r"^/v2/r2d-a/blobs/")
    def blob(h, match):
        h.send(200, config, content_type="application/octet-stream")

    async with client(registry) as c:
        with pytest.raises(UpstreamError):
            await c.image("r2d-a", "v1")


# ---- the token realm ---------------------------------------------------------------------------
async def test_token_realm_on_a_foreign_host_gets_no_credentials(registry, foreign):
    """A registry naming another host as its token server: no request goes there, credentials
    least of all, and the error says how to allow a real token server."""

    @registry.route("*", r"^/v2/")
    def challenge(h, match):
        h.send(
            401,
            b"{}",
            {
                "WWW-Authenticate": f'Bearer realm="{foreign.url}/token",service="r",scope="repository:r2d-a:pull"'
            },
        )

    async with client(registry) as c:
        with pytest.raises(RegistryAuthError) as info:
            await c.tags("r2d-a")
    refused(info.value)
    assert "token_realm_hosts" in str(info.value)
    assert foreign.requests == []


async def test_token_realm_on_an_allowed_host_is_used(registry, foreign):
    @registry.route("*", r"^/v2/")
    def challenge(h, match):
        if h.headers.get("Authorization") == "Bearer t1":
            return h.send_json({"name": "r2d-a", "tags": ["v1"]})
        h.send(401, b"{}", {"WWW-Authenticate": f'Bearer realm="{foreign.url}/token",service="r"'})

    @foreign.route("GET", r"^/token$")
    def token(h, match):
        h.send_json({"token": "t1"})

    auth = RegistryAuth("svc", "s3cret-pw", token_realm_hosts=["127.0.0.2"])
    async with client(registry, auth=auth) as c:
        assert await c.tags("r2d-a") == ["v1"]
    [asked] = foreign.requests
    assert asked.authorization == BASIC


async def test_token_realm_on_the_registry_host_is_used(registry):
    """Another port of the registry's own host (a token server next to it) is the registry's."""
    with HostileRegistry() as tokens:

        @registry.route("*", r"^/v2/")
        def challenge(h, match):
            if h.headers.get("Authorization") == "Bearer t1":
                return h.send_json({"name": "r2d-a", "tags": ["v1"]})
            h.send(
                401, b"{}", {"WWW-Authenticate": f'Bearer realm="{tokens.url}/token",service="r"'}
            )

        @tokens.route("GET", r"^/token$")
        def token(h, match):
            h.send_json({"token": "t1"})

        async with client(registry) as c:
            assert await c.tags("r2d-a") == ["v1"]


@pytest.mark.parametrize(
    "realm",
    [
        "http://registry.test/token",  # a downgrade from https: credentials in clear text
        "https://169.254.169.254/latest/meta-data/",
        "https://registry.test.evil.example/token",
        "https://evil.example/token",
    ],
)
async def test_token_realm_downgrades_and_foreign_hosts_are_refused(realm):
    with respx.mock(assert_all_called=False) as mock:
        tokens = mock.get(url__startswith=realm.split("?")[0]).mock(
            return_value=httpx.Response(200, json={"token": "t"})
        )
        mock.get("https://registry.test/v2/r2d-a/tags/list").mock(
            return_value=httpx.Response(
                401, headers={"WWW-Authenticate": f'Bearer realm="{realm}",service="r"'}
            )
        )
        auth = RegistryAuth("svc", "s3cret-pw")
        # respx intercepts httpx's own connection pool only (the default pool is aiohttp's)
        async with RegistryClient("https://registry.test", auth=auth, http_pool="httpx") as c:
            with pytest.raises(RegistryAuthError):
                await c.tags("r2d-a")
        assert not tokens.called


def test_docker_hub_token_server_is_known():
    """Docker Hub's realm (auth.docker.io) is not its API host: a built-in pair."""
    auth = RegistryAuth()
    assert auth.realm_allowed(
        httpx.URL("https://registry-1.docker.io/v2/"), httpx.URL("https://auth.docker.io/token")
    )
    assert not auth.realm_allowed(
        httpx.URL("https://ghcr.io/v2/"), httpx.URL("https://auth.docker.io/token")
    )


# ---- redirects ---------------------------------------------------------------------------------
async def test_manifest_redirect_is_not_followed(registry, foreign):
    registry.put_image("r2d-a", "v1")

    @registry.route("GET", r"^/v2/r2d-a/manifests/")
    def away(h, match):
        h.send(307, headers={"Location": f"{foreign.url}{h.path}"})

    async with client(registry) as c:
        with pytest.raises(UpstreamError) as info:
            await c.manifest("r2d-a", "v1")
    refused(info.value)
    assert "redirect" in str(info.value)
    assert foreign.requests == []


async def test_blob_redirect_to_storage_is_followed_without_credentials(registry, foreign):
    """S3-style: the registry answers a blob GET with 307 to object storage on another host.
    Followed (that is how distribution with S3 serves blobs), with no Authorization header, and
    the content is checked against its digest all the same."""
    data = b"a log blob"
    digest = sha256(data)

    @registry.route("*", r"^/v2/")
    def basic(h, match):
        if h.headers.get("Authorization") != BASIC:
            return h.send(401, b"{}", {"WWW-Authenticate": 'Basic realm="r"'})
        h.send(307, headers={"Location": f"{foreign.url}/bucket/{digest}?X-Amz-Signature=abc"})

    @foreign.route("GET", r"^/bucket/")
    def storage(h, match):
        h.send(
            200,
            data if "good" in h.headers.get("x-test", "good") else b"x",
            content_type="application/octet-stream",
        )

    # the storage is on a loopback address: an internal network, which the admin allows
    async with client(registry, redirect_networks=["127.0.0.2/32"]) as c:
        assert await c.blob("r2d-a", digest, max_bytes=1024) == data
    [fetched] = foreign.requests
    assert fetched.authorization is None


@pytest.mark.parametrize("target", ["foreign", "metadata", "unresolvable"])
async def test_blob_redirect_to_an_internal_address_is_not_sent(registry, foreign, target):
    """A hostile registry redirects a blob download into the service's own network (another
    loopback service, the cloud metadata address, a name that does not resolve): refused before
    anything is sent there, unless c.Registry.redirect_networks allows that network."""
    location = {
        "foreign": f"{foreign.url}/bucket/x",
        "metadata": "http://169.254.169.254/latest/meta-data/iam/",
        "unresolvable": "http://r2d-no-such-host.invalid/bucket/x",
    }[target]

    @registry.route("GET", r"^/v2/r2d-a/blobs/")
    def redirect(h, match):
        h.send(307, headers={"Location": location})

    @foreign.route("GET", r"^/bucket/")
    def storage(h, match):
        h.send(200, b"secret of an internal service")

    async with client(registry) as c:
        with pytest.raises(UpstreamError) as info:
            await bounded(c.blob("r2d-a", "sha256:" + "0" * 64, max_bytes=1024))
    refused(info.value)
    assert "c.Registry.redirect_networks" in str(info.value)
    assert foreign.requests == []
    # another network allowed is not this one
    async with client(registry, redirect_networks=["10.0.0.0/8"]) as c:
        with pytest.raises(UpstreamError):
            await bounded(c.blob("r2d-a", "sha256:" + "0" * 64, max_bytes=1024))
    assert foreign.requests == []


async def test_blob_redirect_within_the_registry_is_followed(registry):
    """A redirect to the registry's own origin (a mirror path) is not a hop elsewhere."""
    data = b"a blob"
    digest = sha256(data)

    @registry.route("GET", r"^/v2/r2d-a/blobs/")
    def redirect(h, match):
        h.send(307, headers={"Location": f"{registry.url}/storage/{digest}"})

    @registry.route("GET", r"^/storage/")
    def storage(h, match):
        h.send(200, data, content_type="application/octet-stream")

    async with client(registry) as c:
        assert await c.blob("r2d-a", digest, max_bytes=1024) == data


async def test_blob_redirect_loop_ends(registry):
    @registry.route("GET", r"^/v2/r2d-a/blobs/")
    def loop(h, match):
        h.send(307, headers={"Location": h.path})

    async with client(registry) as c:
        with pytest.raises(UpstreamError):
            await bounded(c.blob("r2d-a", "sha256:" + "0" * 64, max_bytes=1024))
    assert len(registry.seen("GET", "/blobs/")) <= 10


# ---- error bodies ------------------------------------------------------------------------------
async def test_error_text_from_the_registry_is_cut_and_has_no_control_characters(registry):
    @registry.route("GET", r"^/v2/r2d-a/tags/list$")
    def error(h, match):
        message = "line one\r\nINFO forged log line\x1b[31m" + "x" * 5000
        h.send_json({"errors": [{"code": "DENIED", "message": message}]}, 418)

    async with client(registry) as c:
        with pytest.raises(UpstreamError) as info:
            await c.tags("r2d-a")
    text = str(info.value)
    assert "\n" not in text and "\r" not in text and "\x1b" not in text
    assert len(text) < 600


async def test_never_ending_token_answer_is_cut(registry):
    @registry.route("*", r"^/v2/")
    def challenge(h, match):
        h.send(401, b"{}", {"WWW-Authenticate": f'Bearer realm="{registry.url}/token",service="r"'})

    @registry.route("GET", r"^/token$")
    def endless(h, match):
        h.stream(iter(lambda: b'{"token": "' + b"t" * 65536, None))

    async with client(registry) as c:
        with pytest.raises(UpstreamError) as info:
            await bounded(c.tags("r2d-a"))
    assert "larger than" in str(info.value)
    assert registry.sent < 64 * 1024 * 1024


async def test_never_ending_401_body_is_cut(registry):
    """httpx reads a 401 whole before the auth flow's next request: bounded too."""

    @registry.route("*", r"^/v2/")
    def challenge(h, match):
        h.stream(
            iter(lambda: b" " * 65536, None),
            status=401,
            headers={"WWW-Authenticate": 'Basic realm="r"'},
        )

    async with client(registry) as c:
        with pytest.raises(UpstreamError):
            await bounded(c.tags("r2d-a"))
    assert registry.sent < 64 * 1024 * 1024


async def test_compressed_answer_is_refused(registry):
    """A gzip body inflating 1000:1 would get past a byte limit counted on the wire."""
    import gzip as gz

    bomb = gz.compress(b" " * (64 * 1024 * 1024))

    @registry.route("GET", r"^/v2/r2d-a/tags/list$")
    def compressed(h, match):
        h.send(200, bomb, {"Content-Encoding": "gzip"})

    async with client(registry) as c:
        with pytest.raises(UpstreamError) as info:
            await c.tags("r2d-a")
    assert "compressed" in str(info.value)
    assert registry.seen("GET")[-1].headers.get("accept-encoding") == "identity"


async def test_upload_redirect_is_not_followed(registry, foreign):
    """A 307 to a PUT of our record would send its bytes to another host."""

    @registry.route("PUT", r"^/v2/r2d-a/manifests/")
    def away(h, match):
        h.send(307, headers={"Location": f"{foreign.url}{h.path}"})

    async with client(registry) as c:
        with pytest.raises(UpstreamError):
            await c.put_manifest(
                "r2d-a", "r2d-listing", b"{}", "application/vnd.oci.image.manifest.v1+json"
            )
    assert foreign.requests == []


async def test_invalid_names_in_the_catalog_and_tag_lists_are_left_out(registry):
    """Names the distribution grammar refuses (``../x``, upper case, a digest as a tag) would
    make the next request a 400 of ours: left out of the lists instead."""
    registry.put_image("r2d-a", "v1")

    @registry.route("GET", r"^/v2/_catalog$")
    def catalog(h, match):
        h.send_json({"repositories": ["r2d-a", "../../etc", "r2d-A", "r2d-a/" + "x" * 300, 5]})

    @registry.route("GET", r"^/v2/r2d-a/tags/list$")
    def tags(h, match):
        h.send_json({"tags": ["v1", "bad tag", "a/b", "sha256:" + "0" * 64, "-x", None]})

    async with client(registry) as c:
        assert await c.catalog() == ["r2d-a"]
        assert await c.tags("r2d-a") == ["v1"]
        images = await c.list_images("r2d-")
    assert [(i.repository, i.tag) for i in images] == [("r2d-a", "v1")]


async def test_megabytes_of_labels_are_not_cached(registry):
    """A config with 3 MiB of labels: summaries are cached per digest (10 000 of them), so such
    labels would fill memory through the cache; an image with more than 64 KiB of label text
    has none (and so is nobody's)."""
    labels = {f"l{i}": "x" * 1024 for i in range(3000)}
    registry.put_image("r2d-a", "v1", labels)
    registry.put_image("r2d-a", "v2", {"small": "yes"})
    async with client(registry) as c:
        assert (await c.image("r2d-a", "v1")).labels == {}
        assert (await c.image("r2d-a", "v2")).labels == {"small": "yes"}


@pytest.mark.parametrize("value", ["9" * 400, "Fri, 31 Dec 9999 23:59:59 GMT"])
async def test_an_absurd_retry_after_is_clamped(registry, value):
    """``Retry-After: 999...9`` (400 digits) is float('inf'): the service's own answer writes
    ``int(retry_after)`` into its Retry-After header (an OverflowError there is a 500)."""

    @registry.route("GET", r"^/v2/r2d-a/tags/list$")
    def slow_down(h, match):
        h.send(429, b"{}", {"Retry-After": value})

    async with client(registry) as c:
        with pytest.raises(R2DError) as info:
            await c.tags("r2d-a")
    retry = info.value.retry_after
    assert retry is not None and 0 < retry <= 86400
    int(retry)
    json.dumps(info.value.retry_after, allow_nan=False)


async def test_a_token_that_is_no_header_value_is_refused_clearly(registry):
    @registry.route("*", r"^/v2/")
    def challenge(h, match):
        h.send(401, b"{}", {"WWW-Authenticate": f'Bearer realm="{registry.url}/token",service="r"'})

    @registry.route("GET", r"^/token$")
    def token(h, match):
        h.send_json({"token": "abc\r\nX-Injected: 1", "expires_in": 1e400})

    async with client(registry) as c:
        with pytest.raises(UpstreamError) as info:
            await c.tags("r2d-a")
    assert "not a valid header value" in str(info.value)
