"""The browser UI as shipped: the esbuild bundle, the page template, the hatch build hook, and the
UI's own logic (form checks agree with the API's validators), run in Node.

The bundle is built by ``pip install -e .`` (hatch_build.py); these tests check what it produced
and never rebuild the real tree, so a stale or broken bundle fails here instead of in a browser.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest
from tornado import template

import hatch_build
from r2d_core import validation
from r2d_tornado.handlers import script_json

ROOT = Path(__file__).resolve().parent.parent
FRONTEND = ROOT / "r2d_tornado" / "frontend"
STATIC = ROOT / "r2d_tornado" / "static"
DIST = STATIC / "dist"
TEMPLATES = ROOT / "r2d_tornado" / "templates"

# Hosts that serve libraries to browsers: a page that loads from them breaks offline and leaks
# every visit to a third party.
CDN_HOSTS = (
    "cdn.jsdelivr.net",
    "unpkg.com",
    "cdnjs.cloudflare.com",
    "ajax.googleapis.com",
    "fonts.googleapis.com",
    "fonts.gstatic.com",
    "code.jquery.com",
    "stackpath.bootstrapcdn.com",
    "maxcdn.bootstrapcdn.com",
    "esm.sh",
    "cdn.skypack.dev",
)
# Absolute URLs the bundle may contain because nothing fetches them: XML namespaces, the form's
# placeholder (github.com/org/repo) and a link in Popper's console warning.
INERT_URL_HOSTS = {"www.w3.org", "github.com"}
URL = re.compile(r"""https?://[^\s"'`()<>\\]+""", re.IGNORECASE)


def _served_files() -> list[Path]:
    """Every file the service serves to browsers, plus the template that links them."""
    return [p for p in STATIC.rglob("*") if p.is_file()] + [TEMPLATES / "page.html"]


# ---- the bundle ----------------------------------------------------------------------------------
def test_bundle_is_built_and_up_to_date() -> None:
    # None means: app.js and app.css exist and are not older than any frontend source file
    assert hatch_build.bundle_staleness(ROOT) is None


def test_bundle_holds_bootstrap_xterm_and_our_styles() -> None:
    css = (DIST / "app.css").read_text()
    assert ".navbar{" in css.replace(" ", "")  # Bootstrap
    assert ".xterm " in css or ".xterm{" in css  # xterm.js
    assert ".r2d-phases" in css  # ours
    js = (DIST / "app.js").read_text()
    assert 'getElementById("r2d-config")' in js
    assert len(js) < 300_000, "app.js grew past 300 kB: keep heavy libraries in lazy chunks"


def test_every_chunk_the_bundle_imports_exists() -> None:
    # app.js is an ES module that loads xterm.js as a chunk on the log page: a missing chunk would
    # only show up as a broken log view.
    pending = [DIST / "app.js"]
    seen: set[Path] = set()
    while pending:
        current = pending.pop()
        seen.add(current)
        code = current.read_text()
        for spec in re.findall(r"""(?:from|import)\s*\(?\s*["'](\.{1,2}/[^"']+)["']""", code):
            target = (current.parent / spec).resolve()
            assert target.is_file(), f"{current.name} imports {spec}, which is not in {DIST}"
            if target not in seen:
                pending.append(target)
    assert any("terminal" in p.name for p in seen), "the xterm chunk is not reachable from app.js"


def test_no_cdn_and_no_remote_loads() -> None:
    for path in _served_files():
        text = path.read_text(errors="replace")
        rel = path.relative_to(ROOT)
        for host in CDN_HOSTS:
            assert host not in text, f"{rel} refers to the CDN {host}"
        if path.name.endswith(".LEGAL.txt"):
            continue  # license notices name their projects' home pages; nothing loads them
        for url in URL.findall(text):
            host = url.split("/")[2].lower()
            assert host in INERT_URL_HOSTS, f"{rel} contains the absolute URL {url}"
        # no stylesheet, script, font or image from anywhere but this service
        assert not re.search(r"""url\(\s*["']?(https?:)?//""", text), rel
        assert not re.search(r"""(src|href)\s*=\s*["'](https?:)?//""", text), rel


# ---- the page template ---------------------------------------------------------------------------
def _render(base_url: str, user: str | None, **extra: Any) -> tuple[str, list[str]]:
    """Render page.html the way the service does; returns the HTML and the static paths asked for."""
    asked: list[str] = []

    def static_url(path: str) -> str:
        asked.append(path)
        return f"{base_url}static/{path}?v=abc123"

    config = {
        "base_url": base_url,
        "hub_url": "/hub/",
        "logout_url": "/hub/logout",
        "user": user,
        "xsrf_token": "2|token|value",
        **extra,
    }
    loader = template.Loader(str(TEMPLATES), autoescape="xhtml_escape")
    html = (
        loader.load("page.html")
        .generate(
            base_url=base_url,
            static_url=static_url,
            xsrf_token=config["xsrf_token"],
            user=user,
            hub_url=config["hub_url"],
            logout_url=config["logout_url"],
            page_config=script_json(config),
        )
        .decode()
    )
    return html, asked


def _page_config(html: str) -> dict[str, Any]:
    match = re.search(r'<script id="r2d-config" type="application/json">(.*?)</script>', html, re.S)
    assert match, "page.html lost its r2d-config script"
    return json.loads(match.group(1))


@pytest.mark.parametrize("base_url", ["/services/repo2docker/", "/hub/repo2docker/"])
def test_template_links_the_bundle_under_any_prefix(base_url: str) -> None:
    html, asked = _render(base_url, "alice")
    assert f'<link rel="stylesheet" href="{base_url}static/dist/app.css?v=abc123">' in html
    assert f'<script type="module" src="{base_url}static/dist/app.js?v=abc123"></script>' in html
    for path in asked:
        assert (STATIC / path).is_file(), f"page.html links static/{path}, which does not exist"
    assert {"dist/app.js", "dist/app.css"} <= set(asked)
    assert _page_config(html)["base_url"] == base_url
    # the navbar: brand back to the index, the Hub's home, the user and the logout link
    assert f'class="navbar-brand" href="{base_url}"' in html
    assert 'href="/hub/home"' in html
    assert 'data-testid="nav-user">alice<' in html
    assert 'href="/hub/logout" data-testid="nav-logout"' in html


def test_template_without_a_user_has_no_logout() -> None:
    html, _ = _render("/services/repo2docker/", None)
    assert "nav-user" not in html
    assert "nav-logout" not in html
    assert _page_config(html)["user"] is None


def test_template_keeps_hostile_values_inert() -> None:
    evil = '</script><script>alert("x")</script><!--'
    html, _ = _render("/services/repo2docker/", evil, note=evil)
    # the config survives intact, and the only script elements are the page's own two
    config = _page_config(html)
    assert config["user"] == evil
    assert config["note"] == evil
    assert html.count("<script") == 2
    assert 'alert("x")' not in html.split('id="r2d-config"')[0]  # escaped in the navbar


#: a Hub user name (some authenticators allow almost anything) that opens an HTML comment and a
#: script inside the config element: a raw "<!--<script>" there makes the browser's tokenizer
#: ignore the real "</script>", and the rest of the page becomes script text
HOSTILE_NAME = "<!--<script>&amp;\u2028\u2029</script>-->"


def _config_text(html: str) -> str:
    match = re.search(r'<script id="r2d-config" type="application/json">(.*?)</script>', html, re.S)
    assert match, "page.html lost its r2d-config script"
    return match.group(1)


def test_script_json_escapes_every_character_that_matters_in_a_script_element() -> None:
    text = script_json({"user": HOSTILE_NAME})
    assert not set("<>&\u2028\u2029") & set(text)
    assert "\\u003c!--\\u003cscript\\u003e\\u0026amp;" in text
    assert json.loads(text) == {"user": HOSTILE_NAME}


async def test_served_page_keeps_a_hostile_user_name_inert() -> None:
    """The page as PageHandler serves it (both adapters share it), for a user named like a tag."""
    from tornado import httpclient, web
    from tornado.httpserver import HTTPServer
    from tornado.testing import bind_unused_port

    from r2d_core.manager import BuildManager
    from r2d_tornado import handlers as h

    class Base(web.RequestHandler):
        async def r2d_identify(self) -> h.Identity:
            return h.Identity(HOSTILE_NAME, "user", frozenset())

        def r2d_login_url(self) -> str:
            return "/hub/login"

        def r2d_xsrf_token(self) -> str:
            return "2|token|value"

    ctx = h.R2DContext(manager=BuildManager(), authorizer=None, base_url="/services/r2d/")
    app = web.Application(h.make_handlers("/services/r2d/", Base, ctx))
    sock, port = bind_unused_port(address="127.0.0.1")
    server = HTTPServer(app)
    server.add_sockets([sock])
    try:
        response = await httpclient.AsyncHTTPClient().fetch(
            f"http://127.0.0.1:{port}/services/r2d/", raise_error=False
        )
    finally:
        server.stop()
    assert response.code == 200, response.body[:300]
    html = response.body.decode()
    text = _config_text(html)
    assert not set("<>&\u2028\u2029") & set(text), text
    assert json.loads(text)["user"] == HOSTILE_NAME
    # the name is text everywhere else (the navbar), and the page's own scripts are all there are
    assert html.count("<script") == 2
    assert html.rstrip().endswith("</script>\n</body>\n</html>")


# ---- the hatch build hook ------------------------------------------------------------------------
def _fake_tree(tmp_path: Path) -> tuple[Path, Path]:
    src = tmp_path / "r2d_tornado" / "frontend" / "src"
    src.mkdir(parents=True)
    (src / "main.ts").write_text("export {};\n")
    dist = tmp_path / "r2d_tornado" / "static" / "dist"
    dist.mkdir(parents=True)
    return src / "main.ts", dist


def _age(path: Path, seconds: float) -> None:
    st = path.stat()
    os.utime(path, (st.st_atime - seconds, st.st_mtime - seconds))


def test_staleness_missing_then_fresh_then_outdated(tmp_path: Path) -> None:
    source, dist = _fake_tree(tmp_path)
    assert "app.js, app.css missing" in (hatch_build.bundle_staleness(tmp_path) or "")
    for name in hatch_build.BUNDLE_FILES:
        (dist / name).write_text("built")
    _age(source, 60)
    assert hatch_build.bundle_staleness(tmp_path) is None
    source.touch()  # an edit after the last build
    reason = hatch_build.bundle_staleness(tmp_path)
    assert reason is not None and "main.ts is newer" in reason
    # one output missing is enough
    _age(source, 120)
    (dist / "app.css").unlink()
    assert "app.css missing" in (hatch_build.bundle_staleness(tmp_path) or "")


def test_staleness_equal_times_count_as_fresh(tmp_path: Path) -> None:
    # a reproducible sdist stamps every file with one time: its bundle must not need Node.js
    source, dist = _fake_tree(tmp_path)
    for name in hatch_build.BUNDLE_FILES:
        (dist / name).write_text("built")
    stamp = 1_000_000_000
    for path in [source, *(dist / n for n in hatch_build.BUNDLE_FILES)]:
        os.utime(path, (stamp, stamp))
    assert hatch_build.bundle_staleness(tmp_path) is None


def test_needs_npm_ci_follows_the_lock_file(tmp_path: Path) -> None:
    (tmp_path / "package.json").write_text("{}")
    (tmp_path / "package-lock.json").write_text("{}")
    assert hatch_build.needs_npm_ci(tmp_path)
    installed = tmp_path / "node_modules" / ".package-lock.json"
    installed.parent.mkdir()
    installed.write_text("{}")
    _age(tmp_path / "package.json", 60)
    _age(tmp_path / "package-lock.json", 60)
    assert not hatch_build.needs_npm_ci(tmp_path)
    (tmp_path / "package-lock.json").touch()  # a dependency changed
    assert hatch_build.needs_npm_ci(tmp_path)


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """The frontend's npm dependencies (esbuild, …), installed like the build hook does it."""
    npm = shutil.which("npm")
    assert npm, "npm is needed to build the UI: install Node.js and npm (scripts/install-system.sh)"
    if hatch_build.needs_npm_ci(FRONTEND):
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=FRONTEND, check=True)
    return FRONTEND / "node_modules"


def test_hook_builds_a_missing_bundle(tmp_path: Path, node_modules: Path) -> None:
    # a copy of the frontend without a bundle, as in a fresh clone
    frontend = tmp_path / "r2d_tornado" / "frontend"
    shutil.copytree(FRONTEND, frontend, ignore=shutil.ignore_patterns("node_modules"))
    (frontend / "node_modules").symlink_to(node_modules)
    hook = hatch_build.FrontendBuildHook(
        str(tmp_path), {}, None, None, str(tmp_path / "out"), "wheel"
    )
    hook.initialize("standard", {})
    dist = tmp_path / "r2d_tornado" / "static" / "dist"
    assert (dist / "app.js").stat().st_size > 10_000
    assert (dist / "app.css").stat().st_size > 10_000
    assert hatch_build.bundle_staleness(tmp_path) is None


def test_hook_explains_a_missing_npm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_tree(tmp_path)
    (tmp_path / "r2d_tornado" / "frontend" / "package.json").write_text("{}")
    monkeypatch.setattr(hatch_build.shutil, "which", lambda _name: None)
    hook = hatch_build.FrontendBuildHook(str(tmp_path), {}, None, None, str(tmp_path), "wheel")
    with pytest.raises(RuntimeError, match=r"needs npm: install Node\.js"):
        hook.initialize("standard", {})


@pytest.mark.slow
def test_wheel_ships_bundle_and_template_but_not_npm_sources(tmp_path: Path) -> None:
    from hatchling.builders.wheel import WheelBuilder

    wheel = next(
        iter(WheelBuilder(str(ROOT)).build(directory=str(tmp_path), versions=["standard"]))
    )
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "r2d_tornado/templates/page.html" in names
    assert "r2d_tornado/static/favicon.svg" in names
    bundled = {p.relative_to(ROOT).as_posix() for p in DIST.rglob("*") if p.is_file()}
    assert {"r2d_tornado/static/dist/app.js", "r2d_tornado/static/dist/app.css"} <= bundled
    assert bundled <= names, f"missing from the wheel: {sorted(bundled - names)}"
    assert not [n for n in names if n.startswith("r2d_tornado/frontend/")]


# ---- the UI's logic, run in Node -----------------------------------------------------------------
def _js(node_modules: Path, *calls: list[Any]) -> list[Any]:
    """Results of calling test/pure.ts functions; an exception comes back as {"error": ...}."""
    out = subprocess.run(
        ["node", str(FRONTEND / "test" / "eval.mjs")],
        input=json.dumps(list(calls)),
        capture_output=True,
        text=True,
        check=True,
        cwd=FRONTEND,
    )
    results = json.loads(out.stdout)
    for call, result in zip(calls, results, strict=True):
        assert "error" not in result, f"{call}: {result['error']}"
    return [r["ok"] for r in results]


INFO = {
    "rules": {
        "name_pattern": validation.NAME_PATTERN,
        "ref_pattern": validation.REF_PATTERN,
        "allowed_repo_patterns": list(validation.DEFAULT_ALLOWED_REPO_PATTERNS),
    },
    "user": {"name": "alice", "kind": "user"},
}

REPOS = [
    "https://github.com/org/repo",
    "https://github.com/org/repo.git",
    "https://gitlab.example.org/group/sub/project",
    "http://github.com/org/repo",  # not in the default allow-list
    "git://github.com/org/repo",
    "ssh://git@github.com/org/repo",
    "git@github.com:org/repo.git",
    "file:///etc/passwd",
    "/srv/repo",
    "./repo",
    "-uhttps://x",
    "ext::sh -c touch% /tmp/pwned",
    "https://user:secret@github.com/org/repo",
    "https://github.com/org/my repo",
    "https://github.com/org/re\tpo",
    "https://",
    "",
]
REFS = [
    "HEAD",
    "main",
    "v1.2.3",
    "feature/new-ui",
    "refs/heads/main",
    "a" * 40,
    "1.0+build",
    "_private",
    "-x",
    "../etc",
    "main..dev",
    "main@{1}",
    "a//b",
    "topic.lock",
    "ends/",
    "ends.",
    "with space",
    ".hidden",
    "a" * 256,
    "",
]
NAMES = ["hello", "my-image", "A.b_c-1", "9lives", "-dash", ".dot", "_under", "a" * 64, "a" * 65]
NAMES += ["sp ace", "slash/name", "ünï", ""]


def _python_accepts(check: Any, value: str, *args: Any) -> bool:
    try:
        check(value, *args)
    except validation.InvalidRequest:
        return False
    return True


def test_form_checks_agree_with_the_api(node_modules: Path) -> None:
    # The form must neither block what the API accepts nor pass what it refuses.
    cases = [("repo", v) for v in REPOS] + [("ref", v) for v in REFS]
    cases += [("name", v) for v in NAMES]
    results = _js(node_modules, *(["check", INFO, field, value] for field, value in cases))
    python = {
        "repo": lambda v: _python_accepts(validation.validate_repo_url, v),
        "ref": lambda v: _python_accepts(validation.validate_ref, v),
        "name": lambda v: _python_accepts(validation.validate_name, v),
    }
    disagree = [
        (field, value, message)
        for (field, value), message in zip(cases, results, strict=True)
        if (message is None) != python[field](value)
    ]
    assert not disagree, f"the form and the API disagree on: {disagree}"
    # and a refusal says something a person can act on
    assert "Allowed URLs match: ^https://" in results[REPOS.index("http://github.com/org/repo")]


def test_form_follows_the_servers_allow_list(node_modules: Path) -> None:
    info = {**INFO, "rules": {**INFO["rules"], "allowed_repo_patterns": [r"^https://git\.corp/"]}}
    ok, refused = _js(
        node_modules,
        ["check", info, "repo", "https://git.corp/team/repo"],
        ["check", info, "repo", "https://github.com/org/repo"],
    )
    assert ok is None
    assert "https://git\\.corp/" in refused


def test_default_name_matches_the_api(node_modules: Path) -> None:
    urls = [
        "https://github.com/org/my-repo.git",
        "https://github.com/org/my-repo/",
        "https://github.com/org/My Repo.git",
        "https://gitlab.com/a/b/c.d?x=1#frag",
        "https://github.com/org/.hidden",
        "https://github.com/",
        "https://github.com/org/" + "x" * 80,
        "git@github.com:org/thing.git",
    ]
    got = _js(node_modules, *(["defaultNameForRepo", u] for u in urls))
    assert got == [validation.default_name_for_repo(u) for u in urls]


def test_phase_bar_model(node_modules: Path) -> None:
    running = {"state": "building", "push": True, "push_error": None}
    failed = {"state": "failed", "push": False, "push_error": None}
    built = {"state": "built", "push": True, "push_error": "denied"}
    queued = {"state": "queued", "push": False, "push_error": None}
    steps = _js(
        node_modules,
        ["phaseSteps", running, 2],
        ["phaseSteps", failed, 2],  # failed while building: building is the red step
        ["phaseSteps", built, 3],
        ["phaseSteps", queued, 0],
    )
    assert steps == [
        ["complete", "complete", "active", "pending", "pending"],
        ["complete", "complete", "failed", "skipped", "failed"],
        ["complete", "complete", "complete", "failed", "complete"],
        ["active", "pending", "pending", "skipped", "pending"],
    ]
    lines = _js(node_modules, *(["phaseLines", s] for s in steps))
    assert lines == [
        [False, True, True, False, False],
        [False, True, True, False, False],  # no green line into "failed" after a failed step
        [False, True, True, True, False],
        [False, False, False, False, False],
    ]


def test_owner_field_only_for_callers_who_may_build_for_others(node_modules: Path) -> None:
    def info(perm: dict[str, Any]) -> dict[str, Any]:
        return {**INFO, "permissions": {"build": perm}}

    own, team, admin, group_only, users, other = _js(
        node_modules,
        ["ownerField", info({"all": False, "owners": ["alice"], "groups": []})],
        ["ownerField", info({"all": False, "owners": ["alice"], "groups": ["team"]})],
        ["ownerField", info({"all": True, "owners": [], "groups": []})],
        ["ownerField", info({"all": False, "owners": [], "groups": ["team"]})],
        ["ownerField", info({"all": False, "owners": ["alice", "frank"], "groups": []})],
        ["ownerField", info({"all": False, "owners": ["frank"], "groups": []})],
    )
    assert own["show"] is False and own["initial"] == "alice"
    # an owner is a Hub user: a group grant offers free text (its members), never the group name
    assert team["show"] is True and team["free"] is True and team["groups"] == ["team"]
    assert [c["value"] for c in team["choices"]] == ["alice"] and team["initial"] == "alice"
    assert admin["show"] is True and admin["free"] is True and admin["initial"] == "alice"
    assert group_only["show"] is True and group_only["free"] is True
    assert group_only["choices"] == [] and group_only["initial"] == ""
    assert users["show"] is True and users["free"] is False
    assert [c["value"] for c in users["choices"]] == ["alice", "frank"]
    # one choice that is not the caller: no field, but the build goes to that owner
    assert other["show"] is False and other["initial"] == "frank"


def test_log_lines_for_the_terminal(node_modules: Path) -> None:
    got = _js(
        node_modules,
        ["terminalLine", "no newline"],
        ["terminalLine", "one\n"],
        ["terminalLine", "a\nb\r\nc"],
        ["terminalLine", "\x1b[31mred\x1b[0m"],
        ["terminalLine", "50%\r100%"],
        ["stripAnsi", "\x1b[1;34mpip\x1b[0m install \x1b]0;title\x07x"],
        ["humanSize", 0],
        ["humanSize", 812_345_678],
        ["humanSize", 2_400_000_000],
        ["humanSize", None],
    )
    assert got == [
        "no newline\r\n",
        "one\r\n",
        "a\r\nb\r\nc\r\n",
        "\x1b[31mred\x1b[0m\r\n",
        "50%\r100%\r\n",  # a lone \r (progress bars) stays
        "pip install x",
        "0 B",
        "812 MB",
        "2.40 GB",
        "—",
    ]


def test_frontend_sources_typecheck_and_are_formatted(node_modules: Path) -> None:
    npm = shutil.which("npm")
    assert npm
    result = subprocess.run(
        [npm, "run", "--silent", "lint"], cwd=FRONTEND, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_launch_link_from_the_admins_template(node_modules: Path) -> None:
    image = "registry.example.org/r2d-alice-hello:0123abc"
    got = _js(
        node_modules,
        ["launchHref", "/hub/spawn?opt-image={image}", image, "hello", "alice"],
        ["launchHref", "/hub/spawn/{user}/{image_name}?opt-image={image}", image, "a b", "al&ce"],
        ["launchHref", "", image, "hello", "alice"],
        ["launchHref", "javascript:alert(1)//{image}", image, "hello", "alice"],
        ["launchHref", "/hub/spawn", image, "hello", "alice"],
    )
    assert got == [
        "/hub/spawn?opt-image=registry.example.org%2Fr2d-alice-hello%3A0123abc",
        "/hub/spawn/al%26ce/a%20b?opt-image=registry.example.org%2Fr2d-alice-hello%3A0123abc",
        None,
        None,
        None,
    ]


def test_launch_button_setting_is_checked() -> None:
    from traitlets import TraitError

    from r2d_tornado.launch import LaunchButton

    assert LaunchButton().url == ""
    assert LaunchButton(url="/hub/spawn?opt-image={image}").url.endswith("{image}")
    for bad in ("/hub/spawn", "javascript:x({image})", "hub/spawn?image={image}"):
        with pytest.raises(TraitError):
            LaunchButton(url=bad)
