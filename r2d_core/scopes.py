"""JupyterHub RBAC custom scopes for repo2docker-service, and the checks built on them.

Three scopes, each optionally filtered the way JupyterHub filters its own scopes:

* ``custom:repo2docker:read``   — see images and builds (and follow build logs)
* ``custom:repo2docker:build``  — start and cancel builds (implies read)
* ``custom:repo2docker:delete`` — delete images (implies read)

``custom:repo2docker:build`` alone means *every* namespace; ``...!user`` (arriving expanded as
``!user=NAME``) the caller's own, ``...!user=bob`` bob's, ``...!group=team`` the namespaces of the
members of group ``team`` (resolved through the Hub API with the service's token, cached briefly),
``...!server=alice/`` (what a single-user server's token carries) alice's.

Pure functions (:func:`parse_permissions`) plus one async helper (:class:`Authorizer`) that needs the
Hub only for group membership — no tornado here, like ``jupyterhub.scopes``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
from traitlets import Float, Unicode, default
from traitlets.config import LoggingConfigurable

from .errors import Forbidden, NotFound, Unavailable

__all__ = [
    "ACTIONS",
    "SCOPE_PREFIX",
    "Authorizer",
    "Grant",
    "GroupResolver",
    "HubGroups",
    "Permissions",
    "parse_permissions",
    "scope_for",
]

SCOPE_PREFIX = "custom:repo2docker"
ACTIONS = ("read", "build", "delete")
# build and delete imply read (a user who may build an image may see it)
_IMPLIED = {"build": ("read",), "delete": ("read",)}


def scope_for(action: str) -> str:
    """The scope name for ``action`` (``read``, ``build``, ``delete``)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    return f"{SCOPE_PREFIX}:{action}"


@dataclass(frozen=True)
class Grant:
    """Where one action is allowed: everywhere, or in the namespaces of some owners and groups."""

    all: bool = False
    owners: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()

    @property
    def any(self) -> bool:
        return self.all or bool(self.owners) or bool(self.groups)

    def merge(self, other: Grant) -> Grant:
        return Grant(self.all or other.all, self.owners | other.owners, self.groups | other.groups)

    def to_dict(self) -> dict[str, Any]:
        return {"all": self.all, "owners": sorted(self.owners), "groups": sorted(self.groups)}


@dataclass(frozen=True)
class Permissions:
    """What one caller may do, per action."""

    name: str
    kind: str = "user"
    grants: dict[str, Grant] = field(default_factory=dict)

    def grant(self, action: str) -> Grant:
        return self.grants.get(action, Grant())

    def to_dict(self) -> dict[str, Any]:
        return {action: self.grant(action).to_dict() for action in ACTIONS}


def parse_permissions(scopes: Iterable[str], name: str, kind: str = "user") -> Permissions:
    """The caller's :class:`Permissions` from the scopes JupyterHub resolved for it.

    ``!user`` unexpanded (as a role definition writes it) means the caller itself;
    ``!server=USER/NAME`` (a single-user server's token) means USER's namespace; any other filter
    (``!service=``, ``!server`` unexpanded) grants nothing here.
    """
    grants: dict[str, Grant] = {}
    for scope in scopes:
        base, _, filter_ = scope.partition("!")
        if not base.startswith(f"{SCOPE_PREFIX}:"):
            continue
        action = base[len(SCOPE_PREFIX) + 1 :]
        if action not in ACTIONS:
            continue
        if not filter_:
            grant = Grant(all=True)
        elif filter_ == "user":
            grant = Grant(owners=frozenset({name})) if kind == "user" else Grant()
        elif filter_.startswith("user="):
            grant = Grant(owners=frozenset({filter_[5:]}))
        elif filter_.startswith("group="):
            grant = Grant(groups=frozenset({filter_[6:]}))
        elif filter_.startswith("server=") and "/" in filter_:
            # a token of USER's server (its OAuth client's '!server' expands to
            # '!server=USER/NAME'): the server acts in its owner's namespace, never beyond
            grant = Grant(owners=frozenset({filter_[7:].split("/", 1)[0]}))
        else:
            continue
        for each in (action, *_IMPLIED.get(action, ())):
            grants[each] = grants.get(each, Grant()).merge(grant)
    return Permissions(name=name, kind=kind, grants=grants)


class HubGroups(LoggingConfigurable):
    """Group membership from the Hub REST API, cached for :attr:`ttl` seconds.

    The service's token needs ``read:groups`` and ``list:groups`` (see ``generate-hub-config``).
    """

    hub_api_url = Unicode(
        config=True,
        help="The Hub's REST API, e.g. ``http://127.0.0.1:8081/hub/api``. Env: JUPYTERHUB_API_URL.",
    )

    @default("hub_api_url")
    def _default_api_url(self) -> str:
        return os.environ.get("JUPYTERHUB_API_URL", "http://127.0.0.1:8081/hub/api")

    api_token = Unicode(
        config=True,
        help="The service's Hub API token (never logged). Env: JUPYTERHUB_API_TOKEN.",
    )

    @default("api_token")
    def _default_token(self) -> str:
        return os.environ.get("JUPYTERHUB_API_TOKEN", "")

    ttl = Float(
        60.0,
        config=True,
        help="""Seconds a group's member list is trusted before asking the Hub again (default 60;
        the standalone service uses ``R2DService.permissions_ttl`` unless this is set).""",
    )

    timeout = Float(10.0, config=True, help="Timeout of Hub API calls in seconds (default 10).")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._cache: dict[str, tuple[float, frozenset[str]]] = {}
        self._pending: dict[str, asyncio.Future[frozenset[str]]] = {}
        self._client: httpx.AsyncClient | None = None

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def members(self, group: str) -> frozenset[str]:
        """The names of ``group``'s members (empty if there is no such group)."""
        cached = self._cache.get(group)
        if cached and time.monotonic() - cached[0] < self.ttl:
            return cached[1]
        pending = self._pending.get(group)
        if pending is not None:  # one Hub request per group, however many callers wait
            return await asyncio.shield(pending)
        future: asyncio.Future[frozenset[str]] = asyncio.get_running_loop().create_future()
        self._pending[group] = future
        try:
            members = await self._fetch(group)
            self._cache[group] = (time.monotonic(), members)
            future.set_result(members)
            return members
        except BaseException as e:
            future.set_exception(e)
            future.exception()  # retrieved: waiters re-raise it
            raise
        finally:
            del self._pending[group]

    async def _fetch(self, group: str) -> frozenset[str]:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout)
        url = f"{self.hub_api_url.rstrip('/')}/groups/{httpx.URL(path=group).raw_path.decode()}"
        try:
            response = await self._client.get(
                url, headers={"Authorization": f"token {self.api_token}"}
            )
        except httpx.HTTPError as e:
            raise Unavailable(
                f"JupyterHub API unreachable while resolving group {group!r}: {e!r}"
            ) from None
        if response.status_code == 404:
            return frozenset()
        if response.status_code == 403:
            raise Unavailable(
                f"the service may not read group {group!r}: give its role the scopes "
                "read:groups and list:groups"
            )
        if response.status_code != 200:
            raise Unavailable(f"JupyterHub API answered {response.status_code} for group {group!r}")
        return frozenset(response.json().get("users") or [])


class GroupResolver(Protocol):
    """Anything that knows a group's members: :class:`HubGroups` (over the Hub API) or, inside
    the Hub process, the Hub's own database (see :mod:`r2d_tljh`)."""

    async def members(self, group: str) -> frozenset[str]: ...


class Authorizer:
    """Answers "may this caller do this to that owner's namespace?" for adapters."""

    def __init__(self, groups: GroupResolver | None = None) -> None:
        self.groups = groups

    async def owners(self, permissions: Permissions, action: str) -> frozenset[str] | None:
        """The owners whose namespaces ``action`` is allowed on; None means all."""
        grant = permissions.grant(action)
        if grant.all:
            return None
        owners = set(grant.owners)
        if grant.groups and self.groups is not None:
            results = await asyncio.gather(*(self.groups.members(g) for g in sorted(grant.groups)))
            for members in results:
                owners |= members
        return frozenset(owners)

    async def allowed(self, permissions: Permissions, action: str, owner: str) -> bool:
        grant = permissions.grant(action)
        if grant.all or owner in grant.owners:
            return True
        owners = await self.owners(permissions, action)
        return owners is None or owner in owners

    async def check(
        self, permissions: Permissions, action: str, owner: str, hide: bool = False
    ) -> None:
        """Raise :class:`Forbidden` naming the missing scope (or :class:`NotFound` if ``hide``
        and the caller may not even read ``owner``'s namespace)."""
        if await self.allowed(permissions, action, owner):
            return
        if hide and not await self.allowed(permissions, "read", owner):
            raise NotFound(f"{owner} has nothing here that you may see")
        where = "your own images" if owner == permissions.name else f"{owner}'s images"
        raise Forbidden(
            f"you need the {scope_for(action)} scope for {where} "
            f"({scope_for(action)}!user={owner}, a group filter, or unfiltered); ask a Hub admin",
            scope=scope_for(action),
        )
