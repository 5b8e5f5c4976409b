"""The registry listing's throughput features against a real docker-registry 2.8, in the three
auth modes: both connection pools, one request per shared digest, full revalidation with
conditional requests, snapshots that are stale, forged or kept up to date by the service's own
pushes and deletes. (Timings are in ``./dev bench``, not here: these assert requests and results.)"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
from collections import Counter
from types import SimpleNamespace

import httpx
import pytest

from r2d_core.catalog import ImageCatalog
from r2d_core.errors import Unavailable
from r2d_core.models import LABEL_PREFIX
from r2d_core.registry import Registry, RegistryAuth, RegistryClient
from r2d_core.registry.models import DOCKER_MANIFEST
from r2d_core.registry.snapshot import SNAPSHOT_TAG, read_snapshot, write_snapshot
from tests.harness.registry import RegistryServer
from tests.registry_fixtures import *  # noqa: F403
from tests.registry_fixtures import unique
from tests.test_registry_client import Recorder

pytestmark = pytest.mark.registry


@pytest.fixture
def server(registry_each: RegistryServer) -> RegistryServer:
    return registry_each


def _user(server: RegistryServer) -> str | None:
    # the catalog needs the registry-wide account in token mode
    return {"anonymous": None, "htpasswd": "alice", "token": "admin"}[server.mode]


def _auth(server: RegistryServer) -> RegistryAuth:
    user = _user(server)
    return RegistryAuth(user, server.users[user]) if user else RegistryAuth()


class Statuses:
    """Response status codes by ``METHOD kind`` (what came back, not only what was asked)."""

    def __init__(self) -> None:
        self.seen: Counter[tuple[str, str, int]] = Counter()

    async def __call__(self, response: httpx.Response) -> None:
        path = response.request.url.path
        if path == "/token":
            return  # the token server's answers (token mode)
        kind = "manifest" if "/manifests/" in path else "blob" if "/blobs/" in path else "other"
        self.seen[(response.request.method, kind, response.status_code)] += 1


def _without_auth(kinds: Counter[str]) -> Counter[str]:
    return Counter({k: v for k, v in kinds.items() if not k.endswith(" token")})


async def _push_set(server: RegistryServer, prefix: str, repos: int = 2, tags: int = 2) -> None:
    async with server.pusher() as pusher:
        for r in range(repos):
            for t in range(tags):
                repo = f"{prefix}-{r}"
                await pusher.push_image(repo, f"v{t}", labels={"who": f"{repo}:v{t}"})


@pytest.mark.parametrize("pool", ["aiohttp", "httpx"])
async def test_both_pools_list_the_same_with_the_same_requests(server, pool):
    prefix = unique()
    await _push_set(server, prefix)
    recorder, statuses = Recorder(), Statuses()
    async with RegistryClient(
        server.url,
        auth=_auth(server),
        listing_ttl=60,
        http_pool=pool,
        event_hooks={"request": [recorder], "response": [statuses]},
    ) as client:
        images = await client.list_images(prefix)
        assert [(i.repository, i.tag, i.labels["who"]) for i in images] == [
            (f"{prefix}-{r}", f"v{t}", f"{prefix}-{r}:v{t}") for r in range(2) for t in range(2)
        ]
        cold = _without_auth(recorder.kinds())
        # a 401 that starts the auth flow is sent again with credentials: count the answers
        answered = sum(n for (_m, _k, code), n in statuses.seen.items() if code == 200)
        assert answered == 1 + 2 + 4 + 4
        assert cold["GET blob"] - statuses.seen[("GET", "blob", 401)] == 4
        recorder.reset()
        statuses.seen.clear()
        # full revalidation: one conditional GET per tag, answered 304, no config read again
        client.listing_ttl = 0
        assert await client.list_images(prefix) == images
        assert statuses.seen[("GET", "manifest", 304)] == 4
        assert _without_auth(recorder.kinds())["GET blob"] == 0


async def test_tags_sharing_a_manifest_read_its_config_once(registry_anonymous):
    repo = unique()
    async with registry_anonymous.pusher() as pusher:
        first = await pusher.push_image(repo, "a", labels={"same": "image"})
        async with RegistryClient(registry_anonymous.url) as reader:
            body = await reader.raw_manifest(repo, "a")
        for tag in ("b", "c", "d"):
            assert await pusher.manifest(repo, tag, body, DOCKER_MANIFEST) == first.digest
    recorder = Recorder()
    async with RegistryClient(registry_anonymous.url, event_hooks={"request": [recorder]}) as c:
        images = await c.list_images(repo)
    assert {i.digest for i in images} == {first.digest} and len(images) == 4
    # the four manifests are asked by tag at once; their one config is read once, not four times
    assert recorder.kinds() == {"GET catalog": 1, "GET tags": 1, "GET manifest": 4, "GET blob": 1}


async def test_a_stale_snapshot_is_revalidated_in_full_on_the_first_listing(server):
    prefix = unique()
    await _push_set(server, prefix)
    snapshot_repo = f"{prefix}-snap"
    async with RegistryClient(server.url, auth=_auth(server)) as client:
        await client.list_images(prefix)
        await write_snapshot(client, snapshot_repo)
    # changed by someone else after the snapshot: one tag moved, one deleted, one new
    async with server.pusher() as pusher:
        moved = await pusher.push_image(f"{prefix}-0", "v0", labels={"who": "moved"}, seed="x")
        await pusher.push_image(f"{prefix}-1", "v9", labels={"who": "new"})
    async with RegistryClient(server.url, auth=_auth(server)) as deleter:
        await deleter.delete(f"{prefix}-1", "v1")
    recorder, statuses = Recorder(), Statuses()
    async with RegistryClient(
        server.url,
        auth=_auth(server),
        listing_ttl=60,
        event_hooks={"request": [recorder], "response": [statuses]},
    ) as client:
        assert await read_snapshot(client, snapshot_repo) == 4
        assert not client.listing_changed
        listed = await client.list_images(prefix)
        # right on the first listing, with the default full revalidation (revalidate_batch=0)
        assert [(i.repository, i.tag, i.digest, i.labels["who"]) for i in listed] == [
            (f"{prefix}-0", "v0", moved.digest, "moved"),
            (f"{prefix}-0", "v1", listed[1].digest, f"{prefix}-0:v1"),
            (f"{prefix}-1", "v0", listed[2].digest, f"{prefix}-1:v0"),
            (f"{prefix}-1", "v9", listed[3].digest, "new"),
        ]
        # the 3 tags known to the snapshot: one conditional GET each (2 unchanged: 304; the
        # moved one: 200 with its new manifest); the new tag read in full
        assert statuses.seen[("GET", "manifest", 304)] == 2
        blobs = statuses.seen[("GET", "blob", 200)]
        assert blobs == 1 + 2  # the snapshot itself + the configs of the moved and the new tag
        assert client.listing_changed  # worth rewriting: it is behind the registry
        # a repository the registry's catalog does not have (any more) leaves it too
        client.import_listing(
            [[f"{prefix}-gone", "v0", moved.digest, DOCKER_MANIFEST, {}] + [None] * 3]
        )
        rows = {(r[0], r[1]): r[2] for r in client.export_listing()}
        assert (f"{prefix}-1", "v1") not in rows  # the deleted tag leaves the snapshot
        assert (f"{prefix}-gone", "v0") not in rows
        assert rows[(f"{prefix}-0", "v0")] == moved.digest


async def test_forged_snapshot_rows_are_ignored_or_corrected(server):
    prefix = unique()
    await _push_set(server, prefix, repos=1, tags=2)
    repo = f"{prefix}-0"
    snapshot_repo = f"{prefix}-snap"
    async with RegistryClient(server.url, auth=_auth(server)) as client:
        truth = await client.list_images(prefix)
        rows = client.export_listing()
    # forged: labels of a real digest changed, a tag pointed at another image's digest,
    # a tag the registry does not have, and rows that are no rows
    forged = sorted(list(r) for r in rows if r[0] == repo)  # v0, v1
    forged[0][4] = {"who": "mallory"}
    forged[1][2] = forged[0][2]
    forged.append([repo, "ghost", forged[0][2], DOCKER_MANIFEST, {}, None, None, None])
    forged += [["../x", "t", "sha256:" + "0" * 64, "", {}, None, None, None], "junk", [1, 2]]
    async with RegistryClient(server.url, auth=_auth(server)) as client:
        client.import_listing(forged)
        await write_snapshot(client, snapshot_repo)
    async with RegistryClient(server.url, auth=_auth(server), listing_ttl=60) as client:
        assert await read_snapshot(client, snapshot_repo) == 3  # the 3 well-formed rows
        listed = await client.list_images(prefix)
        # tags and digests are the registry's (the tag pointed elsewhere is revalidated, the
        # ghost is not in its tag list)...
        assert [(i.tag, i.digest) for i in listed] == [(i.tag, i.digest) for i in truth]
        # ...labels of a digest come from the snapshot until it is verified
        assert listed[0].labels == {"who": "mallory"}
        checked, corrected = await client.verify_imported()
        assert (checked, corrected) == (1, 1)
        assert client.listing_changed
        client.listing_ttl = 0
        assert await client.list_images(prefix) == truth
        assert await client.verify_imported() == (0, 0)  # nothing left unverified


# ---- the service's catalog keeps the snapshot up to date -----------------------------------------
class _NoEngine:
    async def list_images(self) -> list[dict[str, object]]:
        return []  # a fresh engine: every image is in the registry only


async def _direct(coro):
    return await coro


def _catalog(server: RegistryServer) -> tuple[ImageCatalog, Registry]:
    user = _user(server)
    registry = Registry(
        url=server.url,
        username=user or "",
        password=server.users[user] if user else "",
        docker_config_path="/nonexistent",
        listing_ttl=0,
    )
    # the snapshot lives in r2d-<owner> (the prefix without its separator) here, where the
    # harness's token server lets the service's account write
    settings = SimpleNamespace(
        image_prefix=f"{server.host}/r2d-",
        image_name_template="{prefix}{owner}-{name}:{sha}",
        image_cache_ttl=0.0,
    )
    catalog = ImageCatalog(
        settings=settings,
        engine=_NoEngine(),
        registry=registry,
        engine_call=_direct,
        log=logging.getLogger("test"),
    )
    catalog.snapshot_delay = 0.0
    return catalog, registry


async def _settled(catalog: ImageCatalog) -> None:
    for _ in range(200):
        task = catalog._snapshot_task
        if task is None or task.done():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the snapshot write did not finish")


def _labels(owner: str, name: str, sha: str) -> dict[str, str]:
    return {
        f"{LABEL_PREFIX}{k}": v
        for k, v in {"owner": owner, "name": name, "sha": sha, "build-id": sha[:12]}.items()
    }


async def _snapshot_rows(reader: RegistryClient) -> list[list]:
    body = await reader.raw_manifest("r2d", SNAPSHOT_TAG)
    layer = json.loads(body)["layers"][0]["digest"]
    return json.loads(gzip.decompress(await reader.blob("r2d", layer, max_bytes=1 << 20)))


async def _snapshot_tags(registry: Registry) -> set[tuple[str, str]]:
    return {(r[0], r[1]) for r in await _snapshot_rows(registry.client())}


async def test_pushes_and_deletes_keep_the_snapshot_current(registry_anonymous):
    # the snapshot repository "r2d" is shared by every test using this prefix: anonymous only
    server = registry_anonymous
    owner = f"snap{unique()[-8:]}"
    repo = f"r2d-{owner}-demo"
    async with server.pusher() as pusher:
        await pusher.push_image(repo, "a" * 40, labels=_labels(owner, "demo", "a" * 40))
    catalog, registry = _catalog(server)
    try:
        await catalog.refresh(force=True)
        await _settled(catalog)
        assert (repo, "a" * 40) in await _snapshot_tags(registry)
        # what a build with push does: push, invalidate the repository, refresh
        async with server.pusher() as pusher:
            await pusher.push_image(repo, "b" * 40, labels=_labels(owner, "demo", "b" * 40))
        registry.client().invalidate(repo)
        await catalog.refresh_quietly()
        await _settled(catalog)
        assert {(repo, "a" * 40), (repo, "b" * 40)} <= await _snapshot_tags(registry)
        # a delete through the service
        result = await catalog.delete_image(owner, "demo", "a" * 40)
        assert result["errors"] == []
        await _settled(catalog)
        tags = await _snapshot_tags(registry)
        assert (repo, "b" * 40) in tags and (repo, "a" * 40) not in tags
    finally:
        catalog.close()
        await registry.aclose()

    # someone with push rights there rewrites the snapshot: the build id label of "b" forged
    async with RegistryClient(server.url) as forger:
        rows = []
        for r in await _snapshot_rows(forger):
            if (r[0], r[1]) == (repo, "b" * 40):
                r[4] = {**r[4], f"{LABEL_PREFIX}build-id": "forged"}
            rows.append(r)
        forger.import_listing(rows)
        await write_snapshot(forger, "r2d")

    # a restarted service: its first listing starts from that snapshot (no manifest or config
    # read for the known tag: one conditional GET, answered 304)...
    catalog, registry = _catalog(server)
    recorder, statuses = Recorder(), Statuses()
    registry.client()._http.event_hooks["request"].append(recorder)
    registry.client()._http.event_hooks["response"].append(statuses)
    try:
        [group] = await catalog.list_images([owner])
        assert [v.tag for v in group.versions] == ["b" * 40]
        ours = [(m, p) for m, p in recorder.calls if p.startswith(f"/v2/{repo}/")]
        assert ours == [
            ("GET", f"/v2/{repo}/tags/list"),
            ("GET", f"/v2/{repo}/manifests/{'b' * 40}"),
        ]
        assert statuses.seen[("GET", "manifest", 304)] >= 1
        assert group.versions[0].build_id == "forged"  # as the snapshot says, for now
        # ...and what the snapshot said is checked in the background, then corrected
        assert catalog._verify_task is not None
        await asyncio.wait_for(catalog._verify_task, 30)
        [group] = await catalog.list_images([owner])
        assert group.versions[0].build_id == ("b" * 40)[:12]
        await _settled(catalog)
        rows = {(r[0], r[1]): r for r in await _snapshot_rows(registry.client())}
        assert rows[(repo, "b" * 40)][4][f"{LABEL_PREFIX}build-id"] == ("b" * 40)[:12]
    finally:
        catalog.close()
        await registry.aclose()


# ---- TLS through either pool -----------------------------------------------------------------------
def _self_signed(directory) -> tuple[str, str]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


@pytest.fixture(scope="module")
def tls_api(tmp_path_factory):
    """A loopback HTTPS server answering ``/v2/`` like a registry, with a self-signed cert."""
    import ssl
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/v2/" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, format: str, *args: object) -> None:
            pass

    cert, key = _self_signed(tmp_path_factory.mktemp("tls"))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{httpd.server_address[1]}", cert
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize("pool", ["aiohttp", "httpx"])
async def test_tls_is_verified_through_either_pool(tls_api, pool):
    url, ca_bundle = tls_api
    async with RegistryClient(url, http_pool=pool, timeout=5) as client:
        with pytest.raises(Unavailable, match="cannot reach"):
            await client.ping()  # a certificate nobody vouches for is refused
    async with RegistryClient(url, http_pool=pool, verify=ca_bundle, timeout=5) as client:
        await client.ping()  # trusted through the configured CA bundle
    async with RegistryClient(url, http_pool=pool, verify=False, timeout=5) as client:
        await client.ping()
