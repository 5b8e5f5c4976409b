"""Render the REST API reference from the OpenAPI document the service serves."""

from __future__ import annotations

import json


def render() -> str:
    from r2d_tornado.openapi import openapi_document

    doc = openapi_document()
    out = [
        "# REST API reference",
        "",
        "Generated from the OpenAPI 3 document the service serves at `api/openapi.json`. Paths are",
        "relative to the service prefix (`/services/<name>/`, or `/hub/repo2docker/` with the TLJH",
        "plugin).",
        "",
        doc["info"]["description"],
        "",
    ]
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            out += [f"## `{method.upper()} {path}`", "", op.get("summary", ""), ""]
            if op.get("description"):
                out += [op["description"], ""]
            params = op.get("parameters", [])
            if params:
                out += ["Parameters:", ""]
                out += [f"- `{p['name']}` ({p['in']})" for p in params]
                out += [""]
            out += ["Responses:", ""]
            out += [f"- **{code}**: {r['description']}" for code, r in op["responses"].items()]
            out += [""]
    out += [
        "## Schemas",
        "",
        "```json",
        json.dumps(doc["components"]["schemas"], indent=2),
        "```",
        "",
    ]
    return "\n".join(out)


def setup(app: object) -> dict[str, object]:
    from generated_page import register

    return register(app, "reference/rest-api.md", render)
