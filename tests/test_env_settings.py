"""Settings read from the environment: a value that does not parse is an error naming the variable.

An admin's typo in a deployment's environment (``R2D_MAX_CONCURRENT_BUILDS=four``,
``R2D_ALWAYS_PUSH=True``) must not quietly mean the default: every setting with an env fallback
reads it through :func:`r2d_core.sizes.env_value`, which says what it takes.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from traitlets import TraitError

from r2d_core.builders import DockerBuilder, LocalProcessBuilder
from r2d_core.lifecycle import LifecyclePolicy
from r2d_core.manager_config import BuildManagerConfig
from tests.harness.procs import free_port

# (class, trait, environment variable, a value it must refuse, a good value, what that gives)
SETTINGS = [
    (BuildManagerConfig, "max_concurrent_builds", "R2D_MAX_CONCURRENT_BUILDS", "four", "4", 4),
    (BuildManagerConfig, "max_builds_per_owner", "R2D_MAX_BUILDS_PER_OWNER", "1.5", "3", 3),
    (BuildManagerConfig, "max_queued_builds", "R2D_MAX_QUEUED_BUILDS", "lots", "7", 7),
    (
        BuildManagerConfig,
        "max_queued_builds_per_owner",
        "R2D_MAX_QUEUED_BUILDS_PER_OWNER",
        "x",
        " 2 ",
        2,
    ),
    (BuildManagerConfig, "max_log_bytes", "R2D_MAX_LOG_BYTES", "4 megs", "8M", 8 * 1024**2),
    (BuildManagerConfig, "max_total_log_bytes", "R2D_MAX_TOTAL_LOG_BYTES", "big", "1G", 1024**3),
    (BuildManagerConfig, "build_timeout", "R2D_BUILD_TIMEOUT", "1h", "90", 90.0),
    (
        BuildManagerConfig,
        "build_inactivity_timeout",
        "R2D_BUILD_INACTIVITY_TIMEOUT",
        "10m",
        "5.5",
        5.5,
    ),
    (BuildManagerConfig, "always_push", "R2D_ALWAYS_PUSH", "sometimes", "True", True),
    (BuildManagerConfig, "builder_class", "R2D_BUILDER", "dokcer", "Docker", DockerBuilder),
    (LifecyclePolicy, "keep_versions", "R2D_KEEP_VERSIONS", "three", "3", 3),
    (LifecyclePolicy, "min_free_bytes", "R2D_MIN_FREE_BYTES", "5 gigs", "5G", 5 * 1024**3),
    (LifecyclePolicy, "prune_dangling_images", "R2D_PRUNE_DANGLING_IMAGES", "maybe", "off", False),
    (DockerBuilder, "pull_policy", "R2D_BUILDER_PULL_POLICY", "sometimes", "Always", "always"),
    (LocalProcessBuilder, "submodules", "R2D_SUBMODULES", "perhaps", "no", False),
    (LocalProcessBuilder, "in_process", "R2D_IN_PROCESS", "2", "ON", True),
]


@pytest.mark.parametrize(("cls", "trait", "env", "bad", "good", "value"), SETTINGS)
def test_a_bad_environment_value_is_an_error_naming_it(
    monkeypatch, cls, trait, env, bad, good, value
):
    monkeypatch.setenv(env, bad)
    with pytest.raises(TraitError) as e:
        getattr(cls(), trait)
    message = str(e.value)
    assert f"{env}={bad!r} is not valid: expected " in message
    assert "unset it for the default" in message

    monkeypatch.setenv(env, good)
    assert getattr(cls(), trait) == value


@pytest.mark.parametrize(("cls", "trait", "env"), [s[:3] for s in SETTINGS])
def test_unset_or_empty_means_the_default(monkeypatch, cls, trait, env):
    monkeypatch.delenv(env, raising=False)
    default = getattr(cls(), trait)
    monkeypatch.setenv(env, "  ")
    assert getattr(cls(), trait) == default


def test_the_defaults_without_environment(monkeypatch):
    for _, _, env, *_ in SETTINGS:
        monkeypatch.delenv(env, raising=False)
    manager = BuildManagerConfig()
    assert manager.builder_class is LocalProcessBuilder
    assert manager.always_push is False
    assert manager.max_concurrent_builds == 2
    assert manager.max_log_bytes == 4 * 1024**2
    assert LocalProcessBuilder().in_process is True


def test_the_service_refuses_to_start_on_a_bad_value(tmp_path):
    # at start, not at the first build request (traitlets computes defaults at first use)
    env = {
        **os.environ,
        "R2D_MAX_BUILDS_PER_OWNER": "one",
        "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{free_port()}",
        "JUPYTERHUB_API_TOKEN": "unused",
        "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock",
    }
    result = subprocess.run(
        [sys.executable, "-m", "r2d_tornado.app"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "R2D_MAX_BUILDS_PER_OWNER='one' is not valid: expected a whole number" in result.stderr
