"""The settings of :class:`~r2d_core.manager.BuildManager`: every ``c.BuildManager.*`` trait.

A pure move out of ``manager.py`` (which held the queue façade and some 350 lines of traits):
:class:`BuildManagerConfig` is the base class :class:`~r2d_core.manager.BuildManager` inherits its
traits from, so ``c.BuildManager.*`` settings apply as before (traitlets reads the sections of a
class and of its bases). The configuration reference lists them under ``BuildManager``.
"""

from __future__ import annotations

import os
from typing import Any

from traitlets import Bool, Float, Instance, Int, List, Type, Unicode, default, validate
from traitlets.config import LoggingConfigurable

from . import metrics
from .builders import Builder, LocalProcessBuilder
from .engine import DockerEngine
from .errors import InvalidRequest
from .lifecycle import LifecyclePolicy
from .logs import LogBudget
from .naming import DEFAULT_IMAGE_NAME_TEMPLATE, validate_template
from .netpolicy import parse_networks
from .options import BuildOptions
from .registry.config import Registry
from .sizes import env_bool, env_choice, env_value, parse_bytes
from .validation import DEFAULT_ALLOWED_REPO_PATTERNS, check_allowed_pattern

__all__ = ["BuildManagerConfig"]


class BuildManagerConfig(LoggingConfigurable):
    """The settings (traits) of the build manager, configured as ``c.BuildManager.*``."""

    # ---- configuration --------------------------------------------------------------------------
    builder_class = Type(
        LocalProcessBuilder,
        klass=Builder,
        config=True,
        help="""The builder: ``r2d_core.builders.LocalProcessBuilder`` (default; repo2docker as a
        child process) or ``r2d_core.builders.DockerBuilder`` (repo2docker in a container; builds
        survive service restarts). Env: ``R2D_BUILDER`` (``local`` or ``docker``).""",
    )

    @default("builder_class")
    def _default_builder_class(self) -> type[Builder]:
        from .builders import DockerBuilder

        kind = env_choice("R2D_BUILDER", ("local", "docker"), "local")
        return DockerBuilder if kind == "docker" else LocalProcessBuilder

    image_prefix = Unicode(
        config=True,
        help="""Prefix of every image name, e.g. ``registry.example.org/r2d/`` (default ``r2d-``,
        env ``R2D_IMAGE_PREFIX``). With a registry configured, put its host first.""",
    )

    @default("image_prefix")
    def _default_image_prefix(self) -> str:
        return os.environ.get("R2D_IMAGE_PREFIX", "r2d-")

    image_name_template = Unicode(
        DEFAULT_IMAGE_NAME_TEMPLATE,
        config=True,
        help=f"""Template of image references, with the fields ``{{prefix}}``, ``{{owner}}``,
        ``{{name}}``, ``{{sha}}``, ``{{short_sha}}``, ``{{ref}}``, ``{{options}}`` (``-o`` and the
        digest of a build's options, empty without; placed right after the tag's sha when the
        template has none, so builds with different options are different images). Owner and name are escaped so no
        two owners can share an image repository; for that, each field before the tag must be
        followed by ``-``, ``_``, ``.``, ``/`` or the tag (``{{sha}}``/``{{short_sha}}`` need no
        separator), and ``{{ref}}`` may only appear in the tag. Default
        ``{DEFAULT_IMAGE_NAME_TEMPLATE}``.""",
    )

    @validate("image_name_template")
    def _check_template(self, proposal: Any) -> str:
        try:
            return validate_template(proposal["value"], self.image_prefix)
        except InvalidRequest as e:
            from traitlets import TraitError

            raise TraitError(str(e)) from None

    allowed_repo_patterns = List(
        Unicode(),
        config=True,
        help=f"""Regular expressions (``re.search``); a repository URL must match one to be built.
        They are matched against the URL's canonical form (lower-case scheme and host, default
        port dropped, no user name but for ssh, path without ``//``, ``.`` or trailing ``/``).
        Default ``{list(DEFAULT_ALLOWED_REPO_PATTERNS)!r}``: https to any host *name* (not an IP
        address); safe because the network policy (``allowed_networks``) refuses hosts that resolve
        to internal addresses. Env ``R2D_ALLOWED_REPO_PATTERNS`` (comma-separated). A pattern that
        names a host must pin it: ``^https://github\\.com`` is refused because it also matches
        ``https://github.com.evil.example/``; write ``^https://github\\.com/``. Local paths,
        ``file://`` and git remote helpers are refused whatever this says.""",
    )

    @default("allowed_repo_patterns")
    def _default_allowed(self) -> list[str]:
        env = os.environ.get("R2D_ALLOWED_REPO_PATTERNS")
        if env:  # traitlets does not validate dynamic defaults: check the env value here
            return self._check_patterns({"value": [p.strip() for p in env.split(",") if p.strip()]})
        return list(DEFAULT_ALLOWED_REPO_PATTERNS)

    @validate("allowed_repo_patterns")
    def _check_patterns(self, proposal: Any) -> list[str]:
        from traitlets import TraitError

        for pattern in proposal["value"]:
            try:
                check_allowed_pattern(pattern)
            except ValueError as e:
                raise TraitError(f"allowed_repo_patterns: {e}") from None
        return proposal["value"]

    allowed_networks = List(
        Unicode(),
        config=True,
        help="""Networks (CIDR, e.g. ``10.1.0.0/16``) the service and its builds may fetch
        repositories from although they are internal. By default (``[]``) a repository host that
        resolves to any loopback, private, link-local (cloud metadata ``169.254.169.254``), CGNAT,
        unique-local or multicast address is refused; the address actually connected is checked.
        Env ``R2D_ALLOWED_NETWORKS`` (comma-separated). Tests on one machine use
        ``["127.0.0.0/8"]``; an internal GitLab would need its subnet here.""",
    )

    @default("allowed_networks")
    def _default_allowed_networks(self) -> list[str]:
        env = os.environ.get("R2D_ALLOWED_NETWORKS", "")
        return self._check_networks({"value": [n.strip() for n in env.split(",") if n.strip()]})

    @validate("allowed_networks")
    def _check_networks(self, proposal: Any) -> list[str]:
        from traitlets import TraitError

        try:
            parse_networks(proposal["value"])
        except ValueError as e:
            raise TraitError(f"allowed_networks: {e}") from None
        return proposal["value"]

    max_concurrent_builds = Int(
        config=True,
        help="Builds running at once, for everybody (default 2; env R2D_MAX_CONCURRENT_BUILDS).",
    )

    @default("max_concurrent_builds")
    def _default_max(self) -> int:
        return env_value("R2D_MAX_CONCURRENT_BUILDS", int, 2)

    max_builds_per_owner = Int(
        config=True,
        help="Builds running at once for one owner (default 1; env R2D_MAX_BUILDS_PER_OWNER).",
    )

    @default("max_builds_per_owner")
    def _default_per_owner(self) -> int:
        return env_value("R2D_MAX_BUILDS_PER_OWNER", int, 1)

    @validate("max_concurrent_builds", "max_builds_per_owner")
    def _check_positive(self, proposal: Any) -> int:
        from traitlets import TraitError

        if proposal["value"] < 1:
            raise TraitError(
                f"{proposal['trait'].name} must be at least 1, not {proposal['value']}"
            )
        return proposal["value"]

    always_push = Bool(
        False,
        config=True,
        help="""Push every build when a registry is configured, whatever the request says
        (default False; env R2D_ALWAYS_PUSH=1). Use it where nodes pull images, e.g. z2jh.""",
    )

    @default("always_push")
    def _default_always_push(self) -> bool:
        return bool(env_value("R2D_ALWAYS_PUSH", env_bool, False))

    max_queued_builds = Int(
        config=True,
        help="""Builds waiting at most, for everybody; more are refused with 429 (default 100;
        env R2D_MAX_QUEUED_BUILDS).""",
    )

    @default("max_queued_builds")
    def _default_max_queued(self) -> int:
        return env_value("R2D_MAX_QUEUED_BUILDS", int, 100)

    max_queued_builds_per_owner = Int(
        config=True,
        help="""Builds one owner may have waiting; more are refused with 429 and a Retry-After
        header naming this limit, so one user cannot fill the queue for everybody (default 10;
        env R2D_MAX_QUEUED_BUILDS_PER_OWNER). Waiting builds start fairly: owners take turns.""",
    )

    @default("max_queued_builds_per_owner")
    def _default_max_queued_per_owner(self) -> int:
        return env_value("R2D_MAX_QUEUED_BUILDS_PER_OWNER", int, 10)

    @validate("max_queued_builds", "max_queued_builds_per_owner")
    def _check_queue_limit(self, proposal: Any) -> int:
        from traitlets import TraitError

        if proposal["value"] < 1:
            raise TraitError(
                f"{proposal['trait'].name} must be at least 1, not {proposal['value']} "
                "(to refuse builds, remove the build scope from the users' roles)"
            )
        return proposal["value"]

    max_log_bytes = Int(
        config=True,
        help="""Memory one build's log may hold, in bytes (default 4194304 = 4 MiB; env
        R2D_MAX_LOG_BYTES, bytes or a size such as 8M). A longer log keeps its first quarter (the
        head) and its end (the tail) with a marker line between them that says how many lines
        and bytes were omitted. Each line
        is charged its text plus ~150 bytes of bookkeeping, so 4 MiB keeps ~15,000 lines of
        typical length: the whole log of almost every repo2docker build.""",
    )

    @default("max_log_bytes")
    def _default_max_log_bytes(self) -> int:
        return env_value("R2D_MAX_LOG_BYTES", parse_bytes, 4 * 1024 * 1024)

    max_total_log_bytes = Int(
        config=True,
        help="""Memory the logs of all remembered builds may hold together, in bytes (default
        268435456 = 256 MiB; env R2D_MAX_TOTAL_LOG_BYTES, e.g. 1G; 0 = no limit beyond
        max_log_bytes per build). When over, the oldest finished builds' logs are cut down to a shorter head and tail
        first (512 KiB, sparing the newest quarter of finished builds; then 32 KiB), running
        builds' logs last.""",
    )

    @default("max_total_log_bytes")
    def _default_max_total_log_bytes(self) -> int:
        return env_value("R2D_MAX_TOTAL_LOG_BYTES", parse_bytes, 256 * 1024 * 1024)

    max_log_line_bytes = Int(
        64 * 1024,
        config=True,
        help="""A log line longer than this (UTF-8 bytes) is split into several lines, never
        dropped (default 65536).""",
    )

    @validate("max_log_bytes", "max_total_log_bytes", "max_log_line_bytes")
    def _check_log_limits(self, proposal: Any) -> int:
        from traitlets import TraitError

        name, value = proposal["trait"].name, proposal["value"]
        least = {"max_log_bytes": 64 * 1024, "max_log_line_bytes": 1024}.get(name, 0)
        if value < least or (name == "max_total_log_bytes" and 0 < value < 1024 * 1024):
            raise TraitError(
                f"BuildManager.{name} is {value}: set it to at least "
                f"{max(least, 1024 * 1024 if name == 'max_total_log_bytes' else 0)} bytes"
                + (" (or 0 for no limit)" if name == "max_total_log_bytes" else "")
            )
        return value

    log_budget = Instance(LogBudget, help="The memory budget all build logs share.")

    @default("log_budget")
    def _default_log_budget(self) -> LogBudget:
        per_build = self.max_log_bytes
        budget = LogBudget(
            self.max_total_log_bytes,
            compact_bytes=min(512 * 1024, per_build),
            minimum_bytes=min(32 * 1024, per_build),
        )
        metrics.LOG_BYTES.set_function(lambda: budget.used)
        return budget

    build_history = Int(
        200,
        config=True,
        help="Finished builds remembered (and their containers kept); default 200.",
    )
    build_timeout = Float(
        config=True,
        help="""Seconds a build may take in all, from leaving the queue to the end of its push;
        then it is stopped and ends ``failed`` saying so. Builds found again after a restart are
        held to it from their start. 0 turns it off. Default 3600; env R2D_BUILD_TIMEOUT.""",
    )

    @default("build_timeout")
    def _default_build_timeout(self) -> float:
        return env_value("R2D_BUILD_TIMEOUT", float, 3600.0)

    build_inactivity_timeout = Float(
        config=True,
        help="""Seconds a build may go without printing anything (a hung download, a step
        waiting for input); then it is stopped and ends ``failed`` saying so. 0 turns it off.
        Default 600; env R2D_BUILD_INACTIVITY_TIMEOUT.""",
    )

    @default("build_inactivity_timeout")
    def _default_build_inactivity_timeout(self) -> float:
        return env_value("R2D_BUILD_INACTIVITY_TIMEOUT", float, 600.0)

    @validate("build_timeout", "build_inactivity_timeout")
    def _check_timeout(self, proposal: Any) -> float:
        from traitlets import TraitError

        if proposal["value"] < 0:
            raise TraitError(
                f"{proposal['trait'].name} must be 0 (no limit) or a number of seconds, "
                f"not {proposal['value']}"
            )
        return proposal["value"]

    record_flush_timeout = Float(
        10.0,
        config=True,
        help="""Seconds a stopping service spends storing the build records (and logs) still
        waiting for the registry: uploads in flight, those waiting for a retry after an outage,
        and those of builds the stop cancels. What is not stored by then is lost, except for
        builds whose containers remain (``DockerBuilder``): the next start stores their records.
        Keep it under the time your process manager waits before killing (JupyterHub sends
        SIGTERM 30 s after SIGINT). Default 10.""",
    )
    ref_timeout = Float(
        30.0,
        config=True,
        help="""Seconds, in total, for resolving a ref: connecting, TLS and reading the whole ref
        advertisement (capped at 4 MiB); a short sha looked up in a clone (commits only, at most
        256 MiB) gets the same again.
        A server that sends slowly is cut off at this deadline (error ``ref_timeout``, 504).
        Default 30.""",
    )
    image_cache_ttl = Float(
        5.0,
        config=True,
        help="""Seconds the in-memory image index is trusted (default 5). After that, listings
        answer from it while it is refreshed in the background; 0 refreshes on every listing.""",
    )
    reconnect_interval = Float(
        5.0,
        config=True,
        help="Seconds between tries to reach a Docker engine that is down (default 5).",
    )
    last_lines = Int(20, config=True, help="Log lines shown with a failed build (default 20).")

    engine = Instance(DockerEngine)

    @default("engine")
    def _default_engine(self) -> DockerEngine:
        return DockerEngine(parent=self)

    builder = Instance(Builder)

    @default("builder")
    def _default_builder(self) -> Builder:
        return self.builder_class(parent=self, engine=self.engine)

    #: the optional registry (configured by ``c.Registry.*``; without a URL, images stay local)
    registry = Instance(Registry)

    @default("registry")
    def _default_registry(self) -> Registry:
        return Registry(parent=self)

    #: retention, quotas, disk guard and pruning (configured by ``c.LifecyclePolicy.*``)
    lifecycle = Instance(LifecyclePolicy)

    @default("lifecycle")
    def _default_lifecycle(self) -> LifecyclePolicy:
        return LifecyclePolicy(parent=self, manager=self)

    #: which repo2docker options builds may carry (configured by ``c.BuildOptions.*``)
    build_options = Instance(BuildOptions)

    @default("build_options")
    def _default_build_options(self) -> BuildOptions:
        return BuildOptions(parent=self)
