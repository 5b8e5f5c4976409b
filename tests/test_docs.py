"""The documentation builds with warnings as errors, its generated references are complete, and
what it tells a new admin (settings, variables, snippets, paths, recipes) holds against the code."""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.mark.slow
def test_docs_build_without_warnings(tmp_path):
    pytest.importorskip("myst_parser", reason="docs extras not installed (pip install .[docs])")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            str(DOCS),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    config = (DOCS / "reference" / "config.md").read_text()
    for trait in (
        "BuildManager.max_concurrent_builds",
        "DockerBuilder.image",
        "Registry.url",
        "LifecyclePolicy.keep_versions",
        "BuildOptions.allowed",
        "R2DPlugin.path",
    ):
        assert trait in config
    api = (DOCS / "reference" / "rest-api.md").read_text()
    assert "`GET /api/builds/{build_id}/logs`" in api
    assert (tmp_path / "index.html").exists()


# ---- what a new admin copies from the docs holds against the code ---------------------------------

ROOT = DOCS.parent
PAGES = [ROOT / "README.md", *sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts)]
#: generated from the code: checked by building them, not here
GENERATED = {DOCS / "reference" / "config.md", DOCS / "reference" / "rest-api.md"}


def _pages() -> list[Path]:
    return [p for p in PAGES if p not in GENERATED]


def _blocks(language: str) -> list[tuple[Path, str]]:
    fence = re.compile(rf"^```{language}\n(.*?)^```", re.S | re.M)
    return [(page, m.group(1)) for page in _pages() for m in fence.finditer(page.read_text())]


def _reference():
    sys.path.insert(0, str(DOCS / "_ext"))
    try:
        import traits_reference
    finally:
        sys.path.remove(str(DOCS / "_ext"))
    return traits_reference


def _documented_classes() -> dict[str, type]:
    ref = _reference()
    return {cls.__name__: cls for cls in map(ref._load, ref.CLASSES)}


def test_config_reference_shows_the_defaults_admins_get(monkeypatch):
    # settings whose default comes from a @default method (an env variable, another setting)
    monkeypatch.setenv("R2D_MAX_CONCURRENT_BUILDS", "7")  # the reference ignores the environment
    text = _reference().render()
    for entry in (
        "`BuildManager.max_concurrent_builds`\n: *Int*, default `2`.",
        "`BuildManager.build_timeout`\n: *Float*, default `3600.0`.",
        "`BuildManager.image_prefix`\n: *Unicode*, default `'r2d-'`.",
        "`LifecyclePolicy.prune_dangling_images`\n: *Bool*, default `True`.",
        "`LifecyclePolicy.prune_interval`\n: *Float*, default `3600.0`.",
        "`LifecyclePolicy.keep_failed_records`\n: *Int*, default `200`.",
        "`Registry.timeout`\n: *Float*, default `10.0`.",
        "`DockerEngine.host`\n: *Unicode*, default `'unix:///var/run/docker.sock'`.",
        "`BuildManager.builder_class`\n: *Type*, default `'r2d_core.builders.LocalProcessBuilder'`.",
        # depends on this machine (the Python running the service): not printed as a value
        "`LocalProcessBuilder.command`\n: *List*, default computed at start (see below).",
    ):
        assert entry in text, entry
    assert sys.executable not in text


def test_generate_config_lists_every_documented_class():
    from r2d_tornado.app import R2DService

    text = R2DService().generate_config_file()
    for name in _documented_classes():
        if name != "R2DPlugin":  # the TLJH plugin's own settings, not the service's
            assert f"\n# {name}(" in text, f"r2d-service generate-config lacks {name}"


#: settings of the projects the docs configure next to ours (installed with the test extra)
_THEIR_CLASSES = {
    "JupyterHub": "jupyterhub.app",
    "Spawner": "jupyterhub.spawner",
    "Authenticator": "jupyterhub.auth",
    "DockerSpawner": "dockerspawner",
    "KubeSpawner": "kubespawner",
    "Repo2Docker": "repo2docker.app",
}


def test_docs_name_only_settings_that_exist():
    import importlib

    classes = _documented_classes()
    for name, module in _THEIR_CLASSES.items():
        classes.setdefault(name, getattr(importlib.import_module(module), name))
    reference = re.compile(r"\b([A-Z][A-Za-z0-9]+)\.([a-z_][a-z0-9_]*)\b")
    wrong = []
    for page in _pages():
        for m in reference.finditer(page.read_text()):
            cls = classes.get(m.group(1))
            if cls is None:
                continue
            trait = cls.class_traits().get(m.group(2))
            if trait is None and not callable(getattr(cls, m.group(2), None)):
                wrong.append(f"{page.relative_to(ROOT)}: {m.group(0)} does not exist")
            elif trait is not None and not trait.metadata.get("config"):
                wrong.append(f"{page.relative_to(ROOT)}: {m.group(0)} is not configurable")
    assert not wrong, "\n".join(wrong)


def _code_text(*folders: str) -> str:
    return "\n".join(
        p.read_text(errors="replace")
        for folder in folders
        for p in (ROOT / folder).rglob("*")
        if p.is_file() and "node_modules" not in p.parts and p.suffix in (".py", ".sh", ".yaml", "")
    )


def test_docs_name_only_environment_variables_that_exist():
    # the product's variables, and the developer tools' (noxfile.py, ./dev) for testing.md
    code = _code_text("r2d_core", "r2d_tornado", "r2d_tljh", "deploy")
    code += "\n" + (ROOT / "noxfile.py").read_text() + (ROOT / "dev").read_text()
    harness = _code_text("tests/harness")
    missing = set()
    for page in _pages():
        for name in set(re.findall(r"\bR2D_[A-Z0-9_]*[A-Z0-9]\b", page.read_text())):
            if not re.search(rf"\b{name}\b", harness if name.startswith("R2D_HARNESS_") else code):
                missing.add(f"{page.relative_to(ROOT)}: {name}")
    assert not missing, sorted(missing)


def test_docs_pair_each_setting_with_the_variable_it_reads():
    """A table row whose first cell is a setting, or a line naming one setting, and one ``R2D_*``
    variable: that setting's default reads that variable."""
    classes = _documented_classes()
    setting = re.compile(r"`(?:c\.)?([A-Z][A-Za-z0-9]+)\.([a-z_][a-z0-9_]*)`")
    wrong = []
    for page in _pages():
        for line in page.read_text().splitlines():
            names = set(re.findall(r"\bR2D_[A-Z0-9_]*[A-Z0-9]\b", line))
            where = line.split("|")[1] if line.startswith("| `") else line
            found = {m.groups() for m in setting.finditer(where) if m.group(1) in classes}
            if not found and page.name == "lifecycle.md" and line.startswith("| `"):
                found = {("LifecyclePolicy", where.strip().strip("`"))}  # its table: bare names
            if len(names) != 1 or len(found) != 1:
                continue
            (env,), ((cls_name, trait),) = names, found
            generator = classes[cls_name]._all_trait_default_generators.get(trait)
            if env not in inspect.getsource(getattr(generator, "func", None) or (lambda: None)):
                wrong.append(f"{page.relative_to(ROOT)}: {cls_name}.{trait} does not read {env}")
    assert not wrong, "\n".join(wrong)


def test_doc_snippets_parse():
    for page, text in _blocks("python"):
        ast.parse(text, filename=str(page))
    for _page, text in _blocks("json"):
        json.loads(text)
    for _page, text in _blocks("yaml"):
        yaml.safe_load(text)


def test_docs_name_only_api_paths_the_service_serves():
    from r2d_tornado.openapi import openapi_document

    served = [("GET", re.compile("^/api/openapi\\.json$"))] + [
        (method.upper(), re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$"))
        for path, operations in openapi_document()["paths"].items()
        for method in operations
    ]
    # backquoted paths relative to the service prefix (not the Hub's, not the UI's #/ routes)
    mention = re.compile(r"`(?:(GET|POST|DELETE) )?(/?(?:api/|builds/|build/[<{])[^`\s]*)`")
    wrong = []
    for page in _pages():
        for m in mention.finditer(page.read_text()):
            method, path = m.group(1), m.group(2).split("?")[0]
            path = "/" + re.sub(r"<[^>]+>", "x", path.lstrip("/"))
            if not any(p.match(path) and method in (None, verb) for verb, p in served):
                wrong.append(f"{page.relative_to(ROOT)}: {m.group(0)}")
    assert not wrong, "\n".join(wrong)


def test_docs_do_not_install_the_unpublished_distribution_by_name():
    # repo2docker-service is not on PyPI: `pip install repo2docker-service` fails, or installs
    # whatever someone else publishes under that name
    by_name = re.compile(r"pip install[^\n`]*\srepo2docker-service\b(?![-/.\w])")
    wrong = [
        f"{page.relative_to(ROOT)}: {m.group(0)}"
        for page in _pages()
        for m in by_name.finditer(page.read_text())
    ]
    assert not wrong, "\n".join(wrong)


def _hub_config(*texts: str):
    """``jupyterhub_config.py`` text loaded as JupyterHub loads it (a traitlets Python file)."""
    from traitlets.config import Config

    c = Config()
    for text in texts:
        exec(compile(text, "jupyterhub_config.py", "exec"), {"c": c, "get_config": lambda: c})
    return c


def test_role_recipes_go_with_the_generated_snippet():
    """Each role of the roles-and-scopes page, added to the ``generate-hub-config`` snippet as the
    page says, gives the Hub unique role names (else it does not start: "Role ... multiply
    defined") and scopes JupyterHub accepts; a recipe showing a role of the snippet shows it as
    the snippet has it."""
    from r2d_tornado.hubconfig import hub_config_snippet

    snippet = hub_config_snippet()
    ours = {r["name"]: r for r in _hub_config(snippet).JupyterHub.load_roles}
    lists = {}
    for page, text in _blocks("python"):
        if page.name != "scopes.md" or ("load_roles" not in text and not text.startswith("{")):
            continue
        if text.startswith("{"):  # a role of its own, to append
            role = ast.literal_eval(text)
            if role["name"] in ours:
                assert role == ours[role["name"]], f"{role['name']} differs from the snippet's"
                continue
            text = f"c.JupyterHub.load_roles.append({text})"
        roles = _hub_config(snippet, text).JupyterHub.load_roles
        names = [r["name"] for r in roles]
        assert len(names) == len(set(names)), f"{text}\ndefines a role twice: {names}"
        lists.update({f"{text} ({r['name']})": r.get("scopes", []) for r in roles})
    assert len(lists) > len(ours)
    check = (
        "import json, sys\nfrom jupyterhub import scopes\ndata = json.load(sys.stdin)\n"
        "scopes.define_custom_scopes(data['custom'])\n"
        "for where, names in data['lists'].items():\n"
        "    scopes._check_scopes_exist(names, who_for=where)\n"
    )
    custom = _hub_config(snippet).JupyterHub.custom_scopes
    result = subprocess.run(
        [sys.executable, "-c", check],
        input=json.dumps({"custom": custom, "lists": lists}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_jupyterhub_tutorial_config_steps_load():
    """Step 3 of the JupyterHub tutorial, below the snippet of step 2: the service entry gets
    the config file's path; the service's config file loads into the classes that read it."""
    from r2d_tornado.app import R2DService
    from r2d_tornado.hubconfig import hub_config_snippet

    blocks = [t for page, t in _blocks("python") if page.name == "jupyterhub.md"]
    hub_steps = [t for t in blocks if "c.JupyterHub." in t]
    c = _hub_config(hub_config_snippet(command="/opt/venv/bin/r2d-service"), *hub_steps)
    (service,) = c.JupyterHub.services
    assert service["environment"] == {
        "R2D_BUILDER": "docker",
        "R2D_CONFIG_FILE": "/etc/repo2docker-service/r2d_service_config.py",
    }
    service_config = _hub_config(*(t for t in blocks if t not in hub_steps))
    assert service_config.BuildManager.max_builds_per_owner == 1
    app = R2DService(config=service_config)
    app.initialize([])
    assert app.manager.builder.kind == "docker"
    assert app.manager.engine.host == "unix:///var/run/docker.sock"
    assert "buildpack-deps:jammy" in app.manager.builder.repo2docker_config


def test_external_service_starts_from_the_variables_the_tutorial_names():
    """The JupyterHub tutorial's external service: the variables it lists (and no others) give
    the service its token, prefix, OAuth client and callback, Hub API and listening address."""
    text = (DOCS / "tutorials" / "jupyterhub.md").read_text()
    section = text.split("## External service", 1)[1]
    documented = sorted(
        set(re.findall(r"`(JUPYTERHUB_[A-Z_]+)`", section)) - {"JUPYTERHUB_CLIENT_ID"}
    )
    values = {
        "JUPYTERHUB_API_TOKEN": "0123456789abcdef0123456789abcdef",
        "JUPYTERHUB_SERVICE_NAME": "repo2docker",
        "JUPYTERHUB_SERVICE_PREFIX": "/services/repo2docker/",
        "JUPYTERHUB_API_URL": "http://hub-host:8081/hub/api",
        "JUPYTERHUB_SERVICE_URL": "http://0.0.0.0:8585",
    }
    assert set(documented) <= set(values), documented
    probe = (
        "from r2d_tornado.app import R2DService\n"
        "app = R2DService.instance()\n"
        "app.initialize([])\n"
        "a = app.hub_auth\n"
        "print(a.api_token, a.api_url, a.oauth_client_id, a.oauth_redirect_uri, app.base_url,\n"
        "      app.ip, app.port)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTERHUB_", "R2D_"))}
    env.update({name: values[name] for name in documented})
    result = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == [
        "0123456789abcdef0123456789abcdef",
        "http://hub-host:8081/hub/api",
        "service-repo2docker",
        "/services/repo2docker/oauth_callback",
        "/services/repo2docker/",
        "0.0.0.0",
        "8585",
    ]


def test_config_snippets_load_into_the_classes_they_configure(monkeypatch):
    """Every Python snippet, below the ``generate-hub-config`` snippet as the tutorials place
    them, loads; each of our classes it configures takes the values (validators included: a
    pattern that does not pin its host, a size that does not parse, ...). A snippet that needs
    something of the admin's (a token, a file, a spawner) is left to the tests that have one."""
    from r2d_tornado.hubconfig import hub_config_snippet

    classes = _documented_classes()
    snippet = hub_config_snippet()
    loaded = 0
    for _page, text in _blocks("python"):
        for name in re.findall(r"os\.environ\[\"(\w+)\"\]", text):  # a secret in the environment
            monkeypatch.setenv(name, "a-secret")
        try:
            c = _hub_config(snippet, text)
        except (NameError, ImportError, KeyError, OSError):
            continue
        for section in set(c) & set(classes):
            configured = classes[section](config=c)
            for name in c[section]:
                getattr(configured, name)
            loaded += 1
    assert loaded >= 16


def test_cache_settings_of_the_reference_take_effect():
    """``R2DService.permissions_ttl`` is the default of the group and scope caches, and
    ``c.HubGroups.ttl`` / ``c.HubOAuth.cache_max_age``, which the reference and
    ``generate-config`` list, are not overridden by it when an admin sets them."""
    probe = (
        "import sys\nfrom traitlets.config import Config\nfrom r2d_tornado.app import R2DService\n"
        "c = Config()\n"
        "if sys.argv[1] == 'set':\n"
        "    c.HubGroups.ttl = 120.0\n"
        "    c.HubOAuth.cache_max_age = 90\n"
        "app = R2DService.instance(config=c)\napp.initialize([])\n"
        "print(app.groups.ttl, app.hub_auth.cache_max_age)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTERHUB_", "R2D_"))}
    env["JUPYTERHUB_API_TOKEN"] = "0123456789abcdef"
    for arg, expected in (("set", "120.0 90"), ("unset", "30.0 30")):
        result = subprocess.run(
            [sys.executable, "-c", probe, arg], env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.split() == expected.split()


def test_scopes_page_shows_what_generate_hub_config_singleuser_prints():
    from r2d_tornado.hubconfig import hub_config_snippet

    (shown,) = [t for p, t in _blocks("python") if p.name == "scopes.md" and "c.Spawner." in t]
    printed = _hub_config(hub_config_snippet(singleuser=True)).Spawner
    assert _hub_config(shown).Spawner == printed


def test_metrics_reference_lists_every_metric_with_its_type_and_labels():
    from prometheus_client.metrics import MetricWrapperBase

    from r2d_core import metrics

    served = {}
    for metric in vars(metrics).values():
        if isinstance(metric, MetricWrapperBase):
            name = metric._name + ("_total" if metric._type == "counter" else "")
            served[name] = (metric._type, list(metric._labelnames))
    documented = {}
    for line in (DOCS / "reference" / "metrics.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.split("|")[1:-1]]
        if len(cells) == 4 and cells[0].startswith("`r2d_"):
            labels = re.findall(r"`([a-z_]+)`(?: \(|$)", cells[2])
            documented[cells[0].strip("`")] = (cells[1], labels)
    assert documented == served


def test_jupyterhub_tutorial_names_what_the_snippet_replaces():
    """Appended to an existing config, the snippet's assignments replace what was there: the
    tutorial names each one (an idle culler configured above it would silently go)."""
    from r2d_tornado.hubconfig import hub_config_snippet

    assigned = set(re.findall(r"^c\.JupyterHub\.(\w+) = ", hub_config_snippet(), re.M))
    text = (DOCS / "tutorials" / "jupyterhub.md").read_text()
    paragraph = text[text.index("The snippet **assigns**") :].split("\n\n", 1)[0]
    assert assigned == set(re.findall(r"`c\.JupyterHub\.(\w+)`", paragraph))
    culler = {"name": "idle-culler", "command": ["cull"]}
    existing = f"c.JupyterHub.services = [{culler!r}]\n"
    assert culler not in _hub_config(existing, hub_config_snippet()).JupyterHub.services
    moved = f"c.JupyterHub.services.append({culler!r})\n"
    assert culler in _hub_config(hub_config_snippet(), moved).JupyterHub.services


def test_reference_help_texts_agree_with_the_code():
    """What a setting's help (the reference's text) says of its default: a number or boolean
    stated as the default is the default, and each environment variable it names is read by
    its default (directly, or by a function of ours the default calls)."""
    ref = _reference()
    env_name = re.compile(r"\b((?:R2D|JUPYTERHUB|DOCKER)_[A-Z0-9_]*[A-Z0-9])\b")
    # a number followed by a unit ("4 GiB") is left alone
    stated = re.compile(
        r"[Dd]efault:? `*(-?\d+(?:\.\d+)?|True|False)`*(?=[;,)]|$|\s(?![KMGT]i?B\b))"
    )
    wrong = []
    for cls in _documented_classes().values():
        for name, trait in ref._own_traits(cls).items():
            help_text = " ".join((trait.help or "").split())
            where = f"{cls.__name__}.{name}"
            m = stated.search(help_text)
            if m:
                with ref._clean_environment():
                    value = getattr(cls.__new__(cls), name)
                word = m.group(1)
                said = word == "True" if word in ("True", "False") else float(word)
                if said != value:
                    wrong.append(f"{where}: help says default {word}, it is {value!r}")
            names = set(env_name.findall(help_text))
            if not names:
                continue
            func = getattr(cls._all_trait_default_generators.get(name), "func", None)
            source = inspect.getsource(func) if func else ""
            for called in re.findall(r"\b([a-z_]+)\(", source):
                target = func.__globals__.get(called)
                if inspect.isfunction(target) and target.__module__.startswith("r2d_"):
                    source += inspect.getsource(target)
            wrong += [
                f"{where}: its default does not read {n}"
                for n in names
                if not re.search(rf"\b{n}\b", source)
            ]
    assert not wrong, "\n".join(wrong)


def test_jupyterhub_tutorial_pulls_the_default_builder_image():
    # the pull command for an engine the service cannot pull for (pull_policy "never")
    from r2d_core.builders import DockerBuilder

    text = (DOCS / "tutorials" / "jupyterhub.md").read_text()
    default = DockerBuilder.class_traits()["image"].default()
    assert re.findall(r"`docker pull ([^`]+)`", text) == [default]
    assert f"(`{default}` by default)" in text
