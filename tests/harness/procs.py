"""Process plumbing shared by every harness part: free ports, readiness waits, managed subprocesses,
per-run state directories and mount-aware cleanup.

Everything here is plain Python (no pytest) so the demo script can use it too.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

__all__ = [
    "HarnessError",
    "InThread",
    "ManagedProcess",
    "async_wait_for",
    "cleanup_stale_runs",
    "free_port",
    "mounts_under",
    "new_run_dir",
    "pid_alive",
    "remove_tree",
    "state_root",
    "tail",
    "unmount_under",
    "wait_for",
]


class HarnessError(RuntimeError):
    """A harness part could not start or stop; the message carries the tail of its log."""


def state_root() -> Path:
    """Where runs keep their state: ``$R2D_HARNESS_STATE`` or ``/var/tmp/r2d-harness``.

    ``/var/tmp`` rather than ``/tmp``: it is on the host's disk (overlay2 works there) and the
    path stays short, which matters for the unix sockets created below it (< 108 bytes).
    """
    return Path(os.environ.get("R2D_HARNESS_STATE") or "/var/tmp/r2d-harness")


def new_run_dir(kind: str = "run", create: bool = True) -> Path:
    """A fresh, never-shared directory ``<state_root>/<kind>-<pid>-<random>``.

    The pid in the name lets :func:`cleanup_stale_runs` recognise directories of dead runs.
    """
    root = state_root()
    root.mkdir(parents=True, exist_ok=True)
    while True:
        path = root / f"{kind}-{os.getpid()}-{secrets.token_hex(3)}"
        if not path.exists():
            break
    if create:
        path.mkdir(mode=0o755)
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tail(path: str | os.PathLike[str] | None, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file, for error messages ("" if there is no file)."""
    if path is None:
        return ""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def _timeout_message(what: str, timeout: float, log_tail: Callable[[], str] | None) -> str:
    msg = f"{what} not ready after {timeout:g}s"
    if log_tail is not None:
        text = log_tail()
        if text:
            msg += f"; last log lines:\n{text}"
    return msg


def wait_for(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    *,
    interval: float = 0.05,
    log_tail: Callable[[], str] | None = None,
) -> Any:
    """Poll ``predicate`` until it returns something truthy and return that.

    Raises :class:`TimeoutError` naming ``what`` (plus the log tail, if given) after ``timeout``
    seconds. An exception from the predicate propagates at once: predicates raise to say "this will
    never become ready" (e.g. the process exited).
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(_timeout_message(what, timeout, log_tail))
        time.sleep(interval)


async def async_wait_for(
    predicate: Callable[[], Any | Awaitable[Any]],
    timeout: float,
    what: str,
    *,
    interval: float = 0.05,
    log_tail: Callable[[], str] | None = None,
) -> Any:
    """:func:`wait_for` for async code: ``predicate`` may be sync or return an awaitable."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(_timeout_message(what, timeout, log_tail))
        await asyncio.sleep(interval)


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists (zombies count as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            # the state field follows the parenthesised command name
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class ManagedProcess:
    """A subprocess in its own session, logging to a file, stopped by its PID.

    ``start()`` raises :class:`HarnessError` if the program cannot be executed; ``stop()`` sends
    SIGTERM to the PID, waits ``stop_timeout`` seconds, then SIGKILLs the process group the process
    leads (it was started as a session leader, so the group holds only what it spawned). With
    ``reap_group=True`` what is left of the group is killed even after a clean exit.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: str | os.PathLike[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        stop_timeout: float = 15.0,
        pidfile: str | os.PathLike[str] | None = None,
        reap_group: bool = False,
    ) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_path)
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.stop_timeout = stop_timeout
        #: written on start, removed on stop: tells cleanup_stale_runs the directory is in use
        self.pidfile = Path(pidfile) if pidfile else None
        self.reap_group = reap_group
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)

    def start(self) -> ManagedProcess:
        if self.running():
            raise HarnessError(f"{self.name} already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        except OSError as e:
            self._log.close()
            self._log = None
            raise HarnessError(f"cannot start {self.name} ({self.argv[0]}): {e}") from e
        if self.pidfile is not None:
            self.pidfile.write_text(f"{self.proc.pid}\n")
        return self

    def check_running(self) -> None:
        """Raise :class:`HarnessError` with the log tail if the process has exited."""
        if self.proc is None:
            raise HarnessError(f"{self.name} was never started")
        code = self.proc.poll()
        if code is not None:
            raise HarnessError(
                f"{self.name} exited with status {code}; last lines of {self.log_path}:\n"
                f"{self.log_tail()}"
            )

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM, wait, SIGKILL the group; returns the exit status (None if never started)."""
        if self.proc is None:
            return None
        timeout = self.stop_timeout if timeout is None else timeout
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(10)
        if self.reap_group:
            # helpers the leader forked (git daemon's per-connection children) go with it
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.pidfile is not None:
            self.pidfile.unlink(missing_ok=True)
        return self.proc.returncode


def _unescape_mount_path(field: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as octal
    out = []
    i = 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts_under(path: str | os.PathLike[str]) -> list[str]:
    """Mount points at or below ``path`` (deepest first, ready to unmount in order)."""
    root = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            point = _unescape_mount_path(line.split()[4])
            if point == root or point.startswith(root.rstrip("/") + "/"):
                found.append(point)
    # deepest first; for stacked mounts on one point, the later (upper) one first
    return sorted(found, key=lambda p: p.count("/"), reverse=True)


def unmount_under(path: str | os.PathLike[str]) -> list[str]:
    """Unmount everything at or below ``path``; lazily if a plain unmount is refused.

    Returns the mount points that are still mounted afterwards (normally none).
    """
    for _ in range(3):
        points = mounts_under(path)
        if not points:
            return []
        for point in points:
            if subprocess.run(["umount", point], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", point], capture_output=True)
    return mounts_under(path)


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Unmount what is mounted below ``path``, then delete it.

    Refuses to delete while anything is still mounted below it: deleting through a mount would
    delete the mounted filesystem's files (a bind-mounted host directory, for example).
    """
    if not os.path.lexists(path):
        return
    left = unmount_under(path)
    if left:
        raise HarnessError(f"not removing {path}: still mounted below it: {left}")
    shutil.rmtree(path, ignore_errors=True)
    if os.path.lexists(path):
        # files that dockerd made immutable or busy: one more try, then report
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], capture_output=True)
        if os.path.lexists(path):
            raise HarnessError(f"could not remove {path}")


def cleanup_stale_runs(max_remove: int = 50) -> list[Path]:
    """Remove run directories left by harness processes that died without cleaning up.

    A directory ``<kind>-<pid>-<rand>`` is stale when process ``pid`` is gone and the dockerd
    recorded in its pidfile (if any) is gone too; nothing is ever killed here, so a directory whose
    daemon still runs (another engineer's run, or a crashed run's orphan) is left alone.
    """
    removed: list[Path] = []
    root = state_root()
    if not root.is_dir():
        return removed
    for entry in sorted(root.iterdir()):
        parts = entry.name.rsplit("-", 2)
        if len(parts) != 3 or not parts[1].isdigit() or not entry.is_dir():
            continue
        if pid_alive(int(parts[1])):
            continue
        busy = False
        # pidfiles live at the top of a run directory by convention; dockerd's containerd keeps
        # its own below the exec root ("x")
        for pidfile in [*entry.glob("*.pid"), *entry.glob("x/containerd/*.pid")]:
            try:
                busy = busy or pid_alive(int(pidfile.read_text().strip()))
            except (OSError, ValueError):
                pass
        if busy:
            continue
        try:
            remove_tree(entry)
            removed.append(entry)
        except HarnessError:
            continue
        if len(removed) >= max_remove:
            break
    return removed


class InThread:
    """Mixin for a ``socketserver`` server on a free port that serves from a daemon thread while
    used as a context manager (``with Server(...) as server: server.port``), or between
    ``start()`` and ``stop()``; ``stopping`` is set before the shutdown, so handlers in endless
    loops can end."""

    daemon_threads = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)  # type: ignore[attr-defined]

    @property
    def port(self) -> int:
        return self.server_address[1]  # type: ignore[attr-defined]

    def start(self) -> Any:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.shutdown()  # type: ignore[attr-defined]
        self.server_close()  # type: ignore[attr-defined]
        self._thread.join(10)

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
