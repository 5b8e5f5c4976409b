"""The OpenAPI document's component schemas: the answers' shapes (``Info``, ``Image``, ``Build``,
``Error`` ...) and the request schemas the handlers validate against (:mod:`r2d_core.schema`).

Split out of :mod:`r2d_tornado.openapi`, which keeps the paths, when that passed 600 lines.
"""

from __future__ import annotations

from typing import Any

from r2d_core.schema import REQUEST_SCHEMAS, STATES
from r2d_core.validation import NAME_PATTERN, REF_PATTERN

__all__ = ["component_schemas", "error", "json_content", "ref"]

_STATES = STATES


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def json_content(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def error(description: str) -> dict[str, Any]:
    return json_content(ref("Error"), description)


def component_schemas() -> dict[str, Any]:
    """``components.schemas``: every answer's shape and the request schemas."""
    string = {"type": "string"}
    nullable_string = {"type": "string", "nullable": True}
    time_ = {"type": "string", "format": "date-time", "nullable": True}
    grant = {
        "type": "object",
        "properties": {
            "all": {"type": "boolean"},
            "owners": {"type": "array", "items": string},
            "groups": {"type": "array", "items": string},
        },
    }
    # what a build was made with (r2d_core.options): part of the image's identity (its tag)
    identity = {
        "options": {
            "type": "object",
            "description": "the effective repo2docker options (admin defaults and the request's)",
        },
        "options_digest": {
            "type": "string",
            "nullable": True,
            "description": "digest of the options, in the image's tag (`-o<digest>`); null: none",
        },
        "annotations": {
            "type": "object",
            "additionalProperties": string,
            "description": "set at build time, never interpreted by the service",
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
            **identity,
        },
    }
    return {
        "Error": {
            "type": "object",
            "required": ["error", "message"],
            "properties": {
                "error": string,
                "message": string,
                "field": string,
                "scope": string,
                # which limit refused: a setting's name (queue caps, lifecycle policy) or
                # `request_body` (413)
                "limit": string,
                "max_bytes": {"type": "integer", "description": "the size limit (413)"},
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
                "limits": {
                    "type": "object",
                    "description": "the admin's limits callers may plan with (0: none)",
                    "properties": {
                        **{
                            name: {"type": "integer"}
                            for name in (
                                "max_concurrent_builds",
                                "max_builds_per_owner",
                                "max_queued_builds",
                                "max_queued_builds_per_owner",
                                "keep_versions",
                                "max_images_per_owner",
                                "max_bytes_per_owner",
                            )
                        },
                        "keep_failed_records": {
                            "type": "integer",
                            "description": "records (and logs) kept in the registry per "
                            "image of builds that left no image there "
                            "(c.LifecyclePolicy.keep_failed_records)",
                        },
                        "max_unused_days": {
                            "type": "number",
                            "description": "days an image version may go unused before the "
                            "lifecycle policy deletes it (c.LifecyclePolicy.max_unused_days)",
                        },
                        "max_build_age_days": {
                            "type": "number",
                            "description": "days a finished build and its log are remembered "
                            "(c.LifecyclePolicy.max_build_age_days)",
                        },
                        "max_failed_record_days": {
                            "type": "number",
                            "description": "days such a record is kept, by build time "
                            "(c.LifecyclePolicy.max_failed_record_days)",
                        },
                    },
                    "additionalProperties": {"type": "number"},
                },
                "user": {"type": "object", "properties": {"name": string, "kind": string}},
                "permissions": ref("Permissions"),
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
                "options": {
                    "type": "object",
                    "description": "the build options this caller may set (`allowed`), "
                    "the admin's defaults and bounds (c.BuildOptions)",
                    "properties": {
                        "allowed": {"type": "array", "items": string},
                        "defaults": {"type": "object"},
                        "target_repo_dir_prefixes": {"type": "array", "items": string},
                        "user_id_range": {"type": "array", "items": {"type": "integer"}},
                        "platforms": {"type": "array", "items": string},
                        "allowed_build_args": {"type": "array", "items": string},
                        "max_build_args": {"type": "integer"},
                        "max_appendix_bytes": {"type": "integer"},
                        "appendix_scope": string,
                    },
                },
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
                "options": identity["options"],
                "annotations": identity["annotations"],
                "versions": {"type": "array", "items": ref("ImageVersion")},
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
                "log": {
                    "type": "object",
                    "description": "the whole log's size (lines, UTF-8 bytes) and how much "
                    "of it the kept log omits: the middle of a log over "
                    "`BuildManager.max_log_bytes`, replaced by one marker line",
                    "properties": {
                        "lines": {"type": "integer"},
                        "bytes": {"type": "integer"},
                        "omitted_lines": {"type": "integer"},
                        "omitted_bytes": {"type": "integer"},
                    },
                },
                "requested_by": string,
                "recovered": {"type": "boolean"},
                "record_error": {
                    "type": "string",
                    "nullable": True,
                    "description": "why the build's record and log are not (yet) in the "
                    "registry (pushed builds only); the service retries",
                },
                **identity,
                "can_cancel": {"type": "boolean"},
                "joined": {"type": "boolean"},
                "logs_url": string,
                "url": string,
            },
        },
        # the request schemas the handlers validate against (r2d_core.schema)
        **REQUEST_SCHEMAS,
    }
