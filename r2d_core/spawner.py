"""Let spawners offer the images a user may read: an options form or a KubeSpawner profile list.

The service never knows about spawners; spawners ask the service (``GET api/images``) and check
the user's choice on the server side. Use from ``jupyterhub_config.py``::

    from r2d_core.spawner import ImageChooser

    chooser = ImageChooser(
        url="http://127.0.0.1:8585/services/repo2docker/",
        token=os.environ["R2D_CHOOSER_TOKEN"],  # a service token with custom:repo2docker:read
    )
    c.Spawner.options_form = chooser.options_form        # DockerSpawner & co.
    c.Spawner.options_from_form = chooser.options_from_form  # checks the choice (form errors)
    c.Spawner.pre_spawn_hook = chooser.pre_spawn_hook    # checks again, then sets spawner.image
    # or, with KubeSpawner (instead of the three above):
    c.KubeSpawner.profile_list = chooser.profile_list

The form's choice is checked twice: in ``options_from_form`` (so a refused image shows as a message
on the form) and in ``pre_spawn_hook``, because a server started through the REST API
(``POST /hub/api/users/NAME/server``) passes its options without any form. KubeSpawner accepts only
a profile its ``profile_list`` offers (it asks the list again when the form comes back), so there
the list is the check: do not add the ``pre_spawn_hook`` (KubeSpawner applies a profile after the
hook has run, so the hook would see no image).

Which images a user may read is decided with the user's own repo2docker scopes (as JupyterHub
resolved them), with the same rules as the service (:mod:`r2d_core.scopes`), so a form never offers
an image the API would hide from that user.

Annotations are for spawners: the service stores them and never reads them.
:class:`AnnotationLimits` is an example hook that reads ``mem_limit``/``cpu_limit`` annotations of
the chosen image version and gives them to the spawner, held to the admin's maximum (whoever built
the image chose the annotations: they are requests, not grants)::

    limits = AnnotationLimits(chooser, max_mem_limit="4G", max_cpu_limit=2.0)
    c.Spawner.pre_spawn_hook = limits.pre_spawn_hook  # checks the image, sets image and limits

DockerSpawner turns them into the container's ``HostConfig.Memory`` and ``CpuQuota``/``CpuPeriod``
(cgroup limits); KubeSpawner into the pod's resource limits.
"""

from __future__ import annotations

import hashlib
import html
import re
from typing import Any

from .client import R2DClient
from .errors import Forbidden
from .scopes import Authorizer, parse_permissions

__all__ = ["AnnotationLimits", "ImageChooser"]


class _DBGroups:
    def __init__(self, db: Any) -> None:
        self.db = db

    async def members(self, group: str) -> frozenset[str]:
        from jupyterhub import orm

        found = orm.Group.find(self.db, group)
        return frozenset(u.name for u in found.users) if found is not None else frozenset()


class ImageChooser:
    """Builds spawner options from the images a user may read, and validates the choice."""

    def __init__(
        self, url: str, token: str, *, default_image: str | None = None, pushed_only: bool = False
    ) -> None:
        #: offer only images in the registry (Kubernetes nodes pull; they cannot use local images)
        self.pushed_only = pushed_only
        self.url = url
        self.token = token
        self.default_image = default_image

    async def images_for(self, spawner: Any) -> list[dict[str, Any]]:
        """The images ``spawner.user`` may read, newest first (one entry per image, newest version)."""
        from jupyterhub.scopes import get_scopes_for

        user = spawner.user
        scopes = get_scopes_for(user.orm_user)
        permissions = parse_permissions(scopes, user.name)
        authorizer = Authorizer(_DBGroups(user.db))
        owners = await authorizer.owners(permissions, "read")
        async with R2DClient(self.url, self.token) as client:
            images = await client.images()
        if self.pushed_only:
            images = [
                {**i, "versions": [v for v in i["versions"] if v["pushed"]]}
                for i in images
                if any(v["pushed"] for v in i["versions"])
            ]
            for i in images:
                i["image"] = i["versions"][0]["image"]
        return [i for i in images if owners is None or i["owner"] in owners]

    async def options_form(self, spawner: Any) -> str:
        images = await self.images_for(spawner)
        if not images:
            return (
                '<p class="text-muted">No repo2docker images yet: build one on the repo2docker page.</p>'
                + ('<input type="hidden" name="image" value="">' if not self.default_image else "")
            )
        options = "\n".join(
            f'<option value="{html.escape(i["image"])}">{html.escape(i["owner"])}/{html.escape(i["name"])}'
            f" — {html.escape(i['repo'])}@{html.escape(i['ref'])} ({html.escape(i['sha'][:8])})</option>"
            for i in images
        )
        return (
            '<label for="r2d-image">Image</label>\n'
            f'<select class="form-control" name="image" id="r2d-image">\n{options}\n</select>'
        )

    async def options_from_form(
        self, formdata: dict[str, list[str]], spawner: Any = None
    ) -> dict[str, str]:
        """``{"image": ...}`` from the form; with ``spawner`` (JupyterHub passes it when the
        callable accepts it), a refused image raises here and the Hub shows the form again with
        the reason."""
        image = (formdata.get("image") or [""])[0]
        if spawner is not None:
            image = await self.validate(spawner, image)
        return {"image": image}

    async def validate(self, spawner: Any, image: str) -> str:
        """The image to start, if ``spawner.user`` may read it; raise :class:`Forbidden` if not."""
        if not image:
            if self.default_image:
                return self.default_image
            raise _refusal("choose an image")
        allowed = {
            version["image"] for i in await self.images_for(spawner) for version in i["versions"]
        }
        if image not in allowed:
            raise _refusal(f"image {image!r} is not one of your repo2docker images")
        return image

    async def pre_spawn_hook(self, spawner: Any) -> None:
        """Check the chosen image again on the server side, then give it to the spawner."""
        image = await self.validate(spawner, (spawner.user_options or {}).get("image", ""))
        spawner.image = image

    async def annotations_for(self, spawner: Any, image: str) -> dict[str, str]:
        """The annotations of the version ``image`` names, among those ``spawner.user`` may
        read (``{}`` when it is none of them)."""
        for group in await self.images_for(spawner):
            for version in group["versions"]:
                if version["image"] == image:
                    return dict(version.get("annotations") or {})
        return {}

    async def profile_list(self, spawner: Any) -> list[dict[str, Any]]:
        """KubeSpawner ``profile_list``: one profile per image (validated again by KubeSpawner's
        own choice of a listed profile)."""
        images = await self.images_for(spawner)
        return [
            {
                "display_name": f"{i['owner']}/{i['name']}",
                # stable across calls: KubeSpawner lists the profiles again when the form comes
                # back, and a position would name another image once one is built or deleted
                "slug": _profile_slug(i["owner"], i["name"]),
                "description": f"{i['repo']}@{i['ref']} ({i['sha'][:8]})",
                "kubespawner_override": {"image": i["image"]},
                "default": index == 0,
            }
            for index, i in enumerate(images)
        ]


def _profile_slug(owner: str, name: str) -> str:
    """A KubeSpawner profile slug for one image: readable, stable, unique per (owner, name)."""
    readable = re.sub(r"[^a-z0-9]+", "-", f"{owner}-{name}".lower()).strip("-")[:40]
    digest = hashlib.sha256(f"{owner}\0{name}".encode()).hexdigest()[:8]
    return f"r2d-{readable}-{digest}"


def _refusal(message: str) -> Forbidden:
    """A :class:`Forbidden` whose message JupyterHub shows to the user.

    The Hub reports only ``tornado.web.HTTPError`` messages, or any exception's
    ``jupyterhub_message``; without it a refused API spawn answers a bare "Internal Server Error".
    """
    error = Forbidden(message)
    error.jupyterhub_message = message  # type: ignore[attr-defined]
    return error


_BYTE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_BYTES = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?$", re.IGNORECASE)


def parse_bytes(value: str) -> int:
    """``"2G"`` -> 2147483648 (JupyterHub's ``ByteSpecification`` units: K, M, G, T are powers of
    1024); ValueError for anything else."""
    match = _BYTES.match(value.strip())
    if not match:
        raise ValueError(f"{value!r} is not a size such as 512M or 2G")
    number, unit = match.groups()
    return int(float(number) * _BYTE_UNITS[unit.upper()])


class AnnotationLimits:
    """Example spawner hook: the chosen image's ``mem_limit``/``cpu_limit`` annotations become
    the spawner's ``mem_limit``/``cpu_limit``, each at most the admin's maximum.

    ``chooser`` checks the image (:meth:`ImageChooser.pre_spawn_hook`) and finds its version's
    annotations. The keys read are ``<namespace>.mem_limit`` and ``<namespace>.cpu_limit``
    (default namespace ``tljh``, as tljh-repo2docker calls them). An annotation that does not
    parse is ignored (logged); a larger value than the maximum is cut down to it; a missing one
    leaves the spawner's own setting. With no maximum given, an annotation is applied as is.
    """

    def __init__(
        self,
        chooser: ImageChooser,
        *,
        namespace: str = "tljh",
        max_mem_limit: str | int | None = None,
        max_cpu_limit: float | None = None,
    ) -> None:
        self.chooser = chooser
        self.namespace = namespace
        self.max_mem_limit = (
            parse_bytes(max_mem_limit) if isinstance(max_mem_limit, str) else max_mem_limit
        )
        self.max_cpu_limit = max_cpu_limit

    def limits(self, annotations: dict[str, str], log: Any = None) -> dict[str, Any]:
        """``{"mem_limit": bytes, "cpu_limit": cpus}`` from ``annotations`` (pure; bounded)."""
        found: dict[str, Any] = {}
        mem = annotations.get(f"{self.namespace}.mem_limit")
        if mem:
            try:
                value = parse_bytes(mem)
                if value <= 0:
                    raise ValueError("must be positive")
                if self.max_mem_limit is not None:
                    value = min(value, self.max_mem_limit)
                found["mem_limit"] = value
            except ValueError as e:
                if log is not None:
                    log.warning("ignoring the image's mem_limit annotation: %s", e)
        cpu = annotations.get(f"{self.namespace}.cpu_limit")
        if cpu:
            try:
                cpus = float(cpu)
                if not 0 < cpus < float("inf"):
                    raise ValueError(f"{cpu!r} is not a positive number of CPUs")
                if self.max_cpu_limit is not None:
                    cpus = min(cpus, self.max_cpu_limit)
                found["cpu_limit"] = cpus
            except ValueError as e:
                if log is not None:
                    log.warning("ignoring the image's cpu_limit annotation: %s", e)
        return found

    async def pre_spawn_hook(self, spawner: Any) -> None:
        """Check and set the image (the chooser), then apply its annotated limits."""
        await self.chooser.pre_spawn_hook(spawner)
        annotations = await self.chooser.annotations_for(spawner, spawner.image)
        for name, value in self.limits(annotations, getattr(spawner, "log", None)).items():
            setattr(spawner, name, value)
