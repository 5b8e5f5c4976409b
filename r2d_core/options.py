"""repo2docker options per build, under an admin policy; annotations for the tools on top.

A build request may carry ``options`` from a fixed set, each mapped to one repo2docker flag:

=================  =====================================  ==========================================
option             repo2docker                            bounds (:class:`BuildOptions` traits)
=================  =====================================  ==========================================
``subdir``         ``--subdir``                           relative, inside the checkout (checked
                                                          again with ``realpath`` after the fetch)
``target_repo_dir`` ``--target-repo-dir``                 absolute, under ``target_repo_dir_prefixes``
``user_id``        ``--user-id``                          in ``user_id_range``
``user_name``      ``--user-name``                        a POSIX user name, not ``root``
``build_args``     ``--build-arg NAME=VALUE``             ``allowed_build_args``; repo2docker's own
                                                          (``NB_UID``, ``REPO_DIR``...) and BuildKit's
                                                          (``BUILDKIT_*``, proxies) are refused
``appendix``       ``--appendix``                         only for callers holding
                                                          :data:`APPENDIX_SCOPE`: it is build code
``platform``       ``--Repo2Docker.platform=...``         one of ``platforms``
=================  =====================================  ==========================================

Every option is off unless the admin lists it in ``c.BuildOptions.allowed``; admin ``defaults``
apply to every build (a request may override a default only where the option is allowed). The
request's shape is checked by the JSON schema (:mod:`r2d_core.schema`), the bounds here. Values
reach repo2docker as single argv elements only (never config text, a Dockerfile or a shell).

The *effective* options (defaults merged with the request) are part of an image's identity: their
digest (:func:`options_digest`) goes into the tag and the labels, so two builds of one commit with
different options are two images.

``annotations`` are a bounded map of namespaced keys (``tljh.mem_limit``) to short strings, stored
as image labels under ``repo2docker-service.annotation.`` and never interpreted by the service:
they are for spawners and tools on top (see :mod:`r2d_core.spawner`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from collections.abc import Mapping
from typing import Any

from traitlets import Dict, Int, List, Tuple, Unicode, default, validate
from traitlets.config import LoggingConfigurable

from .errors import InvalidRequest

__all__ = [
    "ANNOTATION_KEYS_LABEL",
    "ANNOTATION_LABEL_PREFIX",
    "APPENDIX_SCOPE",
    "MAX_ANNOTATIONS",
    "MAX_ANNOTATION_VALUE",
    "OPTION_NAMES",
    "BuildOptions",
    "annotations_from_labels",
    "options_digest",
    "options_from_labels",
    "repo2docker_option_args",
    "validate_annotations",
]

#: the options a build may carry (each off unless ``c.BuildOptions.allowed`` lists it)
OPTION_NAMES = (
    "subdir",
    "target_repo_dir",
    "user_id",
    "user_name",
    "build_args",
    "appendix",
    "platform",
)
#: the scope a caller needs (besides ``allowed`` listing it) to send an ``appendix``
APPENDIX_SCOPE = "custom:repo2docker:appendix"
#: image label prefix of annotations (after the service's own ``repo2docker-service.``)
ANNOTATION_LABEL_PREFIX = "annotation."
#: label field (after ``repo2docker-service.``) listing the annotation keys a build was given
ANNOTATION_KEYS_LABEL = "annotation-keys"
MAX_ANNOTATIONS = 32
MAX_ANNOTATION_KEY = 100
MAX_ANNOTATION_VALUE = 256
MAX_ANNOTATION_BYTES = 8192

_SUBDIR_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
_PATH_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
_USER_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_BUILD_ARG = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_PLATFORM = re.compile(r"^[a-z0-9]+/[a-z0-9_]+(?:/[a-z0-9]+)?$")
_ANNOTATION_KEY = re.compile(r"^[a-z][a-z0-9-]*(?:\.[a-z0-9][a-z0-9_-]*)+$")
#: build args repo2docker sets itself (through other options) or that steer BuildKit or the network
_RESERVED_BUILD_ARGS = frozenset({"NB_USER", "NB_UID", "REPO_DIR"})
_RESERVED_BUILD_ARG_PREFIXES = ("BUILDKIT_", "TARGET", "BUILD", "DOCKER")
_PROXY_ARGS = frozenset(
    {"HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "NO_PROXY", "ALL_PROXY"}
    | {"http_proxy", "https_proxy", "ftp_proxy", "no_proxy", "all_proxy"}
)
MAX_BUILD_ARG_VALUE = 1024


def _bad(option: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"options.{option} {message}", field=f"options.{option}")


def _no_control(value: str, *, newlines: bool = False) -> bool:
    """True when ``value`` has no control, format (bidi overrides) or separator characters."""
    for char in value:
        if newlines and char in "\n\t":
            continue
        if unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            return False
    return True


def _check_subdir(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 255:
        raise _bad("subdir", "must be a relative path of 1 to 255 characters")
    parts = value.strip("/").split("/") if not value.startswith("/") else []
    if not parts or any(not _SUBDIR_PART.fullmatch(p) or p in (".", "..") for p in parts):
        raise _bad(
            "subdir",
            "must be a relative path inside the repository: folder names of letters, digits, "
            "'.', '_', '-' separated by '/', without '..'",
        )
    return "/".join(parts)


def _check_abs_path(option: str, value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/") or len(value) > 255:
        raise _bad(option, "must be an absolute path (at most 255 characters)")
    parts = value.strip("/").split("/")
    if not parts or any(not _PATH_PART.fullmatch(p) or p in (".", "..") for p in parts):
        raise _bad(
            option,
            "must be an absolute path of folder names made of letters, digits, '.', '_', '-' "
            "(no '..', no '//')",
        )
    return "/" + "/".join(parts)


def _canonical(options: Mapping[str, Any]) -> str:
    return json.dumps(options, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def options_digest(options: Mapping[str, Any] | None) -> str:
    """16 hex digits of the SHA-256 of the effective options' canonical JSON; ``""`` for none
    (so images built without options keep the names they always had)."""
    if not options:
        return ""
    return hashlib.sha256(_canonical(options).encode()).hexdigest()[:16]


def repo2docker_option_args(options: Mapping[str, Any]) -> list[str]:
    """repo2docker arguments for validated effective ``options``: each value one argv element."""
    args: list[str] = []
    if "subdir" in options:
        args += ["--subdir", options["subdir"]]
    if "target_repo_dir" in options:
        args += ["--target-repo-dir", options["target_repo_dir"]]
    if "user_id" in options:
        args += ["--user-id", str(int(options["user_id"]))]
    if "user_name" in options:
        args += ["--user-name", options["user_name"]]
    for name, value in sorted((options.get("build_args") or {}).items()):
        args += ["--build-arg", f"{name}={value}"]
    if "appendix" in options:
        args += ["--appendix", options["appendix"]]
    if "platform" in options:
        # repo2docker has no --platform flag; a traitlets argument is one element, and the value
        # comes from the admin's list
        args.append(f"--Repo2Docker.platform={options['platform']}")
    return args


def options_from_labels(fields: Mapping[str, str]) -> dict[str, Any]:
    """The effective options recorded in an image's (or build container's) label fields."""
    raw = fields.get("options")
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def annotations_from_labels(fields: Mapping[str, str]) -> dict[str, str]:
    """The annotations recorded in an image's (or build container's) label fields: those the
    :data:`ANNOTATION_KEYS_LABEL` field lists (a repository's Dockerfile may add labels under
    the prefix itself); every one under the prefix for images labelled before it existed."""
    listed: Any = None
    if ANNOTATION_KEYS_LABEL in fields:
        try:
            listed = json.loads(fields[ANNOTATION_KEYS_LABEL])
        except ValueError:
            listed = []
        listed = {k for k in listed if isinstance(k, str)} if isinstance(listed, list) else set()
    n = len(ANNOTATION_LABEL_PREFIX)
    return {
        key[n:]: value
        for key, value in sorted(fields.items())
        if key.startswith(ANNOTATION_LABEL_PREFIX) and (listed is None or key[n:] in listed)
    }


def validate_annotations(annotations: Mapping[str, Any] | None) -> dict[str, str]:
    """Annotations checked for size, key syntax and control characters (never interpreted)."""
    if not annotations:
        return {}
    if not isinstance(annotations, Mapping):
        raise InvalidRequest("annotations must be a JSON object", field="annotations")
    if len(annotations) > MAX_ANNOTATIONS:
        raise InvalidRequest(
            f"annotations may have at most {MAX_ANNOTATIONS} keys", field="annotations"
        )
    total = 0
    checked: dict[str, str] = {}
    for key, value in annotations.items():
        field = (
            f"annotations.{key}" if isinstance(key, str) and key.isprintable() else "annotations"
        )
        if (
            not isinstance(key, str)
            or len(key) > MAX_ANNOTATION_KEY
            or not _ANNOTATION_KEY.fullmatch(key)
        ):
            raise InvalidRequest(
                f"annotation key {key!r} is invalid: namespaced, lower-case, like "
                "'tljh.mem_limit' or 'display.description' (letters, digits, '-', '_', at least "
                f"one '.', at most {MAX_ANNOTATION_KEY} characters)",
                field=field,
            )
        if not isinstance(value, str) or len(value) > MAX_ANNOTATION_VALUE:
            raise InvalidRequest(
                f"{field} must be a string of at most {MAX_ANNOTATION_VALUE} characters",
                field=field,
            )
        if not _no_control(value):
            raise InvalidRequest(f"{field} must not contain control characters", field=field)
        total += len(key.encode()) + len(value.encode())
        checked[key] = value
    if total > MAX_ANNOTATION_BYTES:
        raise InvalidRequest(
            f"annotations are larger than {MAX_ANNOTATION_BYTES} bytes in all", field="annotations"
        )
    return dict(sorted(checked.items()))


class BuildOptions(LoggingConfigurable):
    """Which repo2docker options users may set per build, their bounds, and admin defaults."""

    allowed = List(
        Unicode(),
        config=True,
        help=f"""Options a build request may carry, from {", ".join(OPTION_NAMES)}. Default
        ``[]`` (none: a request with ``options`` is refused). ``appendix`` also needs the
        caller to hold the scope ``{APPENDIX_SCOPE}``. Env ``R2D_BUILD_OPTIONS_ALLOWED``
        (comma-separated).""",
    )

    @default("allowed")
    def _default_allowed(self) -> list[str]:
        env = os.environ.get("R2D_BUILD_OPTIONS_ALLOWED", "")
        return self._check_allowed({"value": [n.strip() for n in env.split(",") if n.strip()]})

    @validate("allowed")
    def _check_allowed(self, proposal: Any) -> list[str]:
        from traitlets import TraitError

        unknown = [n for n in proposal["value"] if n not in OPTION_NAMES]
        if unknown:
            raise TraitError(
                f"BuildOptions.allowed: unknown option(s) {', '.join(unknown)}; choose from "
                + ", ".join(OPTION_NAMES)
            )
        return list(proposal["value"])

    defaults = Dict(
        config=True,
        help="""Options applied to every build, e.g. ``{"target_repo_dir": "/srv/repo"}``: the
        same names and bounds as a request's. A request may replace a default only for options
        in ``allowed`` (``build_args`` are merged per name). Default ``{}``.""",
    )

    target_repo_dir_prefixes = List(
        Unicode(),
        ["/srv/"],
        config=True,
        help="""``target_repo_dir`` must be one of these folders or inside one (default
        ``["/srv/"]``).""",
    )
    user_id_range = Tuple(
        Int(),
        Int(),
        default_value=(1000, 65535),
        config=True,
        help="Lowest and highest ``user_id`` a build may ask for (default ``(1000, 65535)``).",
    )
    platforms = List(
        Unicode(),
        ["linux/amd64"],
        config=True,
        help="""Platforms a build may ask for (``platform``), e.g. ``["linux/amd64",
        "linux/arm64"]`` (default ``["linux/amd64"]``; building for another platform than the
        engine's needs emulation configured on it).""",
    )
    allowed_build_args = List(
        Unicode(),
        config=True,
        help="""Names of build arguments a build may set (``build_args``); default ``[]``: any
        name but repo2docker's own (``NB_USER``, ``NB_UID``, ``REPO_DIR``: use the matching
        options) and those that steer BuildKit or the network (``BUILDKIT_*``, ``TARGET*``,
        ``BUILD*``, ``DOCKER*``, proxies), which are always refused.""",
    )
    max_build_args = Int(
        16,
        config=True,
        help="Build arguments per build at most (default 16, also the most the request schema "
        "takes).",
    )
    max_appendix_bytes = Int(
        16384,
        config=True,
        help="""Largest ``appendix`` in UTF-8 bytes (default 16384; the request schema takes at
        most 16384 characters, so that a request stays under the 64 KiB body limit).""",
    )

    @validate("max_build_args", "max_appendix_bytes")
    def _check_maxima(self, proposal: Any) -> int:
        from traitlets import TraitError

        most = {"max_build_args": 16, "max_appendix_bytes": 16384}[proposal["trait"].name]
        if not 1 <= proposal["value"] <= most:
            raise TraitError(
                f"BuildOptions.{proposal['trait'].name} must be between 1 and {most}, "
                f"not {proposal['value']}"
            )
        return proposal["value"]

    appendix_scope = Unicode(
        APPENDIX_SCOPE,
        config=True,
        help=f"""The scope a caller must hold (unfiltered) to send ``appendix`` (default
        ``{APPENDIX_SCOPE}``; ``generate-hub-config`` declares it).""",
    )

    @validate("defaults")
    def _check_defaults(self, proposal: Any) -> dict[str, Any]:
        from traitlets import TraitError

        try:
            return self._bounded(dict(proposal["value"]), may_appendix=True, admin=True)
        except InvalidRequest as e:
            raise TraitError(f"BuildOptions.defaults: {e}") from None

    # ---- checks -----------------------------------------------------------------------------
    def may_use_appendix(self, scopes: frozenset[str] | set[str]) -> bool:
        """Whether a caller with ``scopes`` may send an ``appendix``."""
        return "appendix" in self.allowed and self.appendix_scope in scopes

    def effective(
        self, requested: Mapping[str, Any] | None = None, *, may_appendix: bool = False
    ) -> dict[str, Any]:
        """The options a build runs with: the admin's defaults, then the request's (validated
        against the policy). Raises :class:`InvalidRequest` naming the offending option."""
        requested = dict(requested or {})
        for name in requested:
            if name not in OPTION_NAMES:
                raise _bad(name, f"is not an option; known: {', '.join(OPTION_NAMES)}")
            if name not in self.allowed:
                allowed = ", ".join(self.allowed) or "none"
                raise _bad(name, f"may not be set on this service (the admin allows: {allowed})")
        if "appendix" in requested and not may_appendix:
            raise _bad(
                "appendix",
                f"needs the scope {self.appendix_scope} (it is arbitrary build code): ask an "
                "admin to grant it",
            )
        checked = self._bounded(requested, may_appendix=may_appendix, admin=False)
        merged = dict(self.defaults)
        for name, value in checked.items():
            if name == "build_args":
                merged["build_args"] = {**merged.get("build_args", {}), **value}
            else:
                merged[name] = value
        return {name: merged[name] for name in OPTION_NAMES if name in merged}

    def _bounded(
        self, options: dict[str, Any], *, may_appendix: bool, admin: bool
    ) -> dict[str, Any]:
        checked: dict[str, Any] = {}
        for name, value in options.items():
            if name not in OPTION_NAMES:
                raise _bad(name, f"is not an option; known: {', '.join(OPTION_NAMES)}")
            checked[name] = getattr(self, f"_check_{name}")(value, admin=admin)
        return checked

    def _check_subdir(self, value: Any, admin: bool) -> str:
        return _check_subdir(value)

    def _check_target_repo_dir(self, value: Any, admin: bool) -> str:
        path = _check_abs_path("target_repo_dir", value)
        if admin:
            return path
        for prefix in self.target_repo_dir_prefixes:
            base = "/" + prefix.strip("/")
            if path == base or path.startswith(base.rstrip("/") + "/"):
                return path
        raise _bad(
            "target_repo_dir",
            "must be inside one of " + ", ".join(self.target_repo_dir_prefixes or ["(none)"]),
        )

    def _check_user_id(self, value: Any, admin: bool) -> int:
        low, high = self.user_id_range
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad("user_id", "must be an integer")
        if value < 1 or (not admin and not low <= value <= high):
            raise _bad("user_id", f"must be between {low} and {high}")
        return value

    def _check_user_name(self, value: Any, admin: bool) -> str:
        if not isinstance(value, str) or not _USER_NAME.fullmatch(value) or value == "root":
            raise _bad(
                "user_name",
                "must be a user name: lower-case letters, digits, '_', '-', starting with a "
                "letter or '_', at most 32 characters, not root",
            )
        return value

    def _check_build_args(self, value: Any, admin: bool) -> dict[str, str]:
        if not isinstance(value, Mapping):
            raise _bad("build_args", "must be a JSON object of names to strings")
        if len(value) > self.max_build_args:
            raise _bad("build_args", f"may set at most {self.max_build_args} build arguments")
        checked: dict[str, str] = {}
        for name, arg in value.items():
            if not isinstance(name, str) or not _BUILD_ARG.fullmatch(name):
                raise _bad(
                    "build_args",
                    f"name {name!r} is invalid: letters, digits and '_', not starting with a digit",
                )
            if (
                name in _RESERVED_BUILD_ARGS
                or name in _PROXY_ARGS
                or name.upper().startswith(_RESERVED_BUILD_ARG_PREFIXES)
            ):
                raise _bad("build_args", f"may not set {name} (reserved)")
            if not admin and self.allowed_build_args and name not in self.allowed_build_args:
                raise _bad(
                    "build_args",
                    f"may not set {name}; allowed: {', '.join(self.allowed_build_args)}",
                )
            if not isinstance(arg, str) or len(arg) > MAX_BUILD_ARG_VALUE or not _no_control(arg):
                raise _bad(
                    "build_args",
                    f"value of {name} must be a string of at most {MAX_BUILD_ARG_VALUE} "
                    "characters without control characters",
                )
            checked[name] = arg
        return dict(sorted(checked.items()))

    def _check_appendix(self, value: Any, admin: bool) -> str:
        if not isinstance(value, str) or not value.strip():
            raise _bad("appendix", "must be non-empty Dockerfile text")
        if len(value.encode()) > self.max_appendix_bytes:
            raise _bad("appendix", f"is larger than {self.max_appendix_bytes} bytes")
        if "\r" in value or not _no_control(value, newlines=True):
            raise _bad("appendix", "must not contain control characters (but newlines and tabs)")
        return value

    def _check_platform(self, value: Any, admin: bool) -> str:
        if not isinstance(value, str) or not _PLATFORM.fullmatch(value):
            raise _bad("platform", "must be a platform such as linux/amd64")
        if not admin and value not in self.platforms:
            raise _bad("platform", f"must be one of {', '.join(self.platforms) or '(none)'}")
        return value

    # ---- what clients see -------------------------------------------------------------------
    def describe(self, *, may_appendix: bool = False) -> dict[str, Any]:
        """What a UI needs to show the options a caller may set (``GET api/``)."""
        allowed = [n for n in self.allowed if n != "appendix" or may_appendix]
        return {
            "allowed": allowed,
            "defaults": dict(self.defaults),
            "target_repo_dir_prefixes": list(self.target_repo_dir_prefixes),
            "user_id_range": list(self.user_id_range),
            "platforms": list(self.platforms),
            "allowed_build_args": list(self.allowed_build_args),
            "max_build_args": self.max_build_args,
            "max_appendix_bytes": self.max_appendix_bytes,
            "appendix_scope": self.appendix_scope,
        }
