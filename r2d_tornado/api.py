"""The JSON API: service info, images, builds (list, submit, get, cancel), health, metrics, the
OpenAPI document, and the JSON 404 for any other path under ``api/``."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from r2d_core import __version__, pages
from r2d_core.errors import Forbidden, InvalidRequest, NotFound
from r2d_core.metrics import METRICS_SCOPE
from r2d_core.metrics import REGISTRY as METRICS_REGISTRY
from r2d_core.models import Credentials
from r2d_core.scopes import ACTIONS, scope_for
from r2d_core.validation import NAME_PATTERN, REF_PATTERN

from .base import R2DHandler, r2d_api

__all__ = [
    "APINotFoundHandler",
    "BuildHandler",
    "BuildsHandler",
    "HealthHandler",
    "ImageHandler",
    "ImagesHandler",
    "InfoHandler",
    "MetricsHandler",
    "OpenAPIHandler",
]


class InfoHandler(R2DHandler):
    @r2d_api
    async def get(self) -> None:
        manager = self.manager
        self.write_json(
            {
                "version": __version__,
                "builder": manager.builder.kind,
                "registry": self.ctx.registry_info(),
                "limits": {
                    "max_concurrent_builds": manager.max_concurrent_builds,
                    "max_builds_per_owner": manager.max_builds_per_owner,
                    "max_queued_builds": manager.max_queued_builds,
                    **manager.lifecycle.limits(),
                    "max_queued_builds_per_owner": manager.max_queued_builds_per_owner,
                },
                "user": {"name": self.identity.name, "kind": self.identity.kind},
                "permissions": self.permissions.to_dict(),
                "scopes": {action: scope_for(action) for action in ACTIONS},
                "rules": {
                    "name_pattern": NAME_PATTERN,
                    "ref_pattern": REF_PATTERN,
                    "allowed_repo_patterns": list(manager.allowed_repo_patterns),
                },
                "docker": manager.ready,
                # what the UI's "Advanced" section may show this caller
                "options": manager.build_options.describe(
                    may_appendix=manager.build_options.may_use_appendix(self.identity.scopes)
                ),
            }
        )


class ImagesHandler(R2DHandler):
    @r2d_api
    async def get(self) -> None:
        query = self.query("get /api/images")
        if not self.permissions.grant("read").any:
            await self.require("read", self.identity.name)
        owners = await self.readable_owners(query.get("owner"))
        groups = await self.manager.list_images(owners)
        images = [await self.image_json(g) for g in groups]
        self.write_json({"images": images, "warnings": getattr(self.manager, "image_warnings", [])})


class ImageHandler(R2DHandler):
    @r2d_api
    async def get(self, owner: str, name: str) -> None:
        await self.require("read", owner, hide=True)
        self.write_json(await self.image_json(await self.manager.get_image(owner, name)))

    @r2d_api
    async def delete(self, owner: str, name: str) -> None:
        query = self.query("delete /api/images/{owner}/{name}")
        await self.require("delete", owner, hide=True)
        result = await self.manager.delete_image(owner, name, query.get("tag"))
        self.write_json(result)


class BuildsHandler(R2DHandler):
    @r2d_api
    async def get(self) -> None:
        query = self.query("get /api/builds")
        if not self.permissions.grant("read").any:
            await self.require("read", self.identity.name)
        owners = await self.readable_owners(query.get("owner"))
        states = query.get("state") or None
        builds, next_page = pages.page(
            self.manager.list_builds(owners, states),
            query.get("limit", pages.DEFAULT_LIMIT),
            query.get("before"),
        )
        self.write_json({"builds": [await self.build_json(b) for b in builds], "next": next_page})

    @r2d_api
    async def post(self) -> None:
        # types, unknown fields, sizes: the BuildRequest schema of the OpenAPI document
        body = self.body_json("BuildRequest")
        owner = body.get("owner") or (self.identity.name if self.identity.kind == "user" else None)
        if not owner:
            raise InvalidRequest(
                "a service must say which owner it builds for ('owner')", field="owner"
            )
        await self.require("build", owner)
        credentials = None
        if "credentials" in body:
            raw_credentials = body["credentials"]
            credentials = Credentials(
                raw_credentials.get("username") or "git", raw_credentials["password"]
            )
        # the ref lookup may wait long on a slow git server: one of the caller's slots
        self.r2d_hold_slot()
        try:
            result = await self.manager.submit(
                repo=body["repo"],
                ref=body.get("ref") or "HEAD",
                name=body.get("name") or None,
                owner=owner,
                requested_by=self.identity.name,
                push=body.get("push", False),
                force=body.get("force", False),
                credentials=credentials,
                options=body.get("options"),
                annotations=body.get("annotations"),
                may_appendix=self.manager.build_options.may_use_appendix(self.identity.scopes),
            )
        except InvalidRequest as e:
            if "field" not in e.details:
                e.details["field"] = _guess_field(str(e))
            raise
        if result.skipped:
            assert result.image is not None
            self.write_json(
                {
                    "skipped": True,
                    "reason": "an image for this commit already exists (send force to rebuild)",
                    "image": await self.image_json(result.image),
                }
            )
            return
        assert result.build is not None
        data = await self.build_json(result.build)
        data["joined"] = result.joined
        self.set_header("Location", data["url"])
        self.write_json(data, status=202)


def _guess_field(message: str) -> str:
    for field in ("repo", "ref", "name", "owner", "push", "credentials"):
        if message.startswith(field) or f" {field} " in message[:20]:
            return field
    return "repo"


class BuildHandler(R2DHandler):
    @r2d_api
    async def get(self, build_id: str) -> None:
        self.write_json(await self.build_json(await self.readable_build(build_id)))

    @r2d_api
    async def delete(self, build_id: str) -> None:
        build = await self.readable_build(build_id)
        await self.require("build", build.owner)
        build = await self.manager.cancel(build_id, by=self.identity.name)
        self.write_json(await self.build_json(build))


class HealthHandler(R2DHandler):
    """Unauthenticated, and says nothing about users: for load balancers and the Hub."""

    async def get(self) -> None:
        await self.r2d_setup()
        health = await self.manager.health()
        self.write_json(
            {"ok": health["ok"], "docker": health["docker"], "registry": health["registry"]},
            status=200 if health["ok"] else 503,
        )


class MetricsHandler(R2DHandler):
    """This service's metrics only (:data:`r2d_core.metrics.REGISTRY`), for holders of
    ``read:metrics`` (JupyterHub's scope for its own ``/hub/metrics``)."""

    @r2d_api
    async def get(self) -> None:
        if METRICS_SCOPE not in self.identity.scopes:
            raise Forbidden(
                f"metrics need the {METRICS_SCOPE} scope (as the Hub's own /hub/metrics); "
                "ask a Hub admin for a token with it",
                scope=METRICS_SCOPE,
            )
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.set_header("Cache-Control", "no-store")
        self.finish(generate_latest(METRICS_REGISTRY))


class APINotFoundHandler(R2DHandler):
    """Any other path under ``api/`` (or an id the routes refuse): a JSON 404, as the document
    says, not tornado's HTML page."""

    async def prepare(self) -> None:
        self.r2d_send_error(NotFound(f"no such API endpoint: {self.request.path}"))


class OpenAPIHandler(R2DHandler):
    @r2d_api
    async def get(self) -> None:
        from .openapi import openapi_document

        self.write_json(openapi_document(self.ctx.base_url))
