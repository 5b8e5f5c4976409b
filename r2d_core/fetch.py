"""The fetch stage of every build: we clone the repository, then repo2docker builds the checkout.

repo2docker never talks to the repository's server. This module (standard library only: it runs
with a bare ``python3`` inside the repo2docker image for the
:class:`~r2d_core.builders.DockerBuilder`, and as ``python -m r2d_core.fetch`` for the
:class:`~r2d_core.builders.LocalProcessBuilder`) clones the canonical repository URL into a local
directory, checks out the resolved commit, fetches the submodules it allows, and then runs
``jupyter-repo2docker`` on that directory (repo2docker's local content provider: no ``--ref``, no
network fetch by repo2docker): in this process, imported while git clones (:class:`Preload`,
``spec["entry"]``), or by ``exec``-ing the command. The build stays one process (one container), so restart recovery
(labels, logs read again from Docker) works as before.

Credentials: read from stdin first thing (a pipe for the LocalProcessBuilder, the container's
stdin for the DockerBuilder; ``credentials_file`` names a file deleted before it is read, for
callers of this module that have no stdin to give), handed only to the git processes that fetch
from the repository's own origin, as the environment value of ``http.<canonical URL>.extraHeader``;
they are dropped before repo2docker starts, whose environment never holds them. How git runs is
described in :mod:`r2d_core.gitfetch`.

The build's non-secret parameters arrive as JSON in ``R2D_FETCH_SPEC`` (our serialisation, never
config text). Output: JSON lines in repo2docker's ``--json-logs`` format
(``{"phase": "fetching", "message": ...}``; ``"failed"`` on failure), so the manager parses the
fetch stage and repo2docker alike.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn

from .gitfetch import (  # noqa: F401  (re-exported: the fetch stage's names, as before the split)
    _FULL_SHA,
    MAX_GIT_OUTPUT,
    MAX_SUBMODULE_DEPTH,
    MAX_SUBMODULES,
    Credentials,
    Fetcher,
    FetchError,
    _Drain,
    check_links,
    emit,
    git_environment,
    header_key,
    resolve_submodule_url,
)
from .netpolicy import NetPolicy

__all__ = [
    "MAX_SUBMODULES",
    "MAX_SUBMODULE_DEPTH",
    "SPEC_ENV",
    "FetchError",
    "Fetcher",
    "check_links",
    "check_subdir",
    "git_environment",
    "main",
    "resolve_submodule_url",
]

#: the environment variable that carries the build's (non-secret) fetch parameters as JSON
SPEC_ENV = "R2D_FETCH_SPEC"
#: the most bytes read from the credentials channel
MAX_SECRET_BYTES = 64 * 1024
#: phase of the stage's last line when repo2docker ran in its process and a nonce was given
#: (``spec["exit_nonce"]``): ``{"phase": EXIT_PHASE, "status": N, "nonce": ...}``. The service ends
#: the build on it instead of waiting for the engine to report the container's exit (~40 ms of
#: teardown); build steps cannot forge it, they never see the nonce.
EXIT_PHASE = "r2d-exit"


# -- the stage as a program ------------------------------------------------------------------------
def read_credentials(spec: dict[str, Any]) -> Credentials | None:
    """The credentials, from the file named in the spec (deleted before it is read) or stdin."""
    data = b""
    path = spec.get("credentials_file")
    if path:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.unlink(path)  # gone from the container's filesystem before anything else runs
            data = os.read(fd, MAX_SECRET_BYTES)
        finally:
            os.close(fd)
    elif spec.get("credentials_stdin"):
        data = sys.stdin.buffer.read(MAX_SECRET_BYTES)
    if spec.get("credentials_stdin") or path:
        # repo2docker inherits no channel to them: stdin becomes /dev/null
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
    if not data:
        return None
    record = json.loads(data)
    return Credentials(str(record["username"]), str(record["password"]))


def run(spec: dict[str, Any], credentials: Credentials | None) -> None:
    """Fetch what ``spec`` names into ``spec["dest"]``; raise :class:`FetchError` if refused."""
    started = time.monotonic()
    policy = NetPolicy(spec.get("allowed_networks") or [])
    fetcher = Fetcher(
        allowed_patterns=list(spec["allowed_patterns"]),
        policy=policy,
        home=spec["home"],
        submodules=bool(spec.get("submodules", True)),
        deadline=started + float(spec.get("timeout", 600)),
        max_bytes=spec.get("max_bytes"),
        credentials=credentials,
    )
    os.makedirs(fetcher.home, mode=0o700, exist_ok=True)
    uid = spec.get("git_uid")
    if uid is not None and os.geteuid() == 0:
        # git runs unprivileged, in directories it owns (root keeps the rest of the container)
        os.makedirs(spec["dest"], mode=0o755, exist_ok=True)
        for path in (fetcher.home, spec["dest"]):
            os.chown(path, int(uid), int(uid))
        fetcher.uid = int(uid)
    url = fetcher.check(spec["repo"], "repository")
    fetcher.credentials_origin = url.origin
    sha = spec["sha"]
    if not spec.get("announce"):  # the build container's bootstrap said it already
        emit("fetching", f"Fetching {url} at {sha}")
    fetcher.fetch(url, spec["dest"], sha)
    emit("fetching", f"Fetched {url} at {sha} in {time.monotonic() - started:.1f} s")
    if spec.get("options"):
        # the log header names what makes this image differ from a plain build of the commit
        emit("fetching", "Build options: " + json.dumps(spec["options"], sort_keys=True))
    if spec.get("subdir"):
        check_subdir(spec["dest"], str(spec["subdir"]))


def check_subdir(dest: str, subdir: str) -> None:
    """Refuse a ``subdir`` that is not a folder inside the checkout ``dest`` once symlinks are
    resolved (repo2docker's ``--subdir`` only joins the paths: a symlink in the repository
    pointing at ``/etc`` would build the builder's own files)."""
    root = os.path.realpath(dest)
    target = os.path.realpath(os.path.join(root, subdir))
    if os.path.commonpath([root, target]) != root:
        raise FetchError(f"subdir {subdir!r} leads outside the repository (a symbolic link?)")
    if not os.path.isdir(target):
        raise FetchError(f"subdir {subdir!r} is not a folder of the repository at this commit")


class Preload:
    """Import the entry point ``module:function`` (``spec["entry"]``: repo2docker's) in a thread
    while git fetches, so repo2docker can then run in this process instead of an ``exec``.

    Why: the bare CLI spends ~120 ms importing repo2docker before it clones; the fetch stage
    clones first (git runs in its own processes and this thread mostly waits on their pipes), so
    the import overlaps the clone, and the second interpreter start of an ``exec`` goes too. What
    is imported is the image's (or the service's) own code from ``sys.path``; nothing of the
    checkout is on it (``-I``: no working directory, no ``PYTHON*`` variables). If the import
    fails (an image whose ``python3`` has no repo2docker), the stage ``exec``s the command as
    before.
    """

    def __init__(self, entry: str) -> None:
        self.module, _, self.function = entry.partition(":")
        self.target: Callable[[], Any] | None = None
        self._thread = threading.Thread(target=self._import, name="r2d-preload", daemon=True)
        self._thread.start()

    def _import(self) -> None:
        # any failure leaves target None: the command is exec'd instead (see result)
        with contextlib.suppress(Exception):
            self.target = getattr(importlib.import_module(self.module), self.function)

    def result(self) -> Callable[[], Any] | None:
        """The entry point once imported, or None (then the command is ``exec``'d)."""
        self._thread.join()
        return self.target


def run_in_process(
    target: Callable[[], Any], argv: list[str], env: dict[str, str], nonce: str | None = None
) -> NoReturn:
    """Run ``target`` (a console-script entry point) as its script would run: ``argv`` (the
    program name first) and ``env`` as its own, its return value or ``SystemExit`` as the exit
    status; ``nonce``: announce the status in a last line (:data:`EXIT_PHASE`) before the exit."""
    os.environ.clear()
    os.environ.update(env)
    sys.argv = [str(a) for a in argv]
    # an exec'd repo2docker would honour PYTHONUNBUFFERED; this interpreter runs with -I, which
    # ignores it: every line leaves at once, as the service follows the log live
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(line_buffering=True)
    try:
        result = target()  # a console script's wrapper: sys.exit(main())
    except SystemExit as e:
        result = e.code
    exit_now(result, nonce)


def _status(code: object) -> int:
    """The exit status ``sys.exit(code)`` gives (None: 0; an int; anything else is printed: 1)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def exit_now(code: object, nonce: str | None = None) -> NoReturn:
    """End the process as the interpreter's exit would, minus the teardown of every module
    repo2docker imported (~35 ms measured here, after its last line and before ``done``): wait for
    non-daemon threads, run ``atexit`` handlers (logging's flush, temporary files'
    finalizers), flush the standard streams, then ``os._exit``."""
    status = _status(code)
    run_exitfuncs = getattr(atexit, "_run_exitfuncs", None)
    if run_exitfuncs is None:  # not CPython: the usual exit
        raise SystemExit(status)
    current = threading.current_thread()
    for thread in threading.enumerate():
        if thread is not current and not thread.daemon:
            thread.join()
    run_exitfuncs()
    if nonce:
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.write(json.dumps({"phase": EXIT_PHASE, "status": status, "nonce": nonce}))
            sys.stdout.write("\n")
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # closed or gone: nothing left to say
    os._exit(status)


def main(argv: list[str] | None = None) -> int:
    raw = os.environ.pop(SPEC_ENV, None)
    if raw is None:
        print(f"usage: {SPEC_ENV}=<json> python -m r2d_core.fetch", file=sys.stderr)
        return 2
    spec = json.loads(raw)
    command = spec.get("exec")
    entry_argv = spec.get("entry_argv")
    preload = Preload(str(spec["entry"])) if entry_argv and spec.get("entry") else None
    try:
        credentials = read_credentials(spec)
    except (OSError, ValueError, KeyError, TypeError) as e:
        emit("failed", f"Could not read the repository credentials: {type(e).__name__}")
        return 1
    try:
        run(spec, credentials)
    except FetchError as e:
        emit("failed", f"Fetching the repository failed: {e}")
        return 1
    finally:
        credentials = None
    config = spec.get("config")
    if config:
        os.makedirs(os.path.dirname(config["path"]), exist_ok=True)
        with open(config["path"], "w") as f:
            f.write(config["text"])
    if not command:
        return 0
    sys.stdout.flush()
    sys.stderr.flush()
    env = {k: v for k, v in os.environ.items() if not k.startswith("R2D_FETCH_")}
    env.update({str(k): str(v) for k, v in (spec.get("exec_env") or {}).items()})
    target = preload.result() if preload is not None else None
    if target is not None:
        # Python's own signal dispositions stay, as in the bare CLI (its children get the
        # defaults back from subprocess's restore_signals)
        nonce = spec.get("exit_nonce")
        return run_in_process(target, entry_argv, env, str(nonce) if nonce else None)
    # Python ignores SIGPIPE (and the service may ignore more); an exec keeps ignored signals, so
    # repo2docker and every build step it starts would get EPIPE errors instead of the usual quiet
    # end of `cmd | head`. Hand them the defaults a shell would, as subprocess's restore_signals does.
    for name in ("SIGPIPE", "SIGXFSZ"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
    # the admin's repo2docker command (Builder/LocalProcessBuilder.command), argv only
    os.execvpe(command[0], command, env)  # nosec B606
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
