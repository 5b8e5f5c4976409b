"""A build's log as an event stream (``text/event-stream``) or as plain text: replayed in bounded
chunks, then live, resumable with ``Last-Event-ID``, and a final ``done`` event."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from r2d_core.models import Build

from .base import StreamingHandler, r2d_api

__all__ = ["REPLAY_CHUNK", "BuildLogsHandler"]

#: a log replay is written (and flushed) in chunks of about this many bytes of log text
REPLAY_CHUNK = 64 * 1024


class BuildLogsHandler(StreamingHandler):
    """``text/event-stream`` of a build's log: replay, live, resumable, and a final ``done``."""

    @r2d_api
    async def get(self, build_id: str) -> None:
        query = self.query("get /api/builds/{build_id}/logs")
        build = await self.readable_build(build_id)
        # validated (whole numbers from 0): a resuming EventSource's Last-Event-ID wins
        last = query.get("Last-Event-ID")
        since = last + 1 if last is not None else query.get("since", 0)
        with self.ctx.stream_slot(self.identity):
            # the validated values, not the raw arguments ("00" is 0 for both)
            if query.get("format") == "text":
                await self._text(build, since, query.get("follow", 1) != 0)
            else:
                await self._events(build, since)

    async def _events(self, build: Build, cursor: int) -> None:
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")  # no proxy buffering (nginx)
        log = build.log
        sent_state: str | None = None
        while not self._closed:
            # replay in chunks of at most REPLAY_CHUNK bytes, each written and flushed before the
            # next is read: a connect never serialises the whole log, and a slow reader holds one
            # chunk. The truncation marker is a log event of its own (with `omitted`), id = the
            # last omitted line, so ids increase across the gap and a resume after it gets the tail.
            chunk = log.read(cursor, REPLAY_CHUNK)
            parts = []
            for line in chunk:
                event: dict[str, Any] = {
                    "phase": line.phase,
                    "message": line.message,
                    "time": line.time,
                }
                if line.omitted is not None:
                    event["omitted"] = line.omitted.to_dict()
                parts.append(f"id: {line.n}\nevent: log\ndata: {json.dumps(event)}\n\n")
                cursor = line.n + 1
            if chunk and cursor < log.total:
                if not await self._send("".join(parts)):
                    break
                continue
            state = build.state.value
            finished = log.closed and cursor >= log.total
            if state != sent_state and not finished:
                parts.append(f"event: state\ndata: {json.dumps(await self.build_json(build))}\n\n")
                sent_state = state
            if finished:
                parts.append(f"event: done\ndata: {json.dumps(await self.build_json(build))}\n\n")
                await self._send("".join(parts))
                break
            if parts and not await self._send("".join(parts)):
                break
            try:
                await asyncio.wait_for(log.wait_for_change(), self.ctx.keepalive_interval)
            except asyncio.TimeoutError:
                if not await self._send(": keepalive\n\n"):
                    break
        if not self._finished:
            self.finish()

    async def _text(self, build: Build, cursor: int, follow: bool) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")  # no proxy buffering (nginx)
        log = build.log
        # the headers at once: a queued build writes no line for minutes, and a proxy waiting
        # that long for an answer's headers gives up (nginx: 504 after proxy_read_timeout)
        if not await self._send(""):
            return
        while not self._closed:
            lines = log.read(cursor, REPLAY_CHUNK)  # in bounded chunks, like the event stream
            if lines:
                cursor = lines[-1].n + 1
                if not await self._send("".join(line.message + "\n" for line in lines)):
                    break
                if cursor < log.total:
                    continue
            if not follow or (log.closed and cursor >= log.total):
                break
            # text has no keepalive: wake up now and then to notice a client that went away (a
            # waiting build writes no line that would), so its stream slot is freed
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(log.wait_for_change(), self.ctx.keepalive_interval)
        if not self._finished:
            self.finish()
