"""The z2jh recipe (``deploy/z2jh/``), checked offline: no Kubernetes cluster is involved.

* every file is YAML that yamllint accepts;
* each variant (``dind``, ``host-socket``) is "rendered" by following its kustomization's
  resources (kustomize itself is not installed here) and every object is validated against the
  Kubernetes OpenAPI schemas (``kubernetes-validate``, strict: unknown fields are errors);
* cross-references: Service selector and ports vs. the Deployment, Secret keys, ConfigMap, the
  socket between the sidecar and the service, probe paths, env variables the code reads, the
  image's user, the Hub's Service and Secret names as z2jh makes them;
* the ``values.yaml`` fragment uses only keys z2jh's schema accepts where it is strict, declares the
  scopes of :mod:`r2d_core.scopes`, and — turned into a ``jupyterhub_config.py`` the way z2jh's own
  ``jupyterhub_config.py`` does it — starts a real JupyterHub, which validates the custom scopes,
  roles, services and groups, and hands the expected scopes to users and services.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import re
import secrets
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import kubernetes_validate
import pytest
import yaml
from traitlets.config import Config, PyFileConfigLoader
from yamllint import linter
from yamllint.config import YamlLintConfig

from r2d_core.options import APPENDIX_SCOPE
from r2d_core.scopes import ACTIONS, scope_for

ROOT = Path(__file__).resolve().parent.parent
Z2JH = ROOT / "deploy" / "z2jh"
VARIANTS = ("dind", "host-socket")
#: the oldest Kubernetes z2jh 4 supports, and the newest schema kubernetes-validate ships
K8S_VERSIONS = ("1.28.0", kubernetes_validate.utils.latest_version())
YAMLLINT = """
extends: default
rules:
  line-length: {max: 100}
  document-start: disable
  truthy: {check-keys: false}
"""
#: z2jh's values schema is strict (additionalProperties: false) for these sections; the keys
#: below are the ones it accepts that a fragment for this service may use (z2jh 4.x)
Z2JH_HUB_KEYS = {
    "config",
    "extraConfig",
    "extraEnv",
    "image",
    "loadRoles",
    "networkPolicy",
    "services",
}
Z2JH_SINGLEUSER_KEYS = {"networkPolicy", "profileList", "extraEnv", "image"}
Z2JH_NETPOL_KEYS = {"enabled", "ingress", "egress", "egressAllowRules", "allowedIngressPorts"}
#: names the chart gives the Hub's objects with its default fullnameOverride ""
Z2JH_HUB_SECRET = "hub"
Z2JH_HUB_API = "http://hub:8081/hub/api"


def _load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def render(variant: str) -> list[dict[str, Any]]:
    """The objects ``kubectl apply -k deploy/z2jh/<variant>`` would create (no patches used)."""
    objects: list[dict[str, Any]] = []

    def visit(directory: Path) -> None:
        kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
        assert kustomization["kind"] == "Kustomization"
        assert set(kustomization) <= {"apiVersion", "kind", "resources"}, (
            "only plain resource lists are rendered here",
            directory,
        )
        for entry in kustomization["resources"]:
            target = (directory / entry).resolve()
            assert target.is_relative_to(Z2JH), target
            if target.is_dir():
                visit(target)
            else:
                objects.extend(_load(target))

    visit(Z2JH / variant)
    return objects


def _by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for obj in objects:
        name = obj["metadata"]["name"]
        assert name not in found.setdefault(obj["kind"], {}), f"two {obj['kind']}s named {name}"
        found[obj["kind"]][name] = obj
    return found


def values() -> dict[str, Any]:
    return yaml.safe_load((Z2JH / "values.yaml").read_text())


def _dockerfile_defaults() -> dict[str, str]:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    found = dict(re.findall(r"^ARG (\w+)=(\S*)", text, re.M))
    found.update(re.findall(r"^\s+(\w+)=(\S+?)(?: \\)?$", text, re.M))  # ENV continuation lines
    return found


# -- files ---------------------------------------------------------------------------------------


def test_every_file_is_linted_yaml():
    files = sorted(Z2JH.rglob("*.yaml"))
    assert len(files) >= 9, files
    config = YamlLintConfig(YAMLLINT)
    problems = []
    for path in files:
        _load(path)  # parses
        problems += [f"{path.relative_to(ROOT)}:{p}" for p in linter.run(path.read_text(), config)]
    assert not problems, "\n".join(problems)


def test_every_manifest_belongs_to_a_variant():
    used: set[Path] = set()
    for variant in VARIANTS:
        directory = Z2JH / variant
        stack = [directory]
        while stack:
            d = stack.pop()
            used.add(d / "kustomization.yaml")
            for entry in yaml.safe_load((d / "kustomization.yaml").read_text())["resources"]:
                target = (d / entry).resolve()
                assert target.exists(), f"{d}/kustomization.yaml names missing {entry}"
                (stack.append(target) if target.is_dir() else used.add(target))
    stray = {p for p in Z2JH.rglob("*.yaml") if p.name != "values.yaml"} - used
    assert not stray, f"manifests no variant applies: {sorted(stray)}"


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_objects_match_the_kubernetes_schemas(variant, version):
    objects = render(variant)
    assert {o["kind"] for o in objects} == {"Deployment", "Service", "Secret", "ConfigMap"}
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{variant}: {obj['kind']} {obj['metadata']['name']} (k8s {version}): {e}")


def test_singleuser_egress_rule_matches_the_schema():
    """z2jh copies singleuser.networkPolicy.egress into a NetworkPolicy's egress rules."""
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "singleuser"},
        "spec": {
            "podSelector": {},
            "policyTypes": ["Egress"],
            "egress": values()["singleuser"]["networkPolicy"]["egress"],
        },
    }
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(policy, version, strict=True)


# -- cross-references ----------------------------------------------------------------------------


def _service_container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}
    return containers["repo2docker-service"]


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


@pytest.mark.parametrize("variant", VARIANTS)
def test_cross_references(variant):
    kinds = _by_kind(render(variant))
    (deployment,) = kinds["Deployment"].values()
    (service,) = kinds["Service"].values()
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    spec = pod["spec"]

    # selectors
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    # z2jh's Hub NetworkPolicy admits pods with this label
    assert labels["hub.jupyter.org/network-access-hub"] == "true"
    assert spec["automountServiceAccountToken"] is False

    # ports: Service -> named container port; values.yaml's URL -> Service
    container = _service_container(deployment)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] in ports
    url = urlsplit(values()["hub"]["services"]["repo2docker"]["url"])
    assert (url.hostname, url.port) == (service["metadata"]["name"], service_port["port"])

    env = _env(container)
    listen = urlsplit(env["JUPYTERHUB_SERVICE_URL"]["value"])
    assert listen.port == ports[service_port["targetPort"]]
    assert env["JUPYTERHUB_API_URL"]["value"] == Z2JH_HUB_API

    # secrets: our own (keys must exist) and z2jh's "hub" Secret (a key the chart writes)
    hub_services = values()["hub"]["services"]
    referenced = [
        e["valueFrom"]["secretKeyRef"]
        for e in env.values()
        if "secretKeyRef" in e.get("valueFrom", {})
    ]
    assert referenced
    for ref in referenced:
        if ref["name"] == Z2JH_HUB_SECRET:
            key = re.fullmatch(r"hub\.services\.(.+)\.apiToken", ref["key"])
            assert key and key.group(1) in hub_services, ref
            assert key.group(1) == env["JUPYTERHUB_SERVICE_NAME"]["value"]
        else:
            secret = kinds["Secret"][ref["name"]]
            assert ref["key"] in {**secret.get("data", {}), **secret.get("stringData", {})}, ref

    # env variables the code actually reads (a typo would be silently ignored)
    code = "\n".join(
        p.read_text() for d in ("r2d_core", "r2d_tornado") for p in (ROOT / d).rglob("*.py")
    )
    entrypoint = (ROOT / "deploy" / "entrypoint.sh").read_text()
    for name in env:
        if name.startswith("R2D_"):
            assert f'"{name}"' in code, f"{name} is read nowhere in the code"
        else:
            assert name in {"DOCKER_HOST"} or name in entrypoint or name in code, name

    # the config file: where R2D_CONFIG_FILE (the image's default) looks
    image_env = _dockerfile_defaults()
    config_file = Path(image_env["R2D_CONFIG_FILE"])
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert mounts["config"]["mountPath"] == str(config_file.parent)
    configmap = kinds["ConfigMap"][volumes["config"]["configMap"]["name"]]
    assert config_file.name in configmap["data"]

    # the image's user, and the writable places a read-only root needs
    security = container["securityContext"]
    uid = int(image_env["R2D_UID"])
    assert security["runAsUser"] == uid and security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    assert {"/tmp", image_env["HOME"]} <= writable

    # the engine socket the service uses is mounted; the sidecar (dind) listens on it
    socket = env["DOCKER_HOST"]["value"].removeprefix("unix://")
    assert any(
        socket == m["mountPath"] or socket.startswith(m["mountPath"] + "/")
        for m in container["volumeMounts"]
    ), socket
    containers = {c["name"]: c for c in spec["containers"]}
    if variant == "dind":
        dind = containers["dind"]
        # the engine listens on the unix socket only: the image's entry point adds a TCP
        # listener without TLS unless the arguments start with the command "dockerd"
        assert dind["args"][0] == "dockerd"
        hosts = [a for a in dind["args"] if a.startswith(("--host", "-H"))]
        assert hosts == [f"--host={env['DOCKER_HOST']['value']}"], hosts
        # the socket's group is the service user's group: no root needed to use it
        assert f"--group={security['runAsGroup']}" in dind["args"]
        # BuildKit keeps a long step's end (its errors); the service bounds logs itself
        dind_env = {e["name"]: e.get("value") for e in dind.get("env", [])}
        assert int(dind_env["BUILDKIT_STEP_LOG_MAX_SIZE"]) >= 1 << 30
        assert "BUILDKIT_STEP_LOG_MAX_SPEED" not in dind_env  # lifted, floods abort buildx
        shared = {m["name"] for m in dind["volumeMounts"]} & set(mounts)
        assert shared and all(volumes[name].get("emptyDir") is not None for name in shared), (
            "the socket directory must be a volume both containers mount"
        )
    else:
        assert volumes["docker-socket"]["hostPath"]["path"] == socket
        assert spec["securityContext"]["supplementalGroups"]

    # probes on the health endpoint of the service's prefix
    name = env["JUPYTERHUB_SERVICE_NAME"]["value"]
    assert container["readinessProbe"]["httpGet"]["path"] == f"/services/{name}/health"
    assert container["readinessProbe"]["httpGet"]["port"] in ports
    # every container asks for resources
    for c in spec["containers"]:
        assert c["resources"]["requests"], c["name"]

    # single-user servers may reach exactly this pod and port
    (rule,) = values()["singleuser"]["networkPolicy"]["egress"]
    (peer,) = rule["to"]
    assert peer["podSelector"]["matchLabels"].items() <= labels.items()
    assert [p["port"] for p in rule["ports"]] == [ports[service_port["targetPort"]]]


def test_dind_variant_differs_only_in_the_engine():
    """The two Deployments stay in step apart from how the engine is reached."""
    dind, host = (_by_kind(render(v))["Deployment"]["repo2docker-service"] for v in VARIANTS)
    a, b = _service_container(dind), _service_container(host)
    for key in (
        "image",
        "ports",
        "securityContext",
        "readinessProbe",
        "livenessProbe",
        "resources",
    ):
        assert a[key] == b[key], key
    env_a, env_b = _env(a), _env(b)
    assert {k: v for k, v in env_a.items() if k != "DOCKER_HOST"} == {
        k: v for k, v in env_b.items() if k != "DOCKER_HOST"
    }


def test_dockerd_accepts_a_numeric_socket_group(tmp_path):
    """The sidecar's ``--group=10001`` names a group that exists in no image: dockerd takes the
    number as is (checked on the private dockerd 20.10; the sidecar image has a newer one)."""
    from tests.harness import DOCKERD_PATH, Dockerd, DockerdError

    if not os.access(DOCKERD_PATH, os.X_OK) or os.geteuid() != 0:
        pytest.skip("needs root and dockerd")
    gid = int(_dockerfile_defaults()["R2D_UID"])
    engine = Dockerd(seed=False, extra_args=["--group", str(gid)])
    try:
        engine.start()
    except DockerdError as e:
        pytest.fail(str(e))
    try:
        st = os.stat(engine.socket_path)
        assert st.st_gid == gid and st.st_mode & 0o060 == 0o060
    finally:
        engine.stop()


def test_service_config_and_secret_load_into_the_service(tmp_path, monkeypatch):
    """The ConfigMap's config file and the Secret's values, read by the service's own classes."""
    from r2d_core.manager import BuildManager
    from r2d_tornado.app import R2DService

    kinds = _by_kind(render("dind"))
    (configmap,) = kinds["ConfigMap"].values()
    (text,) = configmap["data"].values()
    (tmp_path / "cfg.py").write_text(text)
    config: Config = PyFileConfigLoader("cfg.py", path=str(tmp_path)).load_config()
    known = {cls.__name__: cls for cls in [R2DService, *R2DService.classes]}
    for section, settings in config.items():
        assert section in known, f"no configurable class {section}"
        for trait in settings:
            assert known[section].class_traits(config=True).get(trait), f"{section}.{trait}"

    env = _env(_service_container(kinds["Deployment"]["repo2docker-service"]))
    (secret,) = kinds["Secret"].values()
    for name, entry in env.items():
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        if ref and ref["name"] == secret["metadata"]["name"]:
            monkeypatch.setenv(name, secret["stringData"][ref["key"]])
    manager = BuildManager(config=config)
    assert manager.max_concurrent_builds == 2
    assert manager.registry.configured and manager.registry.host == "registry.example.org"
    assert manager.image_prefix.startswith(manager.registry.host + "/")
    assert manager.registry.credentials() == ("r2d-service", "change-me")


# -- the values.yaml fragment --------------------------------------------------------------------


def test_values_use_keys_z2jh_accepts():
    v = values()
    assert set(v) <= {"hub", "singleuser"}
    assert set(v["hub"]) <= Z2JH_HUB_KEYS, set(v["hub"]) - Z2JH_HUB_KEYS
    assert set(v["singleuser"]) <= Z2JH_SINGLEUSER_KEYS
    assert set(v["singleuser"]["networkPolicy"]) <= Z2JH_NETPOL_KEYS
    for section, settings in v["hub"]["config"].items():
        assert section[:1].isupper(), f"hub.config.{section}: z2jh exits on lower-case sections"
        assert isinstance(settings, dict)
    # z2jh drops hub.config.JupyterHub.services: services belong in hub.services
    assert "services" not in v["hub"]["config"]["JupyterHub"]
    for key, service in v["hub"]["services"].items():
        assert "api_token" not in service and "apiToken" not in service, (
            f"{key}: let the chart generate the token (it lands in the hub Secret)"
        )
    for code in v["hub"]["extraConfig"].values():
        compile(code, "extraConfig", "exec")


def test_values_declare_the_service_scopes():
    v = values()
    expected = [scope_for(a) for a in ACTIONS] + [APPENDIX_SCOPE]
    custom = v["hub"]["config"]["JupyterHub"]["custom_scopes"]
    assert list(custom) == expected
    for action in ("build", "delete"):
        assert custom[scope_for(action)]["subscopes"] == [scope_for("read")]
    assert v["hub"]["services"]["repo2docker"]["oauth_client_allowed_scopes"] == expected
    # the same scopes and role set as `r2d-service generate-hub-config`
    from r2d_tornado.hubconfig import hub_config_snippet

    class Section(dict):
        def __getattr__(self, key: str) -> Any:
            return self.setdefault(key, Section())

        def __setattr__(self, key: str, value: Any) -> None:
            self[key] = value

    c = Section()
    exec(hub_config_snippet(name="repo2docker", mode="external"), {"c": c})
    assert set(c.JupyterHub.custom_scopes) == set(custom)
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert set(v["hub"]["loadRoles"]["user"]["scopes"]) == set(roles["user"]["scopes"])
    assert set(v["hub"]["loadRoles"]["repo2docker-service"]["scopes"]) == set(
        roles["repo2docker-service"]["scopes"]
    )
    # extraConfig reads the chooser's token where the chart puts it
    (chooser_code,) = v["hub"]["extraConfig"].values()
    keys = re.findall(r'get_secret_value\("hub\.services\.([^.]+)\.apiToken"\)', chooser_code)
    assert keys and all(k in v["hub"]["services"] for k in keys)


def test_every_scope_exists_for_jupyterhub():
    """JupyterHub's own check (the one it runs on roles at start and on tokens at spawn), for
    every scope list of the fragment, run in a child process: defining custom scopes changes
    jupyterhub.scopes for the rest of the process."""
    v = values()
    lists = {
        **{f"hub.loadRoles.{k}": r["scopes"] for k, r in v["hub"]["loadRoles"].items()},
        **{
            f"hub.services.{k}.oauth_client_allowed_scopes": s["oauth_client_allowed_scopes"]
            for k, s in v["hub"]["services"].items()
            if "oauth_client_allowed_scopes" in s
        },
        **{f"hub.config.Spawner.{k}": s for k, s in v["hub"]["config"]["Spawner"].items()},
    }
    script = """
import json, sys
from jupyterhub import scopes
data = json.load(sys.stdin)
scopes.define_custom_scopes(data["custom"])
for where, names in data["lists"].items():
    scopes._check_scopes_exist(names, who_for=where)
print("ok")
"""
    custom = v["hub"]["config"]["JupyterHub"]["custom_scopes"]
    res = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps({"custom": custom, "lists": lists}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


def z2jh_hub_config(v: dict[str, Any], tokens: dict[str, str], service_url: str) -> str:
    """``jupyterhub_config.py`` lines doing what z2jh's does with hub.services, hub.loadRoles,
    hub.config and hub.extraConfig (its ``z2jh.get_secret_value`` reads ``tokens``)."""
    services = []
    for key, service in v["hub"]["services"].items():
        service = dict(service, name=service.get("name", key), api_token=tokens[key])
        if "url" in service:
            service["url"] = service_url  # loopback only: the cluster's name does not resolve here
        services.append(service)
    roles = [dict(role, name=role.get("name", key)) for key, role in v["hub"]["loadRoles"].items()]
    secrets_by_key = {f"hub.services.{k}.apiToken": t for k, t in tokens.items()}
    return "\n".join(
        [
            "import sys, types",
            "_z2jh = types.ModuleType('z2jh')",
            f"_z2jh.get_secret_value = {secrets_by_key!r}.__getitem__",
            "sys.modules['z2jh'] = _z2jh",
            # keep the harness's admin service (it creates users and tokens for the test)
            "c.JupyterHub.services = [s for s in c.JupyterHub.services if s['name'] == 'test-admin']",
            f"c.JupyterHub.services += {services!r}",
            "c.JupyterHub.load_roles = [r for r in c.JupyterHub.load_roles"
            " if r['name'] == 'test-admin-role']",
            f"c.JupyterHub.load_roles += {roles!r}",
            "c.JupyterHub.custom_scopes = {}",
            f"for _section, _cfg in {v['hub']['config']!r}.items():",
            "    c[_section].update(_cfg)",
            *(
                f"exec({code!r})  # hub.extraConfig.{name}"
                for name, code in sorted(v["hub"]["extraConfig"].items())
            ),
        ]
    )


class _StandIn(http.server.BaseHTTPRequestHandler):
    """Answers 404 to everything: an HTTP server is there, which is all the Hub checks."""

    def do_GET(self) -> None:
        self.send_error(404)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.hub
async def test_values_start_a_real_jupyterhub():
    """JupyterHub validates the custom scopes, roles, services and groups when it starts."""
    from tests.harness.hub import Hub, HubConfig

    v = values()
    tokens = {key: secrets.token_hex(16) for key in v["hub"]["services"]}
    # something answers at the service's URL: the Hub waits ~30 s for an external service that
    # does not (it still starts without it)
    stand_in = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StandIn)
    threading.Thread(target=stand_in.serve_forever, daemon=True).start()
    hub = Hub(HubConfig(mode="external", service_name="repo2docker"))
    hub.config.extra_config = z2jh_hub_config(
        v, tokens, f"http://127.0.0.1:{stand_in.server_address[1]}"
    )
    try:
        hub.start()
        assert hub.api("POST", "users/alice").status_code == 201

        async with httpx.AsyncClient(base_url=f"{hub.url}/hub/api/", timeout=10) as api:

            async def whoami(token: str) -> dict[str, Any]:
                r = await api.get("user", headers={"Authorization": f"token {token}"})
                assert r.status_code == 200, r.text
                return r.json()

            alice = await whoami(await asyncio.to_thread(hub.token_for, "alice"))
            assert {
                "access:services!service=repo2docker",
                "custom:repo2docker:build!user=alice",
                "custom:repo2docker:delete!user=alice",
            } <= set(alice["scopes"]), alice["scopes"]
            chooser = await whoami(tokens["repo2docker-chooser"])
            assert chooser["kind"] == "service"
            assert {"access:services!service=repo2docker", "custom:repo2docker:read"} <= set(
                chooser["scopes"]
            )
            service = await whoami(tokens["repo2docker"])
            assert {"read:groups", "list:groups"} <= set(service["scopes"])
            assert not any(s.startswith("custom:") for s in service["scopes"])

        r = hub.api("GET", "groups/repo2docker-admins")
        assert r.status_code == 200, r.text
    finally:
        hub.cleanup()
        stand_in.shutdown()
        stand_in.server_close()
