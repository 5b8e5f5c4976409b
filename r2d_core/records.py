"""Build records and their logs as bytes: what the registry keeps of a build (issue 13).

A **record** is a small JSON document of what a build was: id, owner, name, repository URL, ref,
sha, image, options and annotations (when the build has them), who asked, its times, state,
outcome (``built``, ``failed``, ``cancelled`` or ``timed_out``: a build a time limit stopped,
whose state is ``failed``), error, failed step, push error and why the service stopped it. Never credentials: the record is made from an explicit list of
fields, not from the build object as a whole (:data:`RECORD_FIELDS`).

A **log** is the kept log (head, truncation marker, tail; see :mod:`r2d_core.logs`) as gzipped
JSON lines, one ``{"n", "phase", "message", "time"}`` object per line (the marker with
``"omitted"``), after a first line with the totals. Read back with :func:`decode_log`, it replays
through the event stream and the raw log exactly as the original did: same numbers, same text,
same marker.

Both are pure functions on bytes; :mod:`r2d_core.registry.artifacts` moves them to and from the
registry.
"""

from __future__ import annotations

import gzip
import json
import zlib
from typing import Any

from .errors import UpstreamError
from .logs import LogBudget, LogBuffer, LogLine, Omission
from .models import Build, BuildState, iso, parse_time

__all__ = [
    "LOG_MEDIA_TYPE",
    "MAX_LOG_BLOB",
    "MAX_RECORD_BLOB",
    "RECORD_FIELDS",
    "RECORD_MEDIA_TYPE",
    "build_from_record",
    "decode_log",
    "decode_record",
    "encode_log",
    "encode_record",
    "outcome",
]

RECORD_MEDIA_TYPE = "application/vnd.repo2docker-service.build.record.v1+json"
LOG_MEDIA_TYPE = "application/vnd.repo2docker-service.build.log.v1.jsonl+gzip"
RECORD_VERSION = 1

#: what a record may be, read back (a record is a few hundred bytes)
MAX_RECORD_BLOB = 256 * 1024
#: a compressed log read back; its decompressed size is bounded by the log limit too
MAX_LOG_BLOB = 64 * 1024 * 1024

#: the Build attributes a record keeps, and only these (no credentials, no internals)
RECORD_FIELDS = (
    "id",
    "owner",
    "name",
    "repo",
    "ref",
    "sha",
    "image",
    "push",
    "requested_by",
    "error",
    "failed_step",
    "push_error",
    "exit_code",
    "stop_reason",
)
#: optional attributes other features add to builds (per-build options, annotations)
OPTIONAL_FIELDS = ("options", "annotations")


def encode_record(build: Build) -> bytes:
    """The record of a finished build, as JSON bytes."""
    record: dict[str, Any] = {"version": RECORD_VERSION}
    for name in RECORD_FIELDS:
        record[name] = getattr(build, name)
    for name in OPTIONAL_FIELDS:
        value = getattr(build, name, None)
        if value:
            record[name] = _plain(value)
    record["state"] = build.state.value
    record["outcome"] = outcome(build)
    record["created"] = iso(build.created)
    record["started"] = iso(build.started)
    record["finished"] = iso(build.finished)
    return json.dumps(record, sort_keys=True, separators=(",", ":")).encode()


def outcome(build: Build) -> str:
    """How a build ended, for people and tools reading records: its state, but ``timed_out`` for
    a build a time limit stopped (its state is ``failed``, its ``stop_reason`` says which limit)."""
    if build.state == BuildState.FAILED and build.stop_reason:
        return "timed_out"
    return build.state.value


def _plain(value: Any) -> Any:
    """A JSON-able copy of an options/annotations value (dataclasses and mappings included)."""
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        value = to_dict()
    return json.loads(json.dumps(value, default=str))


def decode_record(body: bytes) -> dict[str, Any]:
    """A record's fields; :class:`UpstreamError` if it is not one."""
    try:
        record = json.loads(body)
    except (ValueError, RecursionError):
        raise UpstreamError("a build record in the registry is not JSON") from None
    if not isinstance(record, dict) or not all(
        isinstance(record.get(k), str) and record.get(k) for k in ("id", "owner", "name", "sha")
    ):
        raise UpstreamError("a build record in the registry lacks its id, owner, name or sha")
    try:
        BuildState(record.get("state"))
    except ValueError:
        raise UpstreamError("a build record in the registry has an unknown state") from None
    return record


def build_from_record(record: dict[str, Any], log: LogBuffer) -> Build:
    """The (finished, ``recovered``) build a record stands for."""

    def text(name: str) -> str:
        value = record.get(name)
        return value if isinstance(value, str) else ""

    def optional(name: str) -> str | None:
        value = record.get(name)
        return value if isinstance(value, str) and value else None

    exit_code = record.get("exit_code")
    if isinstance(exit_code, bool) or not isinstance(exit_code, int) or abs(exit_code) > 2**31:
        exit_code = None
    build = Build(
        id=text("id"),
        owner=text("owner"),
        name=text("name"),
        repo=text("repo"),
        ref=text("ref"),
        sha=text("sha"),
        image=text("image"),
        push=bool(record.get("push")),
        requested_by=text("requested_by"),
        state=BuildState(record["state"]),
        created=parse_time(optional("created")) or 0.0,
        started=parse_time(optional("started")),
        finished=parse_time(optional("finished")),
        error=optional("error"),
        failed_step=optional("failed_step"),
        push_error=optional("push_error"),
        stop_reason=optional("stop_reason"),
        exit_code=exit_code,
        recovered=True,
        log=log,
    )
    # options and annotations are JSON objects (annotations of strings): anything else the
    # registry holds would make every listing of builds fail (Build.to_dict copies them)
    options = record.get("options")
    if isinstance(options, dict) and hasattr(build, "options"):
        build.options = {str(k): v for k, v in options.items()}
    annotations = record.get("annotations")
    if isinstance(annotations, dict) and hasattr(build, "annotations"):
        build.annotations = {
            str(k): v for k, v in annotations.items() if isinstance(k, str) and isinstance(v, str)
        }
    return build


def encode_log(log: LogBuffer) -> bytes:
    """The kept log (with its truncation marker) as gzipped JSON lines."""
    parts = [json.dumps({"total": log.total, "bytes": log.total_bytes}, separators=(",", ":"))]
    for line in log.lines():
        item: dict[str, Any] = {
            "n": line.n,
            "phase": line.phase,
            "message": line.message,
            "time": line.time,
        }
        if line.omitted is not None:
            item["omitted"] = line.omitted.to_dict()
        parts.append(json.dumps(item, ensure_ascii=False, separators=(",", ":")))
    return gzip.compress(("\n".join(parts) + "\n").encode("utf-8", "surrogatepass"), mtime=0)


def decode_log(body: bytes, *, max_bytes: int, budget: LogBudget | None = None) -> LogBuffer:
    """A closed :class:`LogBuffer` from :func:`encode_log`'s bytes (at most ``max_bytes`` text)."""
    try:
        # bounded decompression: a small blob must not expand into gigabytes
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        text = inflater.decompress(body, max_bytes)
        if inflater.unconsumed_tail:
            raise UpstreamError(f"a build log in the registry is larger than {max_bytes} bytes")
        body_text = text.decode("utf-8", "surrogatepass").strip()
        # JSON lines hold no raw newline inside a value: one parse of all of them as an array
        # costs a third of one parse per line
        rows = json.loads("[" + body_text.replace("\n", ",") + "]") if body_text else []
        head = rows[0] if rows else {}
        total, total_bytes = int(head.get("total") or 0), int(head.get("bytes") or 0)
        lines = []
        for item in rows[1:]:
            omitted = item.get("omitted")
            lines.append(
                LogLine(
                    int(item["n"]),
                    str(item["phase"]),
                    str(item["message"]),
                    float(item.get("time") or 0.0),
                    len(str(item["message"]).encode("utf-8", "surrogatepass")) + 1
                    if omitted is None
                    else 0,
                    Omission(int(omitted["first"]), int(omitted["last"]), int(omitted["bytes"]))
                    if isinstance(omitted, dict)
                    else None,
                )
            )
    # the registry is untrusted: any shape of JSON (a list for an object, 1e400 for a line
    # number, 100 000 nested arrays) is a damaged log, never an exception that stops the restore
    except (
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
        OverflowError,
        RecursionError,
        zlib.error,
        EOFError,
        IndexError,
    ):
        raise UpstreamError("a build log in the registry is damaged") from None
    return LogBuffer.restored(lines, total=total, total_bytes=total_bytes, budget=budget)
