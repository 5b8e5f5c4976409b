"""The OpenAPI 3 document of the REST API (served at ``api/openapi.json``, rendered in the docs)."""

from __future__ import annotations

from typing import Any

from r2d_core import __version__
from r2d_core.metrics import METRICS_SCOPE
from r2d_core.schema import (
    MAX_BODY_BYTES,
    MAX_JSON_DEPTH,
    PARAMETERS,
)

from .openapi_schemas import component_schemas
from .openapi_schemas import error as _error
from .openapi_schemas import json_content as _json
from .openapi_schemas import ref as _ref

__all__ = ["openapi_document"]


_ERRORS = {
    "401": _error("Not logged in: no Hub cookie and no token"),
    "403": _error("Missing scope (the message names it), or a cookie without the XSRF token"),
    "503": _error("Docker engine (or registry, git server) unavailable"),
}
_BAD_QUERY = {"400": _error("Invalid query parameter; `field` names it")}


def _query(operation: str) -> list[dict[str, Any]]:
    """The operation's query/header parameters: the very ones the handlers validate against."""
    return [dict(p) for p in PARAMETERS[operation]]


def openapi_document(base_url: str = "/services/repo2docker/") -> dict[str, Any]:
    """The OpenAPI 3.0 document, with ``base_url`` as its server."""
    string = {"type": "string"}
    nullable_string = {"type": "string", "nullable": True}
    owner_param = {"name": "owner", "in": "path", "required": True, "schema": string}
    name_param = {"name": "name", "in": "path", "required": True, "schema": string}
    build_id = {
        "name": "build_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9a-f]+$"},
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "repo2docker-service",
            "version": __version__,
            "description": "Build container images from repositories with repo2docker, as a JupyterHub "
            "service. Authenticate with a JupyterHub OAuth cookie (scripted requests, reads "
            "included, need `X-XSRFToken` or `?_xsrf=`) or "
            "`Authorization: token <JupyterHub API token>`. Permissions are the custom scopes "
            "`custom:repo2docker:read|build|delete`, optionally filtered with `!user`, `!user=NAME`, "
            "`!group=NAME`. Request bodies are JSON of at most "
            f"{MAX_BODY_BYTES // 1024} KiB (larger: 413) nested at most {MAX_JSON_DEPTH} levels "
            "deep (deeper: 400); unknown fields are refused (400, `field` names them).",
        },
        "servers": [{"url": base_url}],
        "components": {
            "securitySchemes": {
                "hubToken": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "`token <JupyterHub API token>`",
                },
                "hubCookie": {"type": "apiKey", "in": "cookie", "name": "jupyterhub-services"},
            },
            "schemas": component_schemas(),
        },
        "security": [{"hubToken": []}, {"hubCookie": []}],
        "paths": {
            "/api/": {
                "get": {
                    "summary": "Service information and the caller's permissions",
                    "responses": {"200": _json(_ref("Info"), "Information"), **_ERRORS},
                }
            },
            "/api/images": {
                "get": {
                    "summary": "Images the caller may read, newest first",
                    "parameters": _query("get /api/images"),
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "images": {"type": "array", "items": _ref("Image")},
                                    "warnings": {"type": "array", "items": string},
                                },
                            },
                            "Images",
                        ),
                        **_BAD_QUERY,
                        **_ERRORS,
                    },
                }
            },
            "/api/images/{owner}/{name}": {
                "get": {
                    "summary": "One image and its versions",
                    "parameters": [owner_param, name_param],
                    "responses": {
                        "200": _json(_ref("Image"), "The image"),
                        "404": _error("No such image"),
                        **_ERRORS,
                    },
                },
                "delete": {
                    "summary": "Delete an image (all versions, or `tag`)",
                    "description": "Deletes the versions locally and in the registry, with their "
                    "build records. Without `tag`, the registry records of the image's builds "
                    "that left no image (failed, timed out, cancelled) go too, also when no "
                    "version is left (the answer then lists none); 404 when there is neither.",
                    "parameters": [
                        owner_param,
                        name_param,
                        *_query("delete /api/images/{owner}/{name}"),
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "deleted": {"type": "array", "items": string},
                                    "errors": {"type": "array", "items": {"type": "object"}},
                                },
                            },
                            "What was deleted, and what failed",
                        ),
                        **_BAD_QUERY,
                        "404": _error("No such image"),
                        **_ERRORS,
                    },
                },
            },
            "/api/builds": {
                "get": {
                    "summary": "Builds in progress and recent builds the caller may read",
                    "description": "Newest first, in pages of at most `limit` builds. While more "
                    "remain, `next` holds a cursor: pass it as `before` for the next (older) page; "
                    "on the last page it is null. Builds submitted meanwhile appear only on the "
                    "first page, so walking the pages neither repeats nor skips a build.",
                    "parameters": _query("get /api/builds"),
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "builds": {"type": "array", "items": _ref("Build")},
                                    "next": {
                                        **nullable_string,
                                        "description": "the `before` of the next page; null: "
                                        "this is the last page",
                                    },
                                },
                            },
                            "Builds",
                        ),
                        **_BAD_QUERY,
                        **_ERRORS,
                    },
                },
                "post": {
                    "summary": "Start a build (or join an identical one, or skip when built)",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("BuildRequest")}},
                    },
                    "responses": {
                        "202": _json(_ref("Build"), "Queued (or joined: `joined` is true)"),
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "skipped": {"type": "boolean"},
                                    "reason": string,
                                    "image": _ref("Image"),
                                },
                            },
                            "An image for this commit exists; nothing was built",
                        ),
                        "400": _error(
                            "Invalid input (not JSON, too deep, unknown field, wrong type, a "
                            "repository outside the allow-list, an unknown ref...); `field` "
                            "names it"
                        ),
                        "409": _error(
                            "Would overwrite another owner's image; or the owner is at a limit "
                            "(`error` `quota_exceeded`, `limit` names the setting)"
                        ),
                        "413": _error(f"The body is larger than {MAX_BODY_BYTES // 1024} KiB"),
                        "429": _error(
                            "Queue full, or the caller holds 20 event streams and submissions "
                            "in progress already (`max_streams_per_user`)"
                        ),
                        "504": _error(
                            "The git server did not send its refs within `ref_timeout` "
                            "(`error`: `ref_timeout`)"
                        ),
                        **_ERRORS,
                        "503": _error(
                            "Docker engine unavailable; or the disk guard refuses new builds "
                            "(`error` `insufficient_storage`, with `free_bytes`, `min_free_bytes`)"
                        ),
                    },
                },
            },
            "/api/builds/{build_id}": {
                "get": {
                    "summary": "One build",
                    "parameters": [build_id],
                    "responses": {
                        "200": _json(_ref("Build"), "The build"),
                        "404": _error("No such build"),
                        **_ERRORS,
                    },
                },
                "delete": {
                    "summary": "Cancel a queued or running build",
                    "parameters": [build_id],
                    "responses": {
                        "200": _json(_ref("Build"), "Cancelled"),
                        "404": _error("No such build"),
                        "409": _error("Finished already"),
                        **_ERRORS,
                    },
                },
            },
            "/api/builds/{build_id}/logs": {
                "get": {
                    "summary": "The build log as server-sent events (or plain text)",
                    "description": "Events: `log` (id = line number, data `{phase, message, time}` with time in Unix seconds), `state` "
                    "(data: Build), `done` (data: Build; the stream ends). A log longer than "
                    "`BuildManager.max_log_bytes` keeps its head and tail; in between, one `log` "
                    "event is the truncation marker (`… 180,000 lines (41 MB) omitted (lines "
                    "2,101-182,100) …`), whose data also has `omitted: {lines, bytes, first, last}` "
                    "and whose id is the last omitted line's number, so ids stay increasing and a "
                    "resume after it continues with the tail. Resume with `Last-Event-ID` "
                    "or `?since=N`. Comments `: keepalive` every 15 s. `?format=text` gives text/plain "
                    "(`&follow=0` without following).",
                    "parameters": [build_id, *_query("get /api/builds/{build_id}/logs")],
                    "responses": {
                        "200": {
                            "description": "The log",
                            "content": {
                                # the schema of each event (OpenAPI 3.2's itemSchema, as
                                # schemathesis reads it for 3.0 documents too)
                                "text/event-stream": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["event", "data"],
                                        "properties": {
                                            "event": {
                                                "type": "string",
                                                "enum": ["log", "state", "done"],
                                            },
                                            "id": {"type": "string", "pattern": "^[0-9]+$"},
                                            "data": {
                                                "type": "string",
                                                "description": "JSON: `{phase, message, time}` "
                                                "(log) or a Build (state, done)",
                                            },
                                        },
                                    }
                                },
                                "text/plain": {"schema": string},
                            },
                        },
                        **_BAD_QUERY,
                        "404": _error("No such build"),
                        "429": _error(
                            "The caller holds 20 event streams and submissions in progress "
                            "already (`max_streams_per_user`)"
                        ),
                        **_ERRORS,
                    },
                }
            },
            "/build/{provider}/{spec}": {
                "get": {
                    "summary": "BinderHub-compatible build (what jupyterhub-fancy-profiles and "
                    "@jupyterhub/binderhub-client call)",
                    "description": "The same build as `POST /api/builds`, in the caller's namespace, "
                    "answered as BinderHub's event stream: unnamed `data:` events with "
                    "`{phase, message, imageName?}`; phases `waiting`, `fetching`, `building`, "
                    "`pushing`, `built`, `ready` (the end, with `imageName`), `failed` (the end; "
                    "with `status_code` for errors such as a missing scope). `spec` is "
                    "`<owner>/<repo>/<ref>` for `gh`, `<url-escaped group/project>/<ref>` for `gl`, "
                    "`<url-escaped URL>/<ref>` for `git` (see `RepoProviders.url_templates`). "
                    "A client that disconnects does not cancel the build.",
                    "parameters": [
                        {
                            "name": "provider",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                        {"name": "spec", "in": "path", "required": True, "schema": string},
                        {
                            "name": "build_only",
                            "in": "query",
                            "required": True,
                            "description": "must be `true`: the service never launches servers",
                            "schema": {"type": "string", "enum": ["true"]},
                        },
                        {
                            "name": "owner",
                            "in": "query",
                            "description": "build for this owner (default: the caller)",
                            "schema": string,
                        },
                        {
                            "name": "name",
                            "in": "query",
                            "description": "the image's display name (default: the repository's)",
                            "schema": string,
                        },
                    ],
                    # Errors, authentication included, answer 200 with one `failed` event, as
                    # BinderHub does: @jupyterhub/binderhub-client shows a 4xx answer as
                    # "Failed to connect to event stream: 401 - function text() ...", never the
                    # message, so a user would not learn that a scope or a login is missing.
                    "responses": {
                        "200": {
                            "description": "The build's events. Errors, a missing login or scope "
                            "included, arrive as one `failed` event whose `status_code` is the HTTP "
                            "status `POST /api/builds` would answer (BinderHub's behaviour: its "
                            "clients show the message of a `failed` event, not an HTTP error).",
                            "content": {
                                "text/event-stream": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["data"],
                                        "properties": {
                                            "event": {"type": "string", "enum": ["message"]},
                                            "id": string,
                                            "data": {
                                                "type": "string",
                                                "description": "JSON: `{phase, message, "
                                                "imageName?, status_code?}`",
                                            },
                                        },
                                    }
                                }
                            },
                        }
                    },
                }
            },
            "/health": {
                "get": {
                    "summary": "Health (no authentication)",
                    "security": [],
                    "responses": {
                        "200": _json({"type": "object"}, "Healthy"),
                        "503": _json({"type": "object"}, "Docker engine unreachable"),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics of this service",
                    "description": f"Needs the `{METRICS_SCOPE}` scope (JupyterHub's own, as for "
                    "`/hub/metrics`). Serves only this service's `r2d_*` metrics.",
                    "responses": {
                        "200": {
                            "description": "Metrics",
                            "content": {"text/plain": {"schema": string}},
                        },
                        **_ERRORS,
                    },
                }
            },
        },
    }
