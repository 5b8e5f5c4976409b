"""Render the REST API reference from the OpenAPI document the service serves."""

from __future__ import annotations

import json


def _type(schema: dict) -> str:
    if "enum" in schema:
        return " | ".join(f"`{v}`" for v in schema["enum"])
    if schema.get("type") == "array":
        return f"list of {_type(schema.get('items', {}))}"
    text = schema.get("type", "any")
    if "minimum" in schema and "maximum" in schema:
        text += f" {schema['minimum']} to {schema['maximum']}"
    elif "minimum" in schema:
        text += f" ≥ {schema['minimum']}"
    if "default" in schema:
        text += f", default {schema['default']}"
    return text


def _parameter(p: dict) -> str:
    line = f"- `{p['name']}` ({p['in']}, {_type(p.get('schema', {}))})"
    return line + (f": {p['description']}" if p.get("description") else "")


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
                out += [_parameter(p) for p in params]
                out += [""]
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            if body:
                name = body["schema"].get("$ref", "").rsplit("/", 1)[-1]
                out += [f"Body: JSON, the `{name}` schema below (unknown fields are refused).", ""]
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
