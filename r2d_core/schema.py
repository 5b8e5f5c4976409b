"""The request schemas of the REST API: one source of truth for the OpenAPI document and the checks.

:mod:`r2d_tornado.openapi` publishes these schemas (request bodies under ``components.schemas``,
query parameters on their operations) and the adapters validate every request against the very
same dictionaries with `jsonschema <https://python-jsonschema.readthedocs.io>`_ (already installed:
JupyterHub depends on it). No per-field type checks anywhere else.

The schemas use only keywords that mean the same in OpenAPI 3.0 Schema Objects and JSON Schema
draft 7 (``type``, ``properties``, ``required``, ``additionalProperties``, ``pattern``,
``minLength``/``maxLength``, ``minimum``/``maximum``, ``enum``, ``items``, ``maxItems``,
``maxProperties``, the annotation ``default``) and no ``nullable``,
so draft 7 validation is exactly what the document promises.

Limits, checked before the body is parsed (both documented in the OpenAPI document):

* :data:`MAX_BODY_BYTES` — larger bodies answer 413;
* :data:`MAX_JSON_DEPTH` — deeper nesting answers 400 (Python's parser recurses: a 100k-deep array
  would otherwise raise ``RecursionError``).
"""

from __future__ import annotations

import functools
import json
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import InvalidRequest, PayloadTooLarge
from .pages import CURSOR_PATTERN, DEFAULT_LIMIT, MAX_LIMIT
from .validation import NAME_PATTERN, REF_PATTERN


@functools.cache
def _import_jsonschema() -> Any:
    """``import jsonschema``, without the ``rfc3987_syntax`` package it loads when installed.

    JupyterHub's ``jupyter_events`` installs ``jsonschema[format-nongpl]``, whose
    ``rfc3987_syntax`` builds a grammar at import: ~1 s of every start of the service, for the
    ``iri`` formats of jsonschema's FormatChecker, which no schema here uses (they check no
    ``format`` at all). Hidden only while jsonschema is first imported, so a later ``import
    rfc3987_syntax`` still works; inside the Hub (TLJH) jsonschema is imported already and this
    changes nothing.
    """
    if "jsonschema" in sys.modules:
        return sys.modules["jsonschema"]
    hide = "rfc3987_syntax" not in sys.modules
    if hide:
        sys.modules["rfc3987_syntax"] = None  # type: ignore[assignment]  # import -> ImportError
    try:
        import jsonschema
    finally:
        if hide and sys.modules.get("rfc3987_syntax", False) is None:
            del sys.modules["rfc3987_syntax"]
    return jsonschema


__all__ = [
    "BUILD_REQUEST",
    "MAX_BODY_BYTES",
    "MAX_JSON_DEPTH",
    "PARAMETERS",
    "REQUEST_SCHEMAS",
    "STATES",
    "parse_json_body",
    "validate_body",
    "validate_query",
]

#: request bodies larger than this answer 413 (a build request is a few hundred bytes)
MAX_BODY_BYTES = 64 * 1024
#: JSON nested deeper than this answers 400 (a build request nests 2 levels)
MAX_JSON_DEPTH = 16

STATES = ["queued", "fetching", "building", "pushing", "built", "failed", "cancelled"]


def _or_empty(pattern: str) -> str:
    # "" means "the default" in the UI's form; the pattern applies to anything else
    return f"^$|{pattern}"


#: POST api/builds
BUILD_REQUEST: dict[str, Any] = {
    "type": "object",
    "required": ["repo"],
    "additionalProperties": False,
    "properties": {
        "repo": {
            "type": "string",
            "minLength": 1,
            "maxLength": 2048,
            "description": "the git URL of the repository (must match the service's allow-list)",
        },
        "ref": {
            "type": "string",
            "maxLength": 255,
            "pattern": _or_empty(REF_PATTERN),
            "default": "HEAD",
            "description": "a branch, tag or commit (empty: HEAD)",
        },
        "name": {
            "type": "string",
            "maxLength": 64,
            "pattern": _or_empty(NAME_PATTERN),
            "description": "the image's name: letters, digits, '.', '_', '-', starting with a "
            "letter or digit (empty: derived from the repository)",
        },
        "owner": {
            "type": "string",
            "minLength": 1,
            "maxLength": 255,
            "description": "the JupyterHub user whose namespace the image goes to (default: the "
            "caller; a service must send it)",
        },
        "push": {
            "type": "boolean",
            "default": False,
            "description": "push the image to the configured registry",
        },
        "force": {
            "type": "boolean",
            "default": False,
            "description": "build even if an image for this commit exists",
        },
        "credentials": {
            "type": "object",
            "required": ["password"],
            "additionalProperties": False,
            "properties": {
                "username": {"type": "string", "maxLength": 255, "description": "default: git"},
                "password": {"type": "string", "maxLength": 4096},
            },
            "description": "for a private repository (HTTP basic auth); never stored or logged",
        },
        "options": {
            "type": "object",
            "additionalProperties": False,
            "maxProperties": 7,
            "properties": {
                "subdir": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 255,
                    "description": "build this folder of the repository (repo2docker --subdir)",
                },
                "target_repo_dir": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 255,
                    "pattern": "^/",
                    "description": "where the repository goes in the image "
                    "(repo2docker --target-repo-dir)",
                },
                "user_id": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": 4294967294,
                    "description": "uid of the image's user (repo2docker --user-id)",
                },
                "user_name": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 32,
                    "description": "name of the image's user (repo2docker --user-name)",
                },
                "build_args": {
                    "type": "object",
                    "maxProperties": 16,
                    "additionalProperties": {"type": "string", "maxLength": 1024},
                    "description": "build arguments, name to value (repo2docker --build-arg)",
                },
                "appendix": {
                    "type": "string",
                    "minLength": 1,
                    # with everything else at its maximum, a body stays under MAX_BODY_BYTES
                    "maxLength": 16384,
                    "description": "Dockerfile text run at the end of the build (repo2docker "
                    "--appendix); needs the scope custom:repo2docker:appendix",
                },
                "platform": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 64,
                    "description": "the platform to build for, e.g. linux/amd64",
                },
            },
            "description": "repo2docker options; each one only where the admin allows it "
            "(GET api/ lists them under options.allowed); part of the image's identity",
        },
        "annotations": {
            "type": "object",
            "maxProperties": 32,
            "additionalProperties": {"type": "string", "maxLength": 256},
            "description": "namespaced keys (e.g. tljh.mem_limit) to short strings, stored as "
            "image labels and returned with the image; never interpreted by the service",
        },
    },
}

#: request body schemas by the name they are published under in ``components.schemas``
REQUEST_SCHEMAS: dict[str, dict[str, Any]] = {"BuildRequest": BUILD_REQUEST}

_OWNER_QUERY = {
    "name": "owner",
    "in": "query",
    "description": "only this owner's namespace",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
}

#: query (and header) parameters by operation (``"METHOD path"`` as in the OpenAPI document), as
#: OpenAPI Parameter Objects; ``array`` parameters may be repeated (``?state=a&state=b``)
PARAMETERS: dict[str, list[dict[str, Any]]] = {
    "get /api/images": [_OWNER_QUERY],
    "delete /api/images/{owner}/{name}": [
        {
            "name": "tag",
            "in": "query",
            "description": "delete only this version (a tag listed in `versions`)",
            "schema": {"type": "string", "minLength": 1, "maxLength": 128},
        }
    ],
    "get /api/builds": [
        _OWNER_QUERY,
        {
            "name": "state",
            "in": "query",
            "description": "only builds in these states (repeat the parameter for several)",
            "style": "form",
            "explode": True,
            "schema": {
                "type": "array",
                "maxItems": len(STATES),
                "items": {"type": "string", "enum": STATES},
            },
        },
        {
            "name": "limit",
            "in": "query",
            "description": "the most builds on this page",
            "schema": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_LIMIT,
                "default": DEFAULT_LIMIT,
            },
        },
        {
            "name": "before",
            "in": "query",
            "description": "the page after this cursor: the `next` value of the previous page "
            "(opaque; pages are newest first)",
            "schema": {"type": "string", "maxLength": 64, "pattern": CURSOR_PATTERN},
        },
    ],
    "get /api/builds/{build_id}/logs": [
        {
            "name": "since",
            "in": "query",
            "description": "the first line number to send",
            "schema": {"type": "integer", "minimum": 0},
        },
        {
            "name": "format",
            "in": "query",
            "description": "`sse` (default) or `text`",
            "schema": {"type": "string", "enum": ["sse", "text"]},
        },
        {
            "name": "follow",
            "in": "query",
            "description": "with `format=text`: `0` stops at the current end of the log",
            "schema": {"type": "integer", "enum": [0, 1]},
        },
        {
            "name": "Last-Event-ID",
            "in": "header",
            "description": "resume after this line number (what an EventSource sends when it "
            "reconnects)",
            "schema": {"type": "integer", "minimum": 0},
        },
    ],
}


_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")


def _ecma_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Any:
    # JSON Schema patterns are ECMA 262 regexes, where "$" matches only at the very end; Python's
    # "$" also matches before a final newline ("main\n" would pass ^...$)
    if isinstance(instance, str) and not re.search(
        _UNESCAPED_DOLLAR.sub(r"\\Z", pattern), instance
    ):
        yield _import_jsonschema().ValidationError(f"{instance!r} does not match {pattern!r}")


# jsonschema (with referencing and its metaschemas) costs ~0.1 s of CPU to import: it loads, and
# the validators are made, at the first request that has something to validate, not at every
# start of the service (whose first answer is usually a listing without parameters)
@functools.cache
def _draft7() -> Any:
    jsonschema = _import_jsonschema()
    return jsonschema.validators.extend(jsonschema.Draft7Validator, {"pattern": _ecma_pattern})


def _validator(schema: dict[str, Any]) -> Any:
    _draft7().check_schema(schema)
    return _draft7()(schema)


@functools.cache
def _body_validator(name: str) -> Any:
    return _validator(REQUEST_SCHEMAS[name])


def _query_schema(parameters: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {p["name"]: p["schema"] for p in parameters},
    }


@functools.cache
def _query_validator(operation: str) -> Any:
    return _validator(_query_schema(PARAMETERS[operation]))


# a JSON string (escapes included), so that brackets inside strings are not counted
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(rb"[\[\]{}]")


def json_depth_exceeds(data: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``data`` nests arrays/objects deeper than ``limit`` (a linear scan, no parsing)."""
    depth = 0
    for match in _BRACKETS.finditer(_JSON_STRING.sub(b'""', data)):
        if match.group() in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def parse_json_body(body: bytes | None, *, content_length: int | None = None) -> Any:
    """Decode a request body within the size and depth limits, or raise the error to answer."""
    size = len(body or b"")
    if size > MAX_BODY_BYTES or (content_length or 0) > MAX_BODY_BYTES:
        raise PayloadTooLarge(
            f"the request body is larger than {MAX_BODY_BYTES // 1024} KiB",
            # `limit` names a limit in every error body (a setting elsewhere); the number goes apart
            limit="request_body",
            max_bytes=MAX_BODY_BYTES,
        )
    if not body:
        raise InvalidRequest("the request needs a JSON body")
    if json_depth_exceeds(body):
        raise InvalidRequest(f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        # ValueError covers bad UTF-8 too (UnicodeDecodeError)
        raise InvalidRequest("the request body must be JSON") from None
    where = _lone_surrogate(data)
    if where is not None:
        raise InvalidRequest(
            f"{where or 'the request body'} holds a \\uD800-\\uDFFF escape without its pair: "
            "that is no Unicode character",
            **({"field": _field_name(where)} if where else {}),
        )
    return data


_SURROGATE = re.compile("[\ud800-\udfff]")


def _lone_surrogate(value: Any, path: str = "") -> str | None:
    """The dotted path of the first string holding a lone UTF-16 surrogate (``""``: the body
    itself), else None.

    JSON may spell one (``"\\ud800"``) and Python's parser keeps it (a valid pair becomes one
    character): a ``str`` no UTF-8 encoder takes, which would fail wherever a value is encoded
    (an image name, an HTTP header, a Docker label) with a 500. The depth is bounded already."""
    if isinstance(value, str):
        return path if _SURROGATE.search(value) else None
    items: Any = ()
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = ((str(i), v) for i, v in enumerate(value))
    for key, item in items:
        inner = f"{path}.{key}" if path else key
        if _SURROGATE.search(key):
            return path  # a key: its object is the place ("" for the body itself)
        found = _lone_surrogate(item, inner)
        if found is not None:
            return found
    return None


def _field_name(path: str) -> str:
    # the top-level field, but options and annotations name their entry (options.subdir); an
    # annotation is one level deep and its key may hold dots itself (annotations.tljh.mem_limit)
    parts = path.split(".")
    if parts[0] == "annotations" and len(parts) > 1:
        return path
    if parts[0] == "options" and len(parts) > 1:
        return ".".join(parts[:2])
    return parts[0]


def _first_error(validator: Any, instance: Any) -> InvalidRequest | None:
    errors = sorted(validator.iter_errors(instance), key=lambda e: (len(e.path), list(e.path)))
    if not errors:
        return None
    error = errors[0]
    path = [str(p) for p in error.absolute_path]
    if error.validator == "additionalProperties":
        known = set(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - known)
        field = ".".join([*path, unknown[0]]) if unknown else ".".join(path)
        return InvalidRequest(
            f"unknown field {field!r}; known fields: {', '.join(sorted(known))}",
            field=_field_name(field),
        )
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else ""
        field = ".".join([*path, missing]) if missing else ".".join(path)
        return InvalidRequest(f"{field} is required", field=field.split(".")[0])
    field = ".".join(path)
    description = error.schema.get("description")
    if error.validator == "type":
        what = {
            "string": "a string",
            "boolean": "true or false",
            "object": "a JSON object",
            "integer": "an integer",
            "array": "a list",
        }
        expected = error.validator_value
        message = f"must be {what.get(expected, expected)}" if isinstance(expected, str) else ""
        message = message or error.message
    elif error.validator == "enum":
        message = f"must be one of {', '.join(map(str, error.validator_value))}"
    elif error.validator == "pattern":
        message = f"does not match {error.validator_value}"
    elif error.validator in (
        "maxLength",
        "minLength",
        "maxItems",
        "minimum",
        "maximum",
        "maxProperties",
    ):
        message = {
            "maxLength": f"is longer than {error.validator_value} characters",
            "minLength": "must not be empty",
            "maxItems": f"may be given at most {error.validator_value} times",
            "minimum": f"must be at least {error.validator_value}",
            "maximum": f"must be at most {error.validator_value}",
            "maxProperties": f"may have at most {error.validator_value} entries",
        }[error.validator]
    else:
        message = "is invalid"
    if description:
        message += f": {description}"
    if not field:
        return InvalidRequest(f"the request body {message}")
    return InvalidRequest(f"{field} {message}", field=_field_name(field))


def validate_body(schema_name: str, data: Any) -> dict[str, Any]:
    """``data`` if it matches the request schema ``schema_name``, else raise :class:`InvalidRequest`
    naming the first offending field."""
    error = _first_error(_body_validator(schema_name), data)
    if error is not None:
        raise error
    return data


#: an integer in a query string: ASCII digits (int() also takes " 5", "1_0" and other scripts'
#: digits, which the handlers' own reading of the raw argument would not agree with)
_QUERY_INT = re.compile(r"-?[0-9]{1,18}")


def _coerce(value: str, schema: Mapping[str, Any]) -> Any:
    if schema.get("type") == "integer" and _QUERY_INT.fullmatch(value):
        return int(value)
    return value  # not a number: the schema names the expected type


def validate_query(
    operation: str,
    arguments: Mapping[str, Sequence[str]],
    headers: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """The typed query (and header) parameters of ``operation`` (``"get /api/builds"``), validated.

    ``arguments`` maps each query parameter's name to its (decoded) values; ``headers`` each
    header parameter's name, as the document spells it, to its values. Parameters the operation
    does not define are ignored (cache busters, ``_xsrf``, other headers); a non-array parameter
    given more than once is refused.
    """
    parameters = {p["name"]: p for p in PARAMETERS.get(operation, [])}
    values: dict[str, Any] = {}
    for name, parameter in parameters.items():
        source = (headers or {}) if parameter["in"] == "header" else arguments
        given = list(source.get(name, ()))
        if not given:
            continue
        schema = parameter["schema"]
        if schema.get("type") == "array":
            values[name] = [_coerce(v, schema.get("items", {})) for v in given]
        elif len(given) > 1:
            raise InvalidRequest(f"{name} may be given only once", field=name)
        else:
            values[name] = _coerce(given[0], schema)
    # an empty query matches every query schema here (objects with no required member)
    if values and operation in PARAMETERS:
        error = _first_error(_query_validator(operation), values)
        if error is not None:
            raise error
    return values
