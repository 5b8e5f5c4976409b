"""Registry credentials: Docker config files, credential helpers, and the ``Registry`` traitlets."""

from __future__ import annotations

import base64
import json
import os
import stat

import pytest
from traitlets import TraitError
from traitlets.config import Config

from r2d_core.errors import InvalidRequest, Unavailable
from r2d_core.registry import Registry, RegistryAuthError, credentials_from_docker_config
from r2d_core.registry.dockerconfig import normalize_host
from tests.registry_fixtures import *  # noqa: F403


def write_config(tmp_path, data) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    return str(path)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def helper(tmp_path, name: str, script: str) -> str:
    """A real ``docker-credential-NAME`` program on a PATH directory; returns that directory."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    path = bindir / f"docker-credential-{name}"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(bindir)


@pytest.fixture
def on_path(monkeypatch):
    def add(directory: str) -> None:
        monkeypatch.setenv("PATH", directory + os.pathsep + os.environ["PATH"])

    return add


# ---- Docker config -------------------------------------------------------------------------------------
def test_normalize_host():
    assert normalize_host("https://Reg.Example.org:5000/v1/") == "reg.example.org:5000"
    assert normalize_host("127.0.0.1:5000") == "127.0.0.1:5000"
    for hub in ("https://index.docker.io/v1/", "registry-1.docker.io", "docker.io"):
        assert normalize_host(hub) == "docker.io"


@pytest.mark.parametrize(
    "key", ["127.0.0.1:5000", "http://127.0.0.1:5000", "https://127.0.0.1:5000/v2/"]
)
def test_auths_entry_any_key_form(tmp_path, key):
    path = write_config(tmp_path, {"auths": {key: {"auth": b64("alice:pa:ss")}}})
    assert credentials_from_docker_config("127.0.0.1:5000", path) == ("alice", "pa:ss")
    assert credentials_from_docker_config("127.0.0.1:5001", path) is None


def test_auths_username_password_and_docker_hub(tmp_path):
    path = write_config(
        tmp_path,
        {
            "auths": {
                "reg.example.org": {"username": "bob", "password": "pw"},
                "https://index.docker.io/v1/": {"auth": b64("hubuser:hubpw")},
            }
        },
    )
    assert credentials_from_docker_config("reg.example.org", path) == ("bob", "pw")
    assert credentials_from_docker_config("registry-1.docker.io", path) == ("hubuser", "hubpw")


def test_identity_token_and_missing_or_broken_files(tmp_path, caplog):
    path = write_config(tmp_path, {"auths": {"reg.example.org": {"identitytoken": "abc"}}})
    assert credentials_from_docker_config("reg.example.org", path) is None
    assert "identity token" in caplog.text
    assert credentials_from_docker_config("x", str(tmp_path / "nope.json")) is None
    broken = tmp_path / "broken.json"
    broken.write_text('{"auths": {"x": {"auth": "c2VjcmV0LXZhbHVl"')
    with pytest.raises(Unavailable, match="cannot read the Docker config") as e:
        credentials_from_docker_config("x", str(broken))
    assert "c2VjcmV0" not in str(e.value)
    bad = write_config(tmp_path, {"auths": {"x": {"auth": b64("no-colon")}}})
    with pytest.raises(Unavailable, match="docker login"):
        credentials_from_docker_config("x", bad)


def test_docker_config_env(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(json.dumps({"auths": {"h": {"auth": b64("u:p")}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    assert credentials_from_docker_config("h") == ("u", "p")


def test_cred_helper_wins_over_auths(tmp_path, on_path):
    log = tmp_path / "asked"
    on_path(
        helper(
            tmp_path,
            "r2dtest",
            f'cat > {log}\necho \'{{"ServerURL": "x", "Username": "helper-user", "Secret": "hs"}}\'\n',
        )
    )
    path = write_config(
        tmp_path,
        {
            "auths": {"reg.example.org": {"auth": b64("file-user:fp")}},
            "credHelpers": {"reg.example.org": "r2dtest"},
        },
    )
    assert credentials_from_docker_config("reg.example.org", path) == ("helper-user", "hs")
    assert log.read_text() == "reg.example.org"
    # other hosts do not use that helper
    assert credentials_from_docker_config("other.example.org", path) is None


def test_creds_store_and_fallback(tmp_path, on_path):
    on_path(
        helper(
            tmp_path,
            "store",
            'read server\nif [ "$server" = "known.example.org" ]; then\n'
            '  echo \'{"Username": "s-user", "Secret": "s-pw"}\'\nelse\n'
            '  echo "credentials not found in native keychain"; exit 1\nfi\n',
        )
    )
    path = write_config(
        tmp_path,
        {"credsStore": "store", "auths": {"inline.example.org": {"auth": b64("i:p")}}},
    )
    assert credentials_from_docker_config("known.example.org", path) == ("s-user", "s-pw")
    assert credentials_from_docker_config("inline.example.org", path) == ("i", "p")
    assert credentials_from_docker_config("unknown.example.org", path) is None


def test_helper_failures(tmp_path, on_path):
    on_path(helper(tmp_path, "broken", "echo boom >&2; exit 3\n"))
    on_path(helper(tmp_path, "slow", "sleep 5\n"))
    on_path(helper(tmp_path, "token", 'echo \'{"Username": "<token>", "Secret": "refresh"}\'\n'))
    for name, error, match in [
        ("broken", Unavailable, "failed .exit 3."),
        ("missing", Unavailable, "not on PATH"),
        ("slow", Unavailable, "did not answer within 0.5s"),
    ]:
        path = write_config(tmp_path, {"credHelpers": {"h": name}})
        with pytest.raises(error, match=match):
            credentials_from_docker_config("h", path, helper_timeout=0.5)
    path = write_config(tmp_path, {"credHelpers": {"h": "token"}})
    assert credentials_from_docker_config("h", path) is None  # identity tokens are not passwords


# ---- Registry traitlets --------------------------------------------------------------------------------
def test_env_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("R2D_REGISTRY_URL", "http://127.0.0.1:5000/")
    monkeypatch.setenv("R2D_REGISTRY_USERNAME", "svc")
    monkeypatch.setenv("R2D_REGISTRY_PASSWORD", "svc-pw")
    monkeypatch.setenv("R2D_REGISTRY_TIMEOUT", "3.5")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    registry = Registry()
    assert registry.url == "http://127.0.0.1:5000"
    assert registry.configured and registry.host == "127.0.0.1:5000"
    assert registry.timeout == 3.5
    assert registry.docker_config_path == str(tmp_path / "config.json")
    assert registry.push_credentials() == {
        "registry": "127.0.0.1:5000",
        "username": "svc",
        "password": "svc-pw",
    }


def test_no_registry(monkeypatch):
    monkeypatch.delenv("R2D_REGISTRY_URL", raising=False)
    registry = Registry()
    assert not registry.configured
    assert registry.push_credentials() is None
    with pytest.raises(InvalidRequest, match=r"c\.Registry\.url"):
        registry.client()


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("registry.example.org", "needs a scheme"),
        ("ftp://registry.example.org", "needs a scheme"),
        ("https://user:pw@registry.example.org", "must not contain credentials"),
        ("https://registry.example.org/r2d", "image_prefix"),
        ("https://registry.example.org:99999", "invalid port"),
    ],
)
def test_url_validation(url, match):
    with pytest.raises(TraitError, match=match) as e:
        Registry(url=url)
    assert "pw@" not in str(e.value)


def test_bad_url_from_env_is_refused(monkeypatch):
    monkeypatch.setenv("R2D_REGISTRY_URL", "registry.example.org")
    with pytest.raises(TraitError, match="needs a scheme"):
        Registry().url  # noqa: B018
    monkeypatch.setenv("R2D_REGISTRY_TIMEOUT", "ten")
    with pytest.raises(TraitError, match="R2D_REGISTRY_TIMEOUT='ten' is not a number"):
        Registry().timeout  # noqa: B018


def test_config_values_and_checks():
    config = Config()
    config.Registry.url = "https://registry.example.org"
    config.Registry.username = "svc"
    config.Registry.password = "pw"
    config.Registry.timeout = 2.0
    registry = Registry(config=config)
    assert (registry.username, registry.timeout) == ("svc", 2.0)
    with pytest.raises(TraitError, match="positive"):
        Registry(timeout=0)
    with pytest.raises(TraitError, match="at least 1"):
        Registry(max_concurrency=0)
    half = Registry(url="https://registry.example.org", username="svc", password="")
    with pytest.raises(InvalidRequest, match="set both"):
        half.push_credentials()


def test_credentials_from_docker_config_file(tmp_path, monkeypatch):
    for name in ("R2D_REGISTRY_USERNAME", "R2D_REGISTRY_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    path = write_config(tmp_path, {"auths": {"127.0.0.1:5000": {"auth": b64("dc-user:dc-pw")}}})
    registry = Registry(url="http://127.0.0.1:5000", docker_config_path=path)
    assert registry.push_credentials() == {
        "registry": "127.0.0.1:5000",
        "username": "dc-user",
        "password": "dc-pw",
    }
    other = Registry(url="http://127.0.0.1:5001", docker_config_path=path)
    assert other.push_credentials() is None


@pytest.mark.registry
async def test_shared_client_with_docker_config_credentials(registry_htpasswd, tmp_path):
    repo = f"r2d-alice-cfg{os.getpid()}"
    async with registry_htpasswd.pusher() as pusher:
        await pusher.push_image(repo, "v1", labels={"from": "config"})
    path = write_config(
        tmp_path,
        {"auths": {registry_htpasswd.host: {"auth": b64(f"bob:{registry_htpasswd.users['bob']}")}}},
    )
    registry = Registry(url=registry_htpasswd.url, username="", docker_config_path=path)
    client = registry.client()
    assert registry.client() is client  # one shared client
    try:
        (image,) = await client.list_images(repo)
        assert image.labels == {"from": "config"}
        assert image.reference.startswith(registry_htpasswd.host + "/")
    finally:
        await registry.aclose()
    wrong = Registry(url=registry_htpasswd.url, username="bob", password="not-it")
    try:
        with pytest.raises(RegistryAuthError, match="refused user 'bob'") as e:
            await wrong.client().ping()
        assert "not-it" not in str(e.value)
    finally:
        await wrong.aclose()


@pytest.mark.registry
async def test_rotated_docker_config_credentials_reach_the_shared_client(
    registry_htpasswd, tmp_path
):
    def login(password: str) -> str:
        entry = {"auth": b64(f"alice:{password}")}
        return write_config(tmp_path, {"auths": {registry_htpasswd.host: entry}})

    path = login("expired-password")
    registry = Registry(url=registry_htpasswd.url, username="", docker_config_path=path)
    registry.docker_config_ttl = 0  # read the file on every call
    try:
        client = registry.client()
        with pytest.raises(RegistryAuthError, match="refused user 'alice'"):
            await client.ping()
        login(registry_htpasswd.users["alice"])  # a credential helper/`docker login` rotated it
        assert registry.client() is client
        await client.ping()
    finally:
        await registry.aclose()


def test_redirect_networks_from_config_and_environment(monkeypatch):
    monkeypatch.setenv("R2D_REGISTRY_REDIRECT_NETWORKS", "10.20.0.0/16, fd00::/8")
    assert Registry().redirect_networks == ["10.20.0.0/16", "fd00::/8"]
    monkeypatch.delenv("R2D_REGISTRY_REDIRECT_NETWORKS")
    assert Registry().redirect_networks == []
    c = Config()
    c.Registry.redirect_networks = ["192.168.7.0/24"]
    assert Registry(config=c).redirect_networks == ["192.168.7.0/24"]
    with pytest.raises(TraitError, match=r"redirect_networks: .*CIDR"):
        Registry(redirect_networks=["minio.internal"])


async def test_redirect_networks_reach_the_client():
    registry = Registry(url="http://127.0.0.1:5999", redirect_networks=["10.20.0.0/16"])
    try:
        assert registry.client()._redirect_policy.allows("10.20.3.4")
        assert not registry.client()._redirect_policy.allows("10.21.3.4")
    finally:
        await registry.aclose()
