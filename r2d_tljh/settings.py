"""The TLJH plugin's settings, and what it adds to the Hub's scopes and roles.

Pure functions over plain values (no Hub, no tornado): :func:`plan_hub_config` takes the Hub's
*final* ``load_roles``, ``custom_scopes``, ``extra_user_scopes`` and admin users — after every
``jupyterhub_config.d`` file was merged — and returns what the Hub should load. The plugin calls it
when the Hub has loaded its configuration (see :mod:`r2d_tljh.plugin`), so the admin's last word
wins whatever the load order.

Default grants (``R2DPlugin.add_default_roles``, on by default):

* the custom scopes ``custom:repo2docker:read|build|delete`` (an admin's own definition of one of
  them is kept);
* every user builds and deletes in their own namespace: added to the admin's ``user`` role if they
  define one with ``scopes`` (extended, never duplicated), else through JupyterHub's
  ``extra_user_scopes`` (JupyterHub >= 6) or a ``user`` role (JupyterHub 5); not at all when the
  admin defines a role named ``repo2docker-user`` (theirs replaces it);
* Hub admins (``c.Authenticator.admin_users``, TLJH's ``users.admin``) build and delete in every
  namespace, through the role ``repo2docker-admin`` (JupyterHub's own ``admin`` role cannot be
  extended); an admin-defined role of that name replaces it.

With ``add_default_roles = False`` nothing but the scopes is added: users hold exactly the
repo2docker scopes the admin's roles grant.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from traitlets import Bool, Float, Int, TraitError, Unicode, validate
from traitlets.config import Configurable

from r2d_core.options import APPENDIX_SCOPE as _APPENDIX_SCOPE
from r2d_core.scopes import scope_for

__all__ = [
    "ADMIN_ROLE",
    "CUSTOM_SCOPES",
    "USER_ROLE",
    "USER_SCOPES",
    "HubPlan",
    "R2DPlugin",
    "plan_hub_config",
    "resolve_config_value",
]

READ, BUILD, DELETE = (scope_for(a) for a in ("read", "build", "delete"))
APPENDIX_SCOPE = _APPENDIX_SCOPE

CUSTOM_SCOPES: dict[str, dict[str, Any]] = {
    READ: {"description": "See repo2docker images and builds, and follow build logs"},
    BUILD: {"description": "Build repo2docker images", "subscopes": [READ]},
    DELETE: {"description": "Delete repo2docker images", "subscopes": [READ]},
    # only used where c.BuildOptions.allowed lists "appendix" (Dockerfile text in a build)
    APPENDIX_SCOPE: {"description": "Send an appendix (Dockerfile commands) with a build"},
}
#: what every user gets by default: their own namespace
USER_SCOPES: tuple[str, ...] = (f"{BUILD}!user", f"{DELETE}!user")
#: what Hub admins get by default: every namespace
ADMIN_SCOPES: tuple[str, ...] = (BUILD, DELETE, APPENDIX_SCOPE)
ADMIN_ROLE = "repo2docker-admin"
USER_ROLE = "repo2docker-user"
# marks the admin role as the plugin's own (re-planned with the current admins), not the admin's
_ADMIN_ROLE_DESCRIPTION = "repo2docker-service: Hub admins build and delete for everyone"

# First path segments JupyterHub serves itself under /hub/: its handlers are matched before
# extra_handlers, so the plugin's pages would be unreachable there.
_HUB_PATHS = frozenset(
    {
        "accept-share",
        "admin",
        "api",
        "error",
        "health",
        "home",
        "login",
        "logo",
        "logout",
        "metrics",
        "oauth_callback",
        "oauth_login",
        "security",
        "spawn",
        "spawn-pending",
        "static",
        "token",
        "user",
        "user-redirect",
    }
)
_PATH_RE = re.compile(r"^[A-Za-z0-9._~-]+(/[A-Za-z0-9._~-]+)*$")


class R2DPlugin(Configurable):
    """Settings of the TLJH plugin (build settings are the service's own: ``BuildManager``, ...).

    Read when the Hub has loaded its whole configuration, so values set in any
    ``/opt/tljh/config/jupyterhub_config.d/*.py`` file apply."""

    path = Unicode(
        "repo2docker",
        config=True,
        help="""Path of the UI and API under the Hub prefix (default 'repo2docker':
        /hub/repo2docker/). Letters, digits, '.', '_', '~', '-' and inner '/'; not one of the Hub's
        own pages (api, admin, login, ...).""",
    )
    keepalive_interval = Float(
        15.0, config=True, help="Seconds between keepalive comments on event streams (default 15)."
    )
    max_streams_per_user = Int(
        20,
        config=True,
        help="""Event streams (build logs, the BinderHub-compatible endpoint) one user or service may
        hold open at once (default 20; 0: no limit); one more answers 429. Each open stream holds
        a connection (a file descriptor of the Hub) for as long as its build runs.""",
    )
    add_default_roles = Bool(
        True,
        config=True,
        help="""Grant the default permissions (default True): every user builds and deletes in
        their own namespace (added to the 'user' role), Hub admins in every namespace (role
        'repo2docker-admin'). False grants nothing: users hold only the custom:repo2docker:*
        scopes your own roles give them.""",
    )

    @validate("path")
    def _valid_path(self, proposal: dict[str, Any]) -> str:
        path = str(proposal["value"]).strip("/")
        if not _PATH_RE.match(path) or {".", ".."} & set(path.split("/")):
            raise TraitError(
                f"R2DPlugin.path {proposal['value']!r} is not a URL path: use letters, digits, "
                "'.', '_', '~', '-' and '/' between segments, e.g. 'repo2docker' or 'tools/images'"
            )
        if path.split("/", 1)[0] in _HUB_PATHS:
            raise TraitError(
                f"R2DPlugin.path {path!r} collides with the Hub's own /hub/{path.split('/', 1)[0]}/ "
                "pages: choose another name, e.g. 'repo2docker'"
            )
        return path


@dataclass(frozen=True)
class HubPlan:
    """The Hub config values the plugin wants, each complete (set them as they are)."""

    custom_scopes: dict[str, dict[str, Any]]
    load_roles: list[dict[str, Any]]
    extra_user_scopes: set[str] | None  # None: this JupyterHub has no extra_user_scopes


def resolve_config_value(value: Any, initial: Any) -> Any:
    """A config value as the Hub will see it: ``c.X.y.append(...)`` without an assignment
    leaves a traitlets ``LazyConfigValue``, applied to the trait's default ``initial``."""
    from traitlets.config.loader import LazyConfigValue

    if isinstance(value, LazyConfigValue):
        return value.get_value(initial)
    return initial if value is None else value


def _with_scopes(role: Mapping[str, Any], scopes: Iterable[str]) -> dict[str, Any]:
    have = list(role.get("scopes") or [])
    return {**role, "scopes": have + [s for s in scopes if s not in have]}


def plan_hub_config(
    *,
    add_default_roles: bool,
    load_roles: Iterable[Mapping[str, Any]],
    custom_scopes: Mapping[str, Mapping[str, Any]],
    extra_user_scopes: Iterable[str] | None,
    admin_users: Iterable[str],
) -> HubPlan:
    """Merge the plugin's scopes and default grants into the admin's final Hub settings.

    Idempotent (planning its own output again changes nothing), and never drops or renames a
    role of the admin's. ``extra_user_scopes=None`` means the Hub has no such setting (< 6)."""
    scopes = {name: dict(spec) for name, spec in custom_scopes.items()}
    for name, spec in CUSTOM_SCOPES.items():
        scopes.setdefault(name, dict(spec))
    roles = [dict(role) for role in load_roles]
    extra = None if extra_user_scopes is None else set(extra_user_scopes)
    if not add_default_roles:
        roles = [r for r in roles if r.get("description") != _ADMIN_ROLE_DESCRIPTION]
        return HubPlan(scopes, roles, extra)

    admin_role = {
        "name": ADMIN_ROLE,
        "description": _ADMIN_ROLE_DESCRIPTION,
        "users": sorted(admin_users),
        "scopes": list(ADMIN_SCOPES),
    }
    names = [role.get("name") for role in roles]
    if ADMIN_ROLE not in names:
        roles.append(admin_role)
    else:
        roles = [
            admin_role if r.get("description") == _ADMIN_ROLE_DESCRIPTION else r for r in roles
        ]
    if USER_ROLE not in names:
        user_roles = [i for i, name in enumerate(names) if name == "user"]
        if user_roles and all("scopes" in roles[i] for i in user_roles):
            # the admin's own user role, extended (JupyterHub ignores extra_user_scopes then)
            for i in user_roles:
                roles[i] = _with_scopes(roles[i], USER_SCOPES)
        elif extra is not None:
            # no user role, or one that keeps JupyterHub's default scopes: JupyterHub adds these
            extra.update(USER_SCOPES)
        elif user_roles:
            for i in user_roles:
                roles[i] = _with_scopes({"scopes": ["self"], **roles[i]}, USER_SCOPES)
        else:
            roles.append({"name": "user", "scopes": ["self", *USER_SCOPES]})
    return HubPlan(scopes, roles, extra)
