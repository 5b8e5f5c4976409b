"""The OpenAPI 3 document of the REST API (served at ``api/openapi.json``, rendered in the docs)."""

from __future__ import annotations

from typing import Any

from r2d_core import __version__
from r2d_core.validation import NAME_PATTERN, REF_PATTERN

__all__ = ["openapi_document"]

_STATES = ["queued", "fetching", "building", "pushing", "built", "failed", "cancelled"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


_ERRORS = {
    "401": _error("Not logged in: no Hub cookie and no token"),
    "403": _error("Missing scope; the message names it"),
    "503": _error("Docker engine (or registry, git server) unavailable"),
}


def openapi_document(base_url: str = "/services/repo2docker/") -> dict[str, Any]:
    """The OpenAPI 3.0 document, with ``base_url`` as its server."""
    string = {"type": "string"}
    nullable_string = {"type": "string", "nullable": True}
    time_ = {"type": "string", "format": "date-time", "nullable": True}
    owner_param = {"name": "owner", "in": "path", "required": True, "schema": string}
    name_param = {"name": "name", "in": "path", "required": True, "schema": string}
    build_id = {
        "name": "build_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9a-f]+$"},
    }
    grant = {
        "type": "object",
        "properties": {
            "all": {"type": "boolean"},
            "owners": {"type": "array", "items": string},
            "groups": {"type": "array", "items": string},
        },
    }
    version = {
        "type": "object",
        "properties": {
            "tag": string,
            "image": string,
            "ref": string,
            "sha": string,
            "created": time_,
            "size": {"type": "integer", "nullable": True},
            "local": {"type": "boolean"},
            "pushed": {"type": "boolean"},
            "build_id": nullable_string,
        },
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "repo2docker-service",
            "version": __version__,
            "description": "Build container images from repositories with repo2docker, as a JupyterHub "
            "service. Authenticate with a JupyterHub OAuth cookie (writes need `X-XSRFToken`) or "
            "`Authorization: token <JupyterHub API token>`. Permissions are the custom scopes "
            "`custom:repo2docker:read|build|delete`, optionally filtered with `!user`, `!user=NAME`, "
            "`!group=NAME`.",
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
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "message"],
                    "properties": {
                        "error": string,
                        "message": string,
                        "field": string,
                        "scope": string,
                    },
                },
                "Permissions": {
                    "type": "object",
                    "properties": {a: grant for a in ("read", "build", "delete")},
                },
                "Info": {
                    "type": "object",
                    "properties": {
                        "version": string,
                        "builder": {"type": "string", "enum": ["local", "docker"]},
                        "registry": {
                            "type": "object",
                            "properties": {
                                "configured": {"type": "boolean"},
                                "url": nullable_string,
                            },
                        },
                        "limits": {"type": "object", "additionalProperties": {"type": "integer"}},
                        "user": {"type": "object", "properties": {"name": string, "kind": string}},
                        "permissions": _ref("Permissions"),
                        "scopes": {"type": "object", "additionalProperties": string},
                        "rules": {
                            "type": "object",
                            "properties": {
                                "name_pattern": {"type": "string", "example": NAME_PATTERN},
                                "ref_pattern": {"type": "string", "example": REF_PATTERN},
                                "allowed_repo_patterns": {"type": "array", "items": string},
                            },
                        },
                        "docker": {"type": "boolean"},
                    },
                },
                "ImageVersion": version,
                "Image": {
                    "type": "object",
                    "properties": {
                        "owner": string,
                        "name": string,
                        "display_name": string,
                        "repository": string,
                        "image": string,
                        "repo": string,
                        "ref": string,
                        "sha": string,
                        "created": time_,
                        "size": {"type": "integer", "nullable": True},
                        "local": {"type": "boolean"},
                        "pushed": {"type": "boolean"},
                        "can_build": {"type": "boolean"},
                        "can_delete": {"type": "boolean"},
                        "versions": {"type": "array", "items": _ref("ImageVersion")},
                    },
                },
                "Build": {
                    "type": "object",
                    "properties": {
                        "id": string,
                        "owner": string,
                        "name": string,
                        "display_name": string,
                        "repo": string,
                        "ref": string,
                        "sha": string,
                        "image": string,
                        "state": {"type": "string", "enum": _STATES},
                        "done": {"type": "boolean"},
                        "push": {"type": "boolean"},
                        "push_error": nullable_string,
                        "created": time_,
                        "started": time_,
                        "finished": time_,
                        "queue_position": {"type": "integer", "nullable": True},
                        "error": nullable_string,
                        "failed_step": nullable_string,
                        "last_lines": {"type": "array", "items": string},
                        "log_lines": {"type": "integer"},
                        "requested_by": string,
                        "recovered": {"type": "boolean"},
                        "can_cancel": {"type": "boolean"},
                        "joined": {"type": "boolean"},
                        "logs_url": string,
                        "url": string,
                    },
                },
                "BuildRequest": {
                    "type": "object",
                    "required": ["repo"],
                    "properties": {
                        "repo": {"type": "string", "description": "git URL (allow-listed)"},
                        "ref": {"type": "string", "default": "HEAD", "pattern": REF_PATTERN},
                        "name": {"type": "string", "pattern": NAME_PATTERN},
                        "owner": {"type": "string", "description": "default: the caller"},
                        "push": {"type": "boolean", "default": False},
                        "force": {"type": "boolean", "default": False},
                        "credentials": {
                            "type": "object",
                            "properties": {"username": string, "password": string},
                            "description": "for a private repository; never stored or logged",
                        },
                    },
                },
            },
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
                    "parameters": [{"name": "owner", "in": "query", "schema": string}],
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
                    "parameters": [
                        owner_param,
                        name_param,
                        {"name": "tag", "in": "query", "schema": string},
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
                        "404": _error("No such image"),
                        **_ERRORS,
                    },
                },
            },
            "/api/builds": {
                "get": {
                    "summary": "Builds in progress and recent builds the caller may read",
                    "parameters": [
                        {"name": "owner", "in": "query", "schema": string},
                        {
                            "name": "state",
                            "in": "query",
                            "schema": {"type": "string", "enum": _STATES},
                        },
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {"builds": {"type": "array", "items": _ref("Build")}},
                            },
                            "Builds",
                        ),
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
                        "400": _error("Invalid input; `field` names it"),
                        "409": _error("Would overwrite another owner's image"),
                        "429": _error("Queue full"),
                        "504": _error(
                            "The git server did not send its refs within `ref_timeout` "
                            "(`error`: `ref_timeout`)"
                        ),
                        **_ERRORS,
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
                    "(data: Build), `done` (data: Build; the stream ends). Resume with `Last-Event-ID` "
                    "or `?since=N`. Comments `: keepalive` every 15 s. `?format=text` gives text/plain "
                    "(`&follow=0` without following).",
                    "parameters": [
                        build_id,
                        {"name": "since", "in": "query", "schema": {"type": "integer"}},
                        {
                            "name": "format",
                            "in": "query",
                            "schema": {"type": "string", "enum": ["sse", "text"]},
                        },
                        {"name": "Last-Event-ID", "in": "header", "schema": {"type": "integer"}},
                    ],
                    "responses": {
                        "200": {
                            "description": "The log",
                            "content": {
                                "text/event-stream": {"schema": string},
                                "text/plain": {"schema": string},
                            },
                        },
                        "404": _error("No such build"),
                        **_ERRORS,
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
                    "summary": "Prometheus metrics",
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
