"""Request validation against the schemas the OpenAPI document publishes (r2d_core.schema)."""

from __future__ import annotations

import json

import pytest

from r2d_core.errors import InvalidRequest, PayloadTooLarge, error_response
from r2d_core.schema import (
    BUILD_REQUEST,
    MAX_BODY_BYTES,
    MAX_JSON_DEPTH,
    parse_json_body,
    validate_body,
    validate_query,
)
from r2d_tornado.app import scrub_uri
from r2d_tornado.openapi import openapi_document


def test_the_document_publishes_the_schemas_the_handlers_validate_against():
    doc = openapi_document()
    assert doc["components"]["schemas"]["BuildRequest"] is BUILD_REQUEST
    states = next(
        p for p in doc["paths"]["/api/builds"]["get"]["parameters"] if p["name"] == "state"
    )
    with pytest.raises(InvalidRequest):
        validate_query("get /api/builds", {"state": ["nope"]})
    assert "nope" not in states["schema"]["items"]["enum"]
    post = doc["paths"]["/api/builds"]["post"]["responses"]
    assert {"400", "413"} <= set(post)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"repo": "x", "owner": []}, "owner"),  # was: treated as the caller
        ({"repo": "x", "owner": ""}, "owner"),
        ({"repo": "x", "surprise": 1}, "surprise"),  # was: ignored
        ({"repo": "x", "credentials": {"password": "p", "token": "t"}}, "credentials"),
        ({"repo": "x", "credentials": {"username": "u"}}, "credentials"),
        ({"repo": "x", "credentials": "user:pw"}, "credentials"),
        ({"repo": "x", "push": "yes"}, "push"),
        ({"repo": "x", "force": 1}, "force"),
        ({"repo": "x", "ref": "-x"}, "ref"),
        ({"repo": "x", "ref": "main\n"}, "ref"),  # "$" is ECMA's: no newline before the end
        ({"repo": "x", "name": "no spaces"}, "name"),
        ({"repo": 7}, "repo"),
        ({"repo": "x" * 2049}, "repo"),
        ({}, "repo"),
        # an annotation key may hold dots (spawner hooks read "tljh.mem_limit"): the whole key
        ({"repo": "x", "annotations": {"tljh.mem_limit": "9" * 300}}, "annotations.tljh.mem_limit"),
        ({"repo": "x", "annotations": {"a": 1}}, "annotations.a"),
    ],
)
def test_invalid_bodies_name_the_field(body, field):
    with pytest.raises(InvalidRequest) as e:
        validate_body("BuildRequest", body)
    assert e.value.details["field"] == field, e.value
    assert field in str(e.value)


def test_valid_bodies_pass_unchanged():
    body = {
        "repo": "https://github.com/a/b",
        "ref": "",
        "name": "",
        "owner": "bob",
        "push": False,
        "force": True,
        "credentials": {"username": "", "password": "pw"},
    }
    assert validate_body("BuildRequest", body) == body
    with pytest.raises(InvalidRequest, match="JSON object"):
        validate_body("BuildRequest", [])


def test_size_and_depth_limits_before_parsing():
    with pytest.raises(PayloadTooLarge) as e:
        parse_json_body(json.dumps({"repo": "x" * MAX_BODY_BYTES}).encode())
    status, body = error_response(e.value)[:2]
    assert status == 413
    # the Error schema's `limit` is a name everywhere; the size is a number of its own
    assert body["limit"] == "request_body" and body["max_bytes"] == MAX_BODY_BYTES
    with pytest.raises(PayloadTooLarge):
        parse_json_body(b"{}", content_length=MAX_BODY_BYTES + 1)
    # 100k deep would raise RecursionError in json.loads (500 before this fix); within the size
    # limit it still must not reach the parser
    with pytest.raises(InvalidRequest, match="deeper"):
        parse_json_body(b"[" * 30000 + b"]" * 30000)
    deep_ok = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert parse_json_body(deep_ok) is not None
    # brackets inside strings do not count
    assert parse_json_body(json.dumps({"repo": "[" * 1000}).encode())["repo"] == "[" * 1000
    for bad in (b"", b"not json", b"\xff\xfe", b'{"a": "\\ud800'):
        with pytest.raises(InvalidRequest):
            parse_json_body(bad)


def test_query_parameters():
    assert validate_query("get /api/builds", {"state": ["built", "failed"], "x": ["y"]}) == {
        "state": ["built", "failed"]
    }
    assert validate_query("get /api/builds/{build_id}/logs", {"since": ["4"]}) == {"since": 4}
    for operation, args, field in [
        ("get /api/builds", {"state": ["bogus"]}, "state"),
        ("get /api/builds", {"owner": [""]}, "owner"),
        ("get /api/builds", {"owner": ["a", "b"]}, "owner"),
        ("get /api/builds/{build_id}/logs", {"since": ["-1"]}, "since"),
        ("get /api/builds/{build_id}/logs", {"since": ["x"]}, "since"),
        ("get /api/builds/{build_id}/logs", {"format": ["html"]}, "format"),
    ]:
        with pytest.raises(InvalidRequest) as e:
            validate_query(operation, args)
        assert e.value.details["field"] == field


def test_unexpected_errors_answer_a_generic_500():
    status, body = error_response(RecursionError("internal detail"))
    assert status == 500 and "internal detail" not in json.dumps(body)
    assert body["error"] == "internal"


@pytest.mark.parametrize(
    ("uri", "hidden"),
    [
        ("/services/r2d/oauth_callback?code=SECRET1&state=SECRET2", ["SECRET1", "SECRET2"]),
        ("/services/r2d/api/builds/ab/logs?_xsrf=SECRET1&since=3", ["SECRET1"]),
        ("/x?token=SECRET1", ["SECRET1"]),
        ("/x?%5Fxsrf=SECRET1&Access_Token=SECRET2", ["SECRET1", "SECRET2"]),
        ("/x?next=%2Fhub%2Fx%3Ftoken%3DSECRET1", ["SECRET1"]),
    ],
)
def test_request_log_scrubbing(uri, hidden):
    scrubbed = scrub_uri(uri)
    assert not any(secret in scrubbed for secret in hidden), scrubbed
    assert scrubbed.split("?")[0] == uri.split("?")[0]
    assert scrub_uri("/x/api/builds?owner=bob") == "/x/api/builds?owner=bob"
