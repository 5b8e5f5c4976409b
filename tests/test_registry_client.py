"""RegistryClient against a real docker-registry 2.8 (anonymous, htpasswd and token auth)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections import Counter
from datetime import datetime, timezone

import httpx
import pytest

from r2d_core.errors import NotFound, Unavailable
from r2d_core.registry import RegistryAuth, RegistryAuthError, RegistryClient
from r2d_core.registry.models import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from tests.harness.registry import Grant, RegistryServer
from tests.registry_fixtures import *  # noqa: F403
from tests.registry_fixtures import require_registry_binary, unique

pytestmark = pytest.mark.registry


class Recorder:
    """Counts every request a client sends, by ``METHOD kind`` (kind: the API endpoint)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.urls: list[httpx.URL] = []

    async def __call__(self, request: httpx.Request) -> None:
        self.calls.append((request.method, request.url.path))
        self.urls.append(request.url)

    def kinds(self) -> Counter[str]:
        counted: Counter[str] = Counter()
        for method, path in self.calls:
            if path.endswith("/tags/list"):
                kind = "tags"
            elif "/manifests/" in path:
                kind = "manifest"
            elif "/blobs/" in path:
                kind = "blob"
            elif path == "/v2/_catalog":
                kind = "catalog"
            elif path == "/token":
                kind = "token"
            else:
                kind = path
            counted[f"{method} {kind}"] += 1
        return counted

    def reset(self) -> None:
        self.calls.clear()
        self.urls.clear()


def client_for(server: RegistryServer, user: str | None = None, **kwargs: object) -> RegistryClient:
    auth = RegistryAuth(user, server.users[user]) if user else RegistryAuth()
    return RegistryClient(server.url, auth=auth, **kwargs)  # type: ignore[arg-type]


# ---- anonymous registry: the API itself -----------------------------------------------------------
async def test_ping_catalog_tags(registry_anonymous):
    repo = unique()
    async with registry_anonymous.pusher() as pusher:
        for tag in ("b", "a", "c"):
            await pusher.push_image(repo, tag)
    async with client_for(registry_anonymous) as client:
        await client.ping()
        assert await client.catalog(prefix=repo) == [repo]
        assert repo in await client.catalog()
        assert sorted(await client.tags(repo)) == ["a", "b", "c"]
        assert client.host == registry_anonymous.host


async def test_pagination_with_one_entry_per_page():
    require_registry_binary()
    recorder = Recorder()
    with RegistryServer("anonymous") as server:
        repos = [f"r2d-alice-p{i}" for i in range(4)]
        async with server.pusher() as pusher:
            for repo in repos:
                await pusher.push_image(repo, "v1")
            for tag in ("t1", "t2", "t3"):
                await pusher.push_image(repos[0], tag)
        async with client_for(server, page_size=1, event_hooks={"request": [recorder]}) as client:
            assert await client.catalog() == repos
            # one page per repository, plus possibly an empty last page
            assert recorder.kinds()["GET catalog"] >= 4
            assert recorder.urls[0].params["n"] == "1"
            # distribution 2.8 ignores n= on tag lists (all tags, unsorted, no Link): tag
            # pagination is covered with respx in test_registry_respx.py
            assert sorted(await client.tags(repos[0])) == ["t1", "t2", "t3", "v1"]
            assert await client.catalog(prefix="r2d-alice-p3") == ["r2d-alice-p3"]


@pytest.mark.parametrize("oci", [False, True], ids=["docker-v2", "oci"])
async def test_image_details(registry_anonymous, oci):
    repo = unique()
    labels = {"repo2docker.repo": "https://example.org/x.git", "repo2docker.ref": "abc"}
    async with registry_anonymous.pusher() as pusher:
        pushed = await pusher.push_image(repo, "v1", labels=labels, oci=oci, layers=2)
    async with client_for(registry_anonymous) as client:
        image = await client.image(repo, "v1")
    assert image.digest == pushed.digest
    assert image.media_type == (OCI_MANIFEST if oci else DOCKER_MANIFEST)
    assert image.labels == labels
    assert image.created == datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=timezone.utc)
    assert image.architecture == "amd64"
    assert image.size == pushed.size
    assert image.reference == f"{registry_anonymous.host}/{repo}:v1"
    assert image.repository == repo and image.tag == "v1"


async def test_index_describes_the_matching_platform(registry_anonymous):
    repo = unique()
    async with registry_anonymous.pusher() as pusher:
        arm = await pusher.push_image(repo, "arm", labels={"p": "arm"}, architecture="arm64")
        amd = await pusher.push_image(repo, "amd", labels={"p": "amd"}, layers=3)
        index_digest = await pusher.push_index(repo, "multi", [arm, amd])
    async with client_for(registry_anonymous) as client:
        manifest = await client.manifest(repo, "multi")
        assert manifest.is_index and len(manifest.manifests) == 2
        image = await client.image(repo, "multi")
    assert image.digest == index_digest
    assert image.media_type == OCI_INDEX
    assert image.labels == {"p": "amd"}
    assert image.architecture == "amd64"
    assert image.size == amd.size


async def test_manifest_by_digest_is_cached(registry_anonymous):
    repo = unique()
    async with registry_anonymous.pusher() as pusher:
        pushed = await pusher.push_image(repo, "v1")
    recorder = Recorder()
    async with client_for(registry_anonymous, event_hooks={"request": [recorder]}) as client:
        first = await client.manifest(repo, pushed.digest)
        second = await client.manifest(repo, pushed.digest)
        assert first is second
        assert first.config is not None and first.config.digest == pushed.config_digest
        assert recorder.kinds()["GET manifest"] == 1
        # by tag it always asks: tags move
        await client.manifest(repo, "v1")
        await client.manifest(repo, "v1")
        assert recorder.kinds()["GET manifest"] == 3


async def test_missing_repository_and_tag(registry_anonymous):
    repo = unique()
    async with registry_anonymous.pusher() as pusher:
        await pusher.push_image(repo, "v1")
    async with client_for(registry_anonymous) as client:
        with pytest.raises(NotFound, match="not found"):
            await client.tags(unique())
        with pytest.raises(NotFound):
            await client.image(repo, "nope")
        with pytest.raises(NotFound):
            await client.delete(repo, "nope")


async def test_list_images_cold_warm_and_revalidated(registry_anonymous):
    prefix = unique() + "-"
    repos = [f"{prefix}{i}" for i in range(3)]
    async with registry_anonymous.pusher() as pusher:
        for repo in repos:
            for tag in ("v1", "v2"):
                await pusher.push_image(repo, tag, labels={"who": f"{repo}:{tag}"})
    recorder = Recorder()
    client = client_for(registry_anonymous, listing_ttl=60, event_hooks={"request": [recorder]})
    async with client:
        images = await client.list_images(prefix)
        assert [(i.repository, i.tag) for i in images] == [
            (r, t) for r in repos for t in ("v1", "v2")
        ]
        assert all(i.labels == {"who": f"{i.repository}:{i.tag}"} for i in images)
        cold = recorder.kinds()
        assert cold == {"GET catalog": 1, "GET tags": 3, "GET manifest": 6, "GET blob": 6}

        recorder.reset()
        assert await client.list_images(prefix) == images
        assert recorder.calls == []  # within listing_ttl: nothing asked

        # revalidate: one conditional GET per tag (If-None-Match: its digest; 304), no config
        client.listing_ttl = 0
        recorder.reset()
        assert await client.list_images(prefix) == images
        assert recorder.kinds() == {"GET catalog": 1, "GET tags": 3, "GET manifest": 6}

        # at most revalidate_batch tag digests re-checked per listing, the oldest check first
        client.revalidate_batch = 2
        recorder.reset()
        assert await client.list_images(prefix) == images
        assert recorder.kinds() == {"GET catalog": 1, "GET tags": 3, "GET manifest": 2}
        first = {p for _m, p in recorder.calls if "/manifests/" in p}
        recorder.reset()
        assert await client.list_images(prefix) == images
        second = {p for _m, p in recorder.calls if "/manifests/" in p}
        assert len(second) == 2 and not first & second  # the next two, not the same again


async def test_moved_tag_shows_after_ttl_or_invalidate(registry_anonymous):
    repo = unique()
    async with registry_anonymous.pusher() as pusher:
        await pusher.push_image(repo, "latest", labels={"v": "1"})
        async with client_for(registry_anonymous, listing_ttl=60) as client:
            (before,) = await client.list_images(repo)
            moved = await pusher.push_image(repo, "latest", labels={"v": "2"}, seed="again")
            await pusher.push_image(repo, "new")
            # within the TTL the listing is what it was...
            assert await client.list_images(repo) == [before]
            # ...but a direct read always asks the registry
            assert (await client.image(repo, "latest")).labels == {"v": "2"}
            client.invalidate(repo)
            after = await client.list_images(repo)
            assert [(i.tag, i.digest, i.labels.get("v")) for i in after] == [
                ("latest", moved.digest, "2"),
                ("new", after[1].digest, None),
            ]
            # with ttl 0 the next move shows without invalidate
            client.listing_ttl = 0
            again = await pusher.push_image(repo, "latest", labels={"v": "3"}, seed="third")
            latest = next(i for i in await client.list_images(repo) if i.tag == "latest")
            assert (latest.digest, latest.labels) == (again.digest, {"v": "3"})


@pytest.mark.parametrize("oci", [False, True], ids=["docker-v2", "oci"])
async def test_delete(registry_anonymous, oci):
    repo = unique()
    async with registry_anonymous.pusher() as pusher:
        keep = await pusher.push_image(repo, "keep", oci=oci, seed="k")
        gone = await pusher.push_image(repo, "gone", oci=oci, seed="g")
    async with client_for(registry_anonymous, listing_ttl=60) as client:
        assert len(await client.list_images(repo)) == 2
        assert await client.delete(repo, "gone") == gone.digest
        # our own delete shows at once despite the TTL
        assert [i.tag for i in await client.list_images(repo)] == ["keep"]
        assert await client.tags(repo) == ["keep"]
        with pytest.raises(NotFound):
            await client.image(repo, "gone")
        assert await client.delete(repo, "keep") == keep.digest
        # the registry answers "tags": null now, and its catalog still names the repository
        assert await client.tags(repo) == []
        assert repo in await client.catalog(repo)
        assert await client.list_images(repo) == []


async def test_delete_disabled_says_how_to_enable_it():
    require_registry_binary()
    with RegistryServer("anonymous", delete_enabled=False) as server:
        async with server.pusher() as pusher:
            await pusher.push_image("r2d-alice-x", "v1")
        async with client_for(server) as client:
            with pytest.raises(RegistryAuthError, match=r"storage\.delete\.enabled"):
                await client.delete("r2d-alice-x", "v1")
            assert await client.tags("r2d-alice-x") == ["v1"]


# ---- failures of the peer ---------------------------------------------------------------------------
async def test_unreachable_registry_is_unavailable():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once closed
    async with RegistryClient(f"http://127.0.0.1:{port}", timeout=2) as client:
        with pytest.raises(Unavailable, match=r"cannot reach .*R2D_REGISTRY_URL"):
            await client.ping()


async def test_silent_registry_times_out():
    # a socket that accepts connections (backlog) but never answers
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        port = sock.getsockname()[1]
        async with RegistryClient(f"http://127.0.0.1:{port}", timeout=0.3) as client:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(Unavailable, match=r"did not answer within 0.3s"):
                await client.tags("r2d-alice-x")
            assert loop.time() - started < 3


async def test_deadline_for_python_310_times_out_and_passes_other_cancels_on():
    # the per-request deadline where asyncio.timeout is missing (Python 3.10)
    from r2d_core.registry.client import _deadline_compat

    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(asyncio.TimeoutError):
        async with _deadline_compat(0.05):
            await asyncio.sleep(5)
    assert loop.time() - started < 2
    async with _deadline_compat(5):
        await asyncio.sleep(0)  # within the deadline: nothing raised, the timer is cancelled

    async def block() -> None:
        async with _deadline_compat(5):
            await asyncio.sleep(5)

    task = asyncio.ensure_future(block())
    await asyncio.sleep(0.01)
    task.cancel()  # a cancel from outside stays a cancel, not a timeout
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_parsed_urls_kept_are_bounded_and_by_name_only():
    async with RegistryClient("http://127.0.0.1:1", cache_size=3) as client:
        for i in range(5):
            url = client._absolute(f"/v2/r2d-alice-x{i}/manifests/v1")
            assert str(url) == f"http://127.0.0.1:1/v2/r2d-alice-x{i}/manifests/v1"
        client._absolute("/v2/r2d-alice-x/blobs/sha256:" + "0" * 64)
        kept = client._urls.keys()
        assert kept == [f"/v2/r2d-alice-x{i}/manifests/v1" for i in (2, 3, 4)]


async def test_registry_stopped_mid_list():
    require_registry_binary()
    with RegistryServer("anonymous") as server:
        async with server.pusher() as pusher:
            for i in range(3):
                await pusher.push_image(f"r2d-alice-m{i}", "v1")
        stopped = threading.Event()

        async def stop_after_first_page(response: httpx.Response) -> None:
            if response.url.path == "/v2/_catalog" and not stopped.is_set():
                stopped.set()
                server.stop()

        async with client_for(
            server, page_size=1, event_hooks={"response": [stop_after_first_page]}
        ) as client:
            with pytest.raises(Unavailable, match="cannot reach the registry"):
                await client.list_images()
            assert stopped.is_set()
            server.start()  # same port, same data: the same client recovers
            assert len(await client.list_images()) == 3


# ---- htpasswd -------------------------------------------------------------------------------------------
async def test_htpasswd_basic_auth(registry_htpasswd):
    repo = unique()
    async with registry_htpasswd.pusher() as pusher:
        await pusher.push_image(repo, "v1", labels={"a": "b"})
    recorder = Recorder()
    async with client_for(
        registry_htpasswd, "alice", event_hooks={"request": [recorder]}
    ) as client:
        await client.ping()
        assert recorder.kinds()["GET /v2/"] == 2  # bare, then with the basic credentials
        recorder.reset()
        (image,) = await client.list_images(repo)
        assert image.labels == {"a": "b"}
        # the scheme is remembered: every request carries the credentials up front
        assert recorder.kinds() == {
            "GET catalog": 1,
            "GET tags": 1,
            "GET manifest": 1,
            "GET blob": 1,
        }


async def test_htpasswd_without_credentials(registry_htpasswd):
    async with client_for(registry_htpasswd) as client:
        with pytest.raises(RegistryAuthError, match=r"requires credentials.*c\.Registry\.username"):
            await client.ping()


async def test_htpasswd_wrong_password_is_not_leaked(registry_htpasswd):
    secret = "wrong-password-xyz"
    auth = RegistryAuth("alice", secret)
    async with RegistryClient(registry_htpasswd.url, auth=auth) as client:
        with pytest.raises(RegistryAuthError) as caught:
            await client.catalog()
        assert "refused user 'alice'" in str(caught.value)
        assert secret not in str(caught.value) and secret not in repr(caught.value)
        assert secret not in repr(auth) and secret not in repr(client)
        assert "password=***" in repr(auth)


# ---- token auth -----------------------------------------------------------------------------------------
async def test_token_auth_admin_lists_everything(registry_token):
    repo = unique("bob")
    async with registry_token.pusher() as pusher:
        await pusher.push_image(repo, "v1", labels={"x": "y"})
    issuer = registry_token.issuer
    before = issuer.fetches()
    async with client_for(registry_token, "admin") as client:
        await client.ping()
        (image,) = await client.list_images(repo)
        assert image.labels == {"x": "y"}
        assert await client.delete(repo, "v1") == image.digest
    scopes = {s for _, ss in issuer.requests[before:] for s in ss}
    assert {"registry:catalog:*", f"repository:{repo}:pull", f"repository:{repo}:delete"} <= scopes
    assert all(user == "admin" for user, _ in issuer.requests[before:])


async def test_token_scopes_follow_the_permission_table(registry_token):
    mine, bobs = unique("alice"), unique("bob")
    async with registry_token.pusher() as pusher:
        await pusher.push_image(mine, "v1")
        await pusher.push_image(bobs, "v1")
    async with client_for(registry_token, "alice") as alice:
        assert await alice.tags(mine) == ["v1"]
        with pytest.raises(RegistryAuthError, match=r"registry:catalog:\*"):
            await alice.catalog()
        # the registry answers "no access" and "no such repository" alike
        with pytest.raises(NotFound, match="may not access it"):
            await alice.tags(bobs)
    async with client_for(registry_token, "bob") as bob:
        assert await bob.tags(mine) == ["v1"]  # bob may pull alice's images...
        with pytest.raises(RegistryAuthError, match=f"repository:{mine}:delete"):
            await bob.delete(mine, "v1")  # ...but not delete them
        assert await bob.tags(mine) == ["v1"]
    # the table is live: a new grant applies to the next token
    registry_token.permissions.append(Grant("bob", mine, frozenset({"delete"})))
    async with client_for(registry_token, "bob") as bob:
        await bob.delete(mine, "v1")
        assert await bob.tags(mine) == []


async def test_token_anonymous_and_wrong_password(registry_token):
    repo = unique()
    async with registry_token.pusher() as pusher:
        await pusher.push_image(repo, "v1")
    async with client_for(registry_token) as anonymous:
        with pytest.raises(RegistryAuthError, match="requires credentials"):
            await anonymous.catalog()
        with pytest.raises(NotFound, match="needs credentials"):
            await anonymous.tags(repo)
    secret = "not-alices-password"
    async with RegistryClient(registry_token.url, auth=RegistryAuth("alice", secret)) as client:
        with pytest.raises(
            RegistryAuthError, match=r"token server .* refused the credentials"
        ) as e:
            await client.tags(repo)
        assert secret not in str(e.value)


async def test_one_token_fetch_per_scope_under_concurrency():
    require_registry_binary()
    with RegistryServer("token") as server:
        repos = [unique(), unique()]
        async with server.pusher() as pusher:
            for repo in repos:
                await pusher.push_image(repo, "v1")
        issuer = server.issuer
        issuer.delay = 0.2  # every token request overlaps the others
        async with client_for(server, "alice", max_concurrency=32) as client:
            results = await asyncio.gather(*(client.tags(repos[i % 2]) for i in range(20)))
            assert results == [["v1"]] * 20
            for repo in repos:
                assert issuer.fetches(f"repository:{repo}:pull") == 1
            # tokens are per scope: each repository got its own, none was reused for the other
            assert issuer.fetches() == 2
            issuer.delay = 0
            await asyncio.gather(*(client.image(repos[0], "v1") for _ in range(5)))
            assert issuer.fetches() == 2  # cached, still valid


async def test_token_renewed_when_it_expires():
    require_registry_binary()
    with RegistryServer("token") as server:
        repo = unique()
        async with server.pusher() as pusher:
            await pusher.push_image(repo, "v1")
        issuer = server.issuer
        issuer.expires_in = 1  # what clients are told; the JWT itself stays valid
        async with client_for(server, "alice") as client:
            await client.tags(repo)
            await client.tags(repo)
            assert issuer.fetches(f"repository:{repo}:pull") == 1
            await asyncio.sleep(1.1)
            await client.tags(repo)
            assert issuer.fetches(f"repository:{repo}:pull") == 2


async def test_token_with_libtrust_kid():
    require_registry_binary()
    with RegistryServer("token", key_id="kid") as server:
        repo = unique()
        async with server.pusher() as pusher:
            await pusher.push_image(repo, "v1")
        async with client_for(server, "admin") as client:
            assert [i.tag for i in await client.list_images(repo)] == ["v1"]


# ---- the benchmark keeps working ----------------------------------------------------------------
async def test_bench_list_small():
    require_registry_binary()
    from tests.bench_registry import bench_list

    rows = await bench_list(repos=3, tags=2, runs=1)
    assert all(set(r) == {"benchmark", "value", "unit", "target", "note"} for r in rows)
    by_name = {(r["benchmark"], r["unit"]): r["value"] for r in rows}
    cold = "registry: list 6 tags, cold, first ever (no snapshot)"
    full = "registry: list 6 tags, revalidated in full (TTL passed)"
    assert by_name[(cold, "requests")] == 1 + 3 + 6 + 6
    assert by_name[(cold + " [httpx pool, before]", "requests")] == 1 + 3 + 6 + 6
    assert by_name[(full, "requests")] == 1 + 3 + 6
    assert by_name[("registry: list 6 tags, warm (within TTL)", "requests")] == 0
    snapshot = "registry: list 6 tags, cold, new process (snapshot, full revalidation)"
    assert by_name[(snapshot, "requests")] == 1 + 2 + 3 + 6
    batch = "registry: list 6 tags, revalidated, batch 64 (partial: 64 re-checked)"
    assert by_name[(batch, "requests")] == 1 + 3 + 6


async def test_bench_restore_small():
    """``./dev bench archive`` keeps working (it broke once unnoticed: its stand-in for the
    Registry config lacked the timeout the restore's deadline is made of)."""
    require_registry_binary()
    from tests.bench_archive import bench_restore

    rows = await bench_restore(records=4, repos=2, lines=3)
    by_name = {(r["benchmark"], r["unit"]): r["value"] for r in rows}
    assert by_name[("archive: restore 4 records + logs on start", "requests")] == 1 + 2 + 4
    assert by_name[("archive: restore 4 records + logs (3 lines) on start", "ms")] > 0
