"""repo2docker options per build under the admin policy, image identity, annotations.

Policy checks are pure; the options themselves are proved end to end on the real dockerd: each
reaches repo2docker as its own flag and changes the image as repo2docker documents it (for a
Dockerfile repository repo2docker passes ``--user-id``/``--user-name``/``--target-repo-dir`` as the
``NB_UID``/``NB_USER``/``REPO_DIR`` build arguments, which the fixture's Dockerfile uses).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess

import pytest
from traitlets import TraitError
from traitlets.config import Config

from r2d_core.builders import LocalProcessBuilder
from r2d_core.engine import DockerEngine
from r2d_core.errors import InvalidRequest
from r2d_core.models import BuildState, parse_labels
from r2d_core.naming import DEFAULT_IMAGE_NAME_TEMPLATE, image_reference, validate_template
from r2d_core.options import (
    APPENDIX_SCOPE,
    OPTION_NAMES,
    BuildOptions,
    options_digest,
    repo2docker_option_args,
    validate_annotations,
)
from r2d_core.schema import validate_body
from tests import test_manager
from tests.harness import BUSYBOX_IMAGE
from tests.test_manager import make_config, messages, wait_done

make_manager = test_manager.make_manager  # the fixture

ALL = list(OPTION_NAMES)


def policy(**traits: object) -> BuildOptions:
    c = Config()
    for key, value in traits.items():
        setattr(c.BuildOptions, key, value)
    return BuildOptions(config=c)


# ---- the policy (pure) ----------------------------------------------------------------------------
def test_every_option_is_off_by_default():
    p = BuildOptions()
    assert p.effective(None) == {}
    for name, value in [
        ("subdir", "a"),
        ("target_repo_dir", "/srv/x"),
        ("user_id", 1001),
        ("user_name", "ann"),
        ("build_args", {"A": "1"}),
        ("appendix", "RUN true"),
        ("platform", "linux/amd64"),
    ]:
        with pytest.raises(InvalidRequest) as e:
            p.effective({name: value}, may_appendix=True)
        assert e.value.details["field"] == f"options.{name}"
        assert "may not be set" in str(e.value)


@pytest.mark.parametrize(
    "name, value",
    [
        ("subdir", "../etc"),
        ("subdir", "a/../../b"),
        ("subdir", "/etc"),
        ("subdir", "a//b"),
        ("subdir", "."),
        ("subdir", "a\nb"),
        ("subdir", "$(id)"),
        ("target_repo_dir", "relative"),
        ("target_repo_dir", "/etc"),
        ("target_repo_dir", "/srv/../etc"),
        ("target_repo_dir", "/srvx/a"),
        ("target_repo_dir", "/srv/a b"),
        ("target_repo_dir", "/srv/a\n"),
        ("user_id", 0),
        ("user_id", 999),
        ("user_id", 70000),
        ("user_id", True),
        ("user_id", "1000"),
        ("user_name", "root"),
        ("user_name", "Ann"),
        ("user_name", "a b"),
        ("user_name", "a;rm"),
        ("user_name", "x" * 40),
        ("build_args", {"NB_UID": "0"}),
        ("build_args", {"REPO_DIR": "/etc"}),
        ("build_args", {"BUILDKIT_SYNTAX": "evil/frontend"}),
        ("build_args", {"HTTP_PROXY": "http://evil"}),
        ("build_args", {"1A": "x"}),
        ("build_args", {"A-B": "x"}),
        ("build_args", {"A": "line\nbreak"}),
        ("build_args", {"A": "x" * 2000}),
        ("build_args", {f"A{i}": "x" for i in range(17)}),
        ("build_args", ["A=1"]),
        ("appendix", ""),
        ("appendix", "RUN x\r\nRUN y"),
        ("appendix", "RUN \x00"),
        ("appendix", "x" * 20000),
        ("platform", "linux/arm64"),
        ("platform", "--push"),
        ("nonsense", 1),
    ],
)
def test_hostile_or_out_of_bounds_values_are_refused_naming_the_field(name, value):
    p = policy(allowed=ALL)
    with pytest.raises(InvalidRequest) as e:
        p.effective({name: value}, may_appendix=True)
    assert e.value.details["field"] == f"options.{name}", e.value
    assert f"options.{name}" in str(e.value)


def test_appendix_needs_the_scope_and_the_policy():
    p = policy(allowed=ALL)
    with pytest.raises(InvalidRequest, match=APPENDIX_SCOPE):
        p.effective({"appendix": "RUN true"}, may_appendix=False)
    assert p.effective({"appendix": "RUN true"}, may_appendix=True) == {"appendix": "RUN true"}
    assert p.may_use_appendix(frozenset({APPENDIX_SCOPE}))
    assert not p.may_use_appendix(frozenset({"custom:repo2docker:build"}))
    assert not policy(allowed=["subdir"]).may_use_appendix(frozenset({APPENDIX_SCOPE}))
    # the UI sees appendix only where the caller may send it
    assert "appendix" not in p.describe(may_appendix=False)["allowed"]
    assert "appendix" in p.describe(may_appendix=True)["allowed"]


def test_defaults_apply_to_every_build_and_merge_build_args():
    p = policy(
        allowed=["build_args", "user_id"],
        defaults={"target_repo_dir": "/srv/repo", "build_args": {"MODE": "prod", "X": "1"}},
    )
    assert p.effective(None) == {
        "target_repo_dir": "/srv/repo",
        "build_args": {"MODE": "prod", "X": "1"},
    }
    assert p.effective({"build_args": {"X": "2"}, "user_id": 1500}) == {
        "target_repo_dir": "/srv/repo",
        "user_id": 1500,
        "build_args": {"MODE": "prod", "X": "2"},
    }
    # a default of an option users may not set stays fixed
    with pytest.raises(InvalidRequest, match=r"options\.target_repo_dir"):
        p.effective({"target_repo_dir": "/srv/other"})


def test_admin_settings_are_checked_at_start():
    with pytest.raises(TraitError, match="unknown option"):
        policy(allowed=["subdir", "dockerfile"])
    with pytest.raises(TraitError, match=r"options\.subdir"):
        policy(defaults={"subdir": "../x"})
    with pytest.raises(TraitError, match=r"options\.build_args"):
        policy(defaults={"build_args": {"NB_UID": "0"}})


def test_bounds_are_configurable():
    p = policy(
        allowed=ALL,
        target_repo_dir_prefixes=["/opt/work/"],
        user_id_range=(2000, 2999),
        platforms=["linux/amd64", "linux/arm64"],
        allowed_build_args=["GREETING"],
    )
    assert p.effective({"target_repo_dir": "/opt/work/x/"}) == {"target_repo_dir": "/opt/work/x"}
    assert p.effective({"target_repo_dir": "/opt/work"}) == {"target_repo_dir": "/opt/work"}
    with pytest.raises(InvalidRequest):
        p.effective({"target_repo_dir": "/srv/x"})
    assert p.effective({"user_id": 2500})["user_id"] == 2500
    with pytest.raises(InvalidRequest):
        p.effective({"user_id": 1000})
    assert p.effective({"platform": "linux/arm64"})["platform"] == "linux/arm64"
    with pytest.raises(InvalidRequest, match="GREETING"):
        p.effective({"build_args": {"OTHER": "x"}})


def test_each_value_is_one_argv_element():
    options = {
        "subdir": "sub dir",
        "target_repo_dir": "/srv/r",
        "user_id": 1234,
        "user_name": "ann",
        "build_args": {"B": "two words; $(id)", "A": "x=y"},
        "appendix": "RUN echo 'a'\nRUN echo b",
        "platform": "linux/amd64",
    }
    assert repo2docker_option_args(options) == [
        "--subdir",
        "sub dir",
        "--target-repo-dir",
        "/srv/r",
        "--user-id",
        "1234",
        "--user-name",
        "ann",
        "--build-arg",
        "A=x=y",
        "--build-arg",
        "B=two words; $(id)",
        "--appendix",
        "RUN echo 'a'\nRUN echo b",
        "--Repo2Docker.platform=linux/amd64",
    ]


def test_schema_checks_the_shape():
    ok = {"repo": "https://example.org/r", "options": {"user_id": 1000}, "annotations": {}}
    assert validate_body("BuildRequest", ok) is ok
    for body, field in [
        ({"options": {"user_id": "x"}}, "options.user_id"),
        ({"options": {"dockerfile": "x"}}, "options"),
        ({"options": {"build_args": {"A": 1}}}, "options.build_args"),
        ({"options": []}, "options"),
        ({"annotations": {"a.b": 1}}, "annotations.a.b"),
        ({"annotations": {f"a.k{i}": "v" for i in range(33)}}, "annotations"),
    ]:
        with pytest.raises(InvalidRequest) as e:
            validate_body("BuildRequest", {"repo": "https://example.org/r", **body})
        assert e.value.details["field"].startswith(field.split(".")[0]), (body, e.value)


# ---- identity ------------------------------------------------------------------------------------
def test_options_digest_is_in_the_tag_and_distinct():
    a = {"user_id": 1000}
    b = {"user_id": 1001}
    assert options_digest({}) == "" and len(options_digest(a)) == 16
    assert options_digest(a) != options_digest(b)
    assert options_digest({"build_args": {"A": "1", "B": "2"}}) == options_digest(
        {"build_args": {"B": "2", "A": "1"}}
    )
    refs = {
        image_reference(
            DEFAULT_IMAGE_NAME_TEMPLATE,
            prefix="r2d-",
            owner="ann",
            name="x",
            sha="a" * 40,
            options_digest=options_digest(o),
        )
        for o in ({}, a, b)
    }
    assert len(refs) == 3
    # no options: the names images always had
    assert "r2d-ann-x:" + "a" * 40 in refs
    # a ref after the sha cannot pose as a digest: "<sha>-o<digest>-main" is no plain tag
    template = "{prefix}{owner}-{name}:{sha}-{ref}"
    digest = options_digest(a)
    plain = image_reference(
        template, prefix="", owner="o", name="n", sha="a" * 40, ref=f"o{digest}-main"
    )
    with_options = image_reference(
        template, prefix="", owner="o", name="n", sha="a" * 40, ref="main", options_digest=digest
    )
    assert plain != with_options and with_options.endswith(f"_o{digest}-main")
    # {options} in an explicit template goes right after the sha, nowhere else
    validate_template("{prefix}{owner}/{name}:{short_sha}{options}")
    for bad in (
        "{prefix}{owner}-{name}{options}:{sha}",
        "{prefix}{owner}-{name}:{ref}{options}-{sha}",
    ):
        with pytest.raises(InvalidRequest, match="options"):
            validate_template(bad)


# ---- annotations ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "annotations, field",
    [
        ({"nodot": "x"}, "annotations.nodot"),
        ({"Upper.case": "x"}, "annotations.Upper.case"),
        ({"a.b c": "x"}, "annotations.a.b c"),
        ({"tljh.mem_limit": "2G\n"}, "annotations.tljh.mem_limit"),
        ({"tljh.mem_limit": "2G\u202e"}, "annotations.tljh.mem_limit"),
        ({"tljh.x": "v" * 257}, "annotations.tljh.x"),
        ({"a." + "b" * 120: "x"}, "annotations.a." + "b" * 120),
        ({f"a.k{i}": "v" for i in range(33)}, "annotations"),
        ({f"a.k{i}": "v" * 256 for i in range(32)}, "annotations"),
    ],
)
def test_bad_annotations_are_refused(annotations, field):
    with pytest.raises(InvalidRequest) as e:
        validate_annotations(annotations)
    assert e.value.details["field"] == field


def test_good_annotations_pass_unchanged():
    given = {
        "tljh.mem_limit": "2G",
        "display.description": "Été — un café ☕",
        "x.cpu_limit": "1.5",
    }
    assert validate_annotations(given) == given


# ---- end to end on the real dockerd ----------------------------------------------------------------
DOCKERFILE = f"""FROM {BUSYBOX_IMAGE}
ARG NB_UID=1000
ARG NB_USER=jovyan
ARG REPO_DIR=/home/jovyan
ARG GREETING=unset
COPY . ${{REPO_DIR}}
RUN echo "$GREETING" > /greeting && echo "$NB_USER" > /nb_user && echo "$REPO_DIR" > /repo_dir
USER ${{NB_UID}}
"""


@pytest.fixture(scope="module")
def options_repo(git_server):
    name = f"opts-{secrets.token_hex(3)}"
    git_server.add_repo(
        name,
        {
            "Dockerfile": f"FROM {BUSYBOX_IMAGE}\nRUN echo top > /which\n",
            "sub/Dockerfile": DOCKERFILE,
            "sub/marker.txt": "in the subfolder\n",
        },
    )
    return name


def run_in(docker_host: str, image: str, script: str) -> str:
    env = {**os.environ, "DOCKER_HOST": docker_host}
    out = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--pull",
            "never",
            "--network",
            "none",
            image,
            "sh",
            "-c",
            script,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.docker
@pytest.mark.parametrize("builder", ["local", "docker"])
async def test_options_reach_the_image_and_make_a_distinct_one(
    make_manager, git_server, options_repo, docker_host, builder
):
    m = await make_manager(builder)
    m.build_options.allowed = ["subdir", "target_repo_dir", "user_id", "user_name", "build_args"]
    repo = git_server.url(options_repo)
    owner = f"opt-{builder}"
    plain = await m.submit(repo=repo, owner=owner, name="o")
    options = {
        "subdir": "sub",
        "target_repo_dir": "/srv/checkout",
        "user_id": 1234,
        "user_name": "ann",
        "build_args": {"GREETING": "hello; $(id) `x`"},
    }
    annotations = {"tljh.mem_limit": "2G", "display.description": "with options"}
    built = await m.submit(
        repo=repo, owner=owner, name="o", options=options, annotations=annotations
    )
    await wait_done(plain.build)
    await wait_done(built.build)
    build = built.build
    assert plain.build.state == build.state == BuildState.BUILT, (build.error, messages(build))
    # two images of one commit
    assert build.sha == plain.build.sha and build.image != plain.build.image
    assert build.image.endswith(f"{build.sha}-o{options_digest(options)}")
    assert any(line.startswith("Build options: ") for line in messages(build))
    assert build.to_dict()["options"] == options and build.to_dict()["annotations"] == annotations

    out = run_in(
        docker_host,
        build.image,
        "id -u; cat /greeting /nb_user /repo_dir; cat /srv/checkout/marker.txt",
    )
    assert out.splitlines() == [
        "1234",
        "hello; $(id) `x`",
        "ann",
        "/srv/checkout",
        "in the subfolder",
    ]
    assert run_in(docker_host, plain.build.image, "cat /which").strip() == "top"

    engine = DockerEngine(host=docker_host)
    try:
        labels = (await engine.inspect_image(build.image))["Config"]["Labels"]
    finally:
        await engine.close()
    fields = parse_labels(labels)
    assert json.loads(fields["options"]) == options
    assert fields["options-digest"] == options_digest(options)
    assert fields["annotation.tljh.mem_limit"] == "2G"

    # skip-if-built and listings keep the two apart
    again = await m.submit(repo=repo, owner=owner, name="o", options=options)
    assert again.skipped and again.reference == build.image
    group = (await m.list_images([owner]))[0]
    by_ref = {v.reference: v for v in group.versions}
    assert set(by_ref) == {build.image, plain.build.image}
    assert by_ref[build.image].annotations == annotations
    assert by_ref[build.image].options == options
    assert by_ref[plain.build.image].options == {} and by_ref[plain.build.image].annotations == {}

    # a restarted service finds options and annotations in the labels
    second = await make_manager(builder)
    group = (await second.list_images([owner]))[0]
    version = next(v for v in group.versions if v.reference == build.image)
    assert version.annotations == annotations and version.options == options
    if builder == "docker":
        recovered = second.get_build(build.id)
        assert recovered.recovered and recovered.options == options
        assert recovered.annotations == annotations


@pytest.mark.docker
async def test_subdir_symlink_out_of_the_checkout_fails_the_build(make_manager, git_server):
    name = f"escape-{secrets.token_hex(3)}"
    git_server.add_repo(name, {"Dockerfile": f"FROM {BUSYBOX_IMAGE}\n"})
    # a symlink committed into the repository, pointing at the builder's own files
    path = git_server.base / name
    os.symlink("/etc", path / "etc")
    git_server.add_commit(name, {"README": "x\n"})
    m = await make_manager()
    m.build_options.allowed = ["subdir"]
    result = await m.submit(repo=git_server.url(name), owner="esc", options={"subdir": "etc"})
    await wait_done(result.build)
    assert result.build.state == BuildState.FAILED
    # the fetch stage refuses the link itself (check_links) before the subdir's realpath check
    # (defence in depth) would: either way the build stops at the escape, naming it
    said = (result.build.error or "") + " ".join(messages(result.build))
    assert "outside the repository" in said and "etc" in said
    # a sub-folder that does not exist, in a repository without the escaping link
    clean = f"plain-{secrets.token_hex(3)}"
    git_server.add_repo(clean, {"Dockerfile": f"FROM {BUSYBOX_IMAGE}\n"})
    missing = await m.submit(repo=git_server.url(clean), owner="esc", options={"subdir": "nope"})
    await wait_done(missing.build)
    assert missing.build.state == BuildState.FAILED
    assert "is not a folder" in " ".join(messages(missing.build))


@pytest.mark.docker
async def test_platform_option_builds_for_the_engine_platform(
    make_manager, git_server, options_repo, docker_host
):
    m = await make_manager()
    m.build_options.allowed = ["platform"]
    result = await m.submit(
        repo=git_server.url(options_repo), owner="plat", options={"platform": "linux/amd64"}
    )
    await wait_done(result.build)
    assert result.build.state == BuildState.BUILT, result.build.error
    engine = DockerEngine(host=docker_host)
    try:
        info = await engine.inspect_image(result.build.image)
    finally:
        await engine.close()
    assert info["Architecture"] == "amd64"


@pytest.mark.docker
async def test_refused_options_start_nothing(make_manager, git_server, options_repo):
    m = await make_manager()
    m.build_options.allowed = ["subdir"]
    for options in ({"user_id": 1000}, {"subdir": "../x"}, {"appendix": "RUN id"}):
        with pytest.raises(InvalidRequest):
            await m.submit(repo=git_server.url(options_repo), owner="ref", options=options)
    with pytest.raises(InvalidRequest, match="annotation"):
        await m.submit(repo=git_server.url(options_repo), owner="ref", annotations={"x": "y"})
    assert m.list_builds() == []


def test_appendix_reaches_the_dockerfile_as_given(tmp_path):
    """repo2docker --no-build prints the Dockerfile it would build for a buildpack repository
    (which cannot be built offline here): the appendix (one argv element) is there verbatim
    and the user id from the options owns the files (target_repo_dir is the REPO_DIR build
    argument, proved by the end-to-end build above)."""
    (tmp_path / "README.md").write_text("x\n")
    options = {
        "appendix": "RUN echo 'appended' > /appended\nRUN true",
        "user_id": 1500,
        "target_repo_dir": "/srv/repo",
    }
    argv = [
        *LocalProcessBuilder().command,
        "--no-build",
        "--debug",
        "--no-run",
        *repo2docker_option_args(options),
        str(tmp_path),
    ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    text = out.stdout + out.stderr
    assert "RUN echo 'appended' > /appended\nRUN true" in text, text[-2000:]
    assert "COPY --chown=1500:1500" in text
    assert "ARG REPO_DIR=" in text


def test_manager_config_reaches_the_policy(docker_host):
    c = make_config(docker_host, "local")
    c.BuildOptions.allowed = ["subdir"]
    from r2d_core.manager import BuildManager

    m = BuildManager(config=c)
    assert m.build_options.allowed == ["subdir"]


def test_annotation_limits_are_parsed_and_held_to_the_maximum():
    from r2d_core.spawner import AnnotationLimits, parse_bytes

    limits = AnnotationLimits(None, max_mem_limit="1G", max_cpu_limit=2.0)  # type: ignore[arg-type]
    assert parse_bytes("512M") == 512 * 1024**2 and parse_bytes("2G") == 2 * 1024**3
    assert limits.limits({"tljh.mem_limit": "512M", "tljh.cpu_limit": "1.5"}) == {
        "mem_limit": 512 * 1024**2,
        "cpu_limit": 1.5,
    }
    assert limits.limits({"tljh.mem_limit": "64G", "tljh.cpu_limit": "64"}) == {
        "mem_limit": 1024**3,
        "cpu_limit": 2.0,
    }
    # not parsable, negative, infinite, or another namespace: ignored
    for bad in (
        {"tljh.mem_limit": "lots", "tljh.cpu_limit": "nan"},
        {"tljh.mem_limit": "0", "tljh.cpu_limit": "-1"},
        {"tljh.cpu_limit": "inf"},
        {"other.mem_limit": "1G"},
    ):
        assert limits.limits(bad) == {}, bad
    assert AnnotationLimits(None, namespace="lab").limits({"lab.cpu_limit": "8"}) == {  # type: ignore[arg-type]
        "cpu_limit": 8.0
    }
