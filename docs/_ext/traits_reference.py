"""Generate the configuration reference from the traitlets classes (every ``config=True`` trait)."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

CLASSES = [
    "r2d_tornado.app.R2DService",
    "r2d_core.manager.BuildManager",
    "r2d_core.engine.DockerEngine",
    "r2d_core.lifecycle.LifecyclePolicy",
    "r2d_core.options.BuildOptions",
    "r2d_core.builders.Builder",
    "r2d_core.builders.LocalProcessBuilder",
    "r2d_core.builders.DockerBuilder",
    "r2d_core.registry.config.Registry",
    "r2d_core.providers.RepoProviders",
    "r2d_tornado.launch.LaunchButton",
    "r2d_core.scopes.HubGroups",
    "r2d_tljh.settings.R2DPlugin",
]


def _load(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _own_traits(cls: type) -> dict:
    """The class's own settings, and those of its project bases that the reference does not
    list on their own (a settings base class such as ``BuildManagerConfig``, split out of a
    long module: its traits are configured, and documented, under the class that uses them)."""
    listed = set(CLASSES)
    traits = {}
    for base in reversed(cls.__mro__):
        path = f"{base.__module__}.{base.__qualname__}"
        if base is cls or (base.__module__.startswith("r2d_") and path not in listed):
            traits.update(base.class_own_traits(config=True))
    return traits


#: environment variables that feed dynamic defaults: the reference shows the default without them
_ENV_PREFIXES = ("R2D_", "JUPYTERHUB_", "DOCKER_")


@contextlib.contextmanager
def _clean_environment() -> Iterator[None]:
    saved = {k: v for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES)}
    for key in saved:
        del os.environ[key]
    try:
        yield
    finally:
        os.environ.update(saved)


def default_text(cls: type, name: str, trait: Any) -> str:
    """The default as an admin gets it. A ``@default`` method (an environment variable, a value
    derived from another setting) is not what ``default_value_repr()`` shows (``0``, ``''``): it
    is computed on a bare instance with none of the service's environment variables set. A value
    that depends on this machine (a path of this Python or home) is named as computed."""
    generator = cls._all_trait_default_generators.get(name)
    if generator is None or getattr(generator, "__self__", None) is trait:
        return f"default `{trait.default_value_repr()}`"
    try:
        with _clean_environment():
            value = getattr(cls.__new__(cls), name)
    except Exception:
        return "default computed at start (see below)"
    if isinstance(value, type):
        value = f"{value.__module__}.{value.__qualname__}"
    text = repr(value)
    if any(p in text for p in (sys.prefix, sys.executable, os.path.expanduser("~"))):
        return "default computed at start (see below)"
    return f"default `{text}`"


def render() -> str:
    out = [
        "# Configuration reference",
        "",
        "Every setting is a traitlets trait: set it in `r2d_service_config.py` (the service), in a",
        "`jupyterhub_config.d` file (the TLJH plugin), or on the command line as",
        "`--Class.trait=value`. This page is generated from the code. The defaults shown are those",
        "of a process with no `R2D_*`, `JUPYTERHUB_*` or `DOCKER_*` environment variable.",
        "",
        "Settings that name an environment variable (`env R2D_...`) read it when the file does",
        "not set them; an empty variable means the default. A value that does not parse",
        "(`R2D_MAX_CONCURRENT_BUILDS=four`, `R2D_ALWAYS_PUSH=sometimes`) stops the service at",
        "start with an error naming the variable and what it takes, never a silent default.",
        "Switches take `1/0`, `true/false`, `yes/no` or `on/off`; sizes take bytes or `500M`, `5G`.",
        "",
    ]
    for path in CLASSES:
        try:
            cls = _load(path)
        except Exception as e:  # optional parts missing: say so instead of failing the build
            out += [f"## `{path}`", "", f"(not importable here: {e})", ""]
            continue
        out += [f"## `{cls.__name__}`", "", f"`{path}`", ""]
        doc = inspect.getdoc(cls)
        if doc:
            out += [doc.split("\n\n")[0], ""]
        traits = _own_traits(cls)
        if not traits:
            out += ["(no settings of its own)", ""]
        for name, trait in sorted(traits.items()):
            default = default_text(cls, name, trait)
            help_text = textwrap.dedent(trait.help or "").strip().replace("\n", " ")
            out += [
                f"`{cls.__name__}.{name}`",
                f": *{type(trait).__name__}*, {default}. {help_text}",
                "",
            ]
    return "\n".join(out) + "\n"


def setup(app: object) -> dict[str, object]:
    from generated_page import register

    return register(app, "reference/config.md", render)
