"""Builders run one build (our fetch stage, then repo2docker) and hand its output to the manager.

A :class:`Builder` is a configurable ABC chosen by ``BuildManager.builder_class`` (like repo2docker's
own ``ContainerEngine``):

* :class:`LocalProcessBuilder` runs the build as a child process of the service. Simple, no extra
  image; a build dies with the service.
* :class:`DockerBuilder` runs the build inside a container on the same engine, with the engine's
  socket mounted. The container carries the build's labels, so a restarted service finds running and
  finished builds again and re-reads their logs from Docker: builds survive restarts.

Both run the same two stages in one process: :mod:`r2d_core.fetch` clones the canonical repository
URL into a local directory (git with redirects off, ``GIT_ALLOW_PROTOCOL`` limited to the URL's
scheme, connections pinned to addresses the network policy checked, submodules held to the
allow-list), then runs ``jupyter-repo2docker --json-logs --no-run`` on that directory, with a
generated config file: in the stage's own process, imported while git clones
(:attr:`Builder.in_process`), or ``exec``-ed. repo2docker itself never fetches. The manager parses both stages' JSON log
lines.

Nothing a user sends is pasted into a config language: build fields reach the fetch stage as JSON
in an environment variable (our serialisation) and repo2docker as single argv elements; the
repo2docker config file holds admin settings only (:meth:`Builder.config_text` takes no build).
Git credentials reach the fetch stage on its stdin, read to the end first thing: a pipe (local) or
the container's stdin, written through the engine's attach endpoint as it starts (no extra round
trip); git gets them only as the environment value of ``http.<canonical URL>.extraHeader``;
repo2docker never sees them, no file, container setting or log keeps them. Builders never push:
the manager pushes a built image through the engine API (see :mod:`r2d_core.manager`), so a
registry outage never loses a build.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import functools
import json
import os
import shutil
import signal
import sys
import tempfile
import zlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traitlets import Bool, Float, Instance, Int, List, Unicode, default, validate
from traitlets.config import LoggingConfigurable

from .engine import DockerEngine
from .errors import Unavailable
from .fetch import SPEC_ENV
from .logs import LineSplitter
from .models import Build, Credentials, build_labels
from .options import repo2docker_option_args
from .sizes import env_bool, env_value

__all__ = [
    "FETCH_MODULES",
    "LABELS_ENV",
    "BuildProcess",
    "Builder",
    "LocalProcessBuilder",
    "RecoveredBuild",
    "build_environment",
    "fetch_bootstrap",
]

#: environment variable that carries the image labels (JSON) to repo2docker's config file
LABELS_ENV = "R2D_IMAGE_LABELS"

#: the stdlib-only modules the fetch stage runs from, in import order (shipped into containers)
FETCH_MODULES = ("urls", "netpolicy", "gitfetch", "fetch")


@functools.lru_cache(maxsize=1)
def fetch_bootstrap() -> str:
    """Python code (for ``python3 -c``) that runs :func:`r2d_core.fetch.main` from the sources of
    :data:`FETCH_MODULES`, carried compressed in the code itself.

    Carrying the sources in the command (~20 kB) costs no round trip: a build is one ``create`` and
    one ``start`` (credentials go to stdin at the same time); a ``put_archive`` before start would
    add a serial request to every build (~35 ms measured here; unpacking the sources costs ~27 ms
    in the container, not on the service's side). The code holds nothing but our own modules.

    Before it unpacks and compiles them (~60 ms in the container), it prints the build's first
    line, ``spec["announce"]`` (see :meth:`DockerBuilder.start`): users see the build start as soon
    as the container runs, as early as the bare CLI prints its first line.
    """
    here = Path(__file__).parent
    sources = {name: (here / f"{name}.py").read_text() for name in FETCH_MODULES}
    blob = base64.b64encode(zlib.compress(json.dumps(sources).encode(), 9)).decode()
    return (
        "import base64,json,os,sys,types,zlib\n"
        f"a=json.loads(os.environ.get({SPEC_ENV!r}) or '{{}}').get('announce')\n"
        "if a:sys.stdout.write(json.dumps({'phase':'fetching','message':a+'\\n'})+'\\n');sys.stdout.flush()\n"
        "p=types.ModuleType('r2d_core');p.__path__=[];sys.modules['r2d_core']=p\n"
        f"for n,s in json.loads(zlib.decompress(base64.b64decode('{blob}'))).items():\n"
        " m=types.ModuleType('r2d_core.'+n);m.__package__='r2d_core';sys.modules[m.__name__]=m\n"
        " setattr(p,n,m);exec(compile(s,'r2d_core/'+n+'.py','exec'),m.__dict__)\n"
        "sys.exit(sys.modules['r2d_core.fetch'].main())\n"
    )


def _env_on(name: str) -> bool:
    """A switch that is on unless the environment variable says ``0``/``false``/``no``/``off``."""
    return bool(env_value(name, env_bool, True))


def _credentials_json(credentials: Credentials) -> bytes:
    return json.dumps({"username": credentials.username, "password": credentials.password}).encode()


class BuildProcess(ABC):
    """One running repo2docker: its output lines, its exit status, and a way to stop it."""

    @abstractmethod
    def output(self) -> AsyncIterator[str]:
        """repo2docker's output, line by line, from the first line (replayed after a restart)."""

    @abstractmethod
    async def wait(self) -> int:
        """Wait for the end; return the exit status."""

    @abstractmethod
    async def cancel(self) -> None:
        """Stop the build now (idempotent)."""

    async def cleanup(self) -> None:  # noqa: B027 - optional hook
        """Release what the build held (temporary files); called once it is done."""

    #: whether :meth:`output` and :meth:`wait` can be called again after losing contact (the
    #: build goes on without us: a build container); a child process's pipe cannot be re-read
    reattachable: bool = False

    async def exists(self) -> bool:
        """Whether the build is still there to re-attach to (asked after losing contact)."""
        return False

    async def oom_killed(self) -> bool:
        """Whether the kernel's OOM killer ended it (asked once it exited with an error)."""
        return False

    #: the secret of the fetch stage's exit line (:data:`r2d_core.fetch.EXIT_PHASE`): the build
    #: ends on that line, before the engine reports the process's exit; None: wait for the exit
    exit_nonce: str | None = None


@dataclass
class RecoveredBuild:
    """A build found in Docker after a restart."""

    fields: dict[str, str]
    process: BuildProcess
    running: bool
    started: float | None = None
    finished: float | None = None
    #: how a finished build's process ended (None while it runs): its status, killed for memory
    exit_code: int | None = None
    oom_killed: bool = False


class Builder(LoggingConfigurable):
    """Base class: what every builder shares (the repo2docker command line and config file).

    (Not an ``abc.ABC``: traitlets' metaclass does not mix with ``ABCMeta``; subclasses must
    implement :meth:`start`.)
    """

    engine = Instance(DockerEngine)

    repo2docker_config = Unicode(
        "",
        config=True,
        help="""Extra repo2docker configuration (Python, as in ``repo2docker_config.py``) appended
        to the config file each build runs with, e.g.
        ``c.Repo2Docker.base_image = "docker.io/library/buildpack-deps:jammy"``. Default: empty.""",
    )

    build_network = Unicode(
        "",
        config=True,
        help="""Network for the ``docker buildx build`` steps (``--network``): e.g. ``none`` or
        ``host``. Default: empty, the engine's default. Env: ``R2D_BUILD_NETWORK``.""",
    )

    @default("build_network")
    def _default_build_network(self) -> str:
        return os.environ.get("R2D_BUILD_NETWORK", "")

    user_id = Int(1000, config=True, help="UID of the user in built images (default 1000).")
    user_name = Unicode(
        "jovyan", config=True, help="Name of the user in built images (default jovyan)."
    )

    extra_args = List(
        Unicode(),
        config=True,
        help="Extra command line arguments for ``jupyter-repo2docker`` (default none).",
    )

    submodules = Bool(
        True,
        config=True,
        help="""Fetch git submodules (default True, as repo2docker and ``git clone --recursive``
        do). Every submodule URL is held to ``BuildManager.allowed_repo_patterns`` and the address
        rule (``BuildManager.allowed_networks``) like the repository itself, nested ones too (at
        most 5 levels, 64 submodules); a refused one fails the build naming it. False: the
        checkout has empty submodule directories. Env: ``R2D_SUBMODULES`` (``0`` turns them
        off).""",
    )

    @default("submodules")
    def _default_submodules(self) -> bool:
        return _env_on("R2D_SUBMODULES")

    fetch_timeout = Float(
        600.0,
        config=True,
        help="""Most seconds the fetch stage (clone, checkout, submodules) may take before the
        build fails (default 600).""",
    )

    @validate("fetch_timeout")
    def _check_fetch_timeout(self, proposal: Any) -> float:
        from traitlets import TraitError

        if proposal["value"] <= 0:
            raise TraitError("fetch_timeout must be a positive number of seconds, e.g. 600")
        return proposal["value"]

    fetch_max_bytes = Int(
        4 * 1024**3,
        allow_none=True,
        config=True,
        help="""Most bytes the fetch stage may download into git object stores (the repository
        and its submodules together) before the build fails (default 4 GiB; None: no limit).""",
    )

    # Not config: the manager's policy, read from the parent BuildManager (one source of truth).
    allowed_repo_patterns = List(Unicode())
    allowed_networks = List(Unicode())

    @default("allowed_repo_patterns")
    def _default_allowed_repo_patterns(self) -> list[str]:
        from .validation import DEFAULT_ALLOWED_REPO_PATTERNS

        return list(
            getattr(self.parent, "allowed_repo_patterns", None) or DEFAULT_ALLOWED_REPO_PATTERNS
        )

    @default("allowed_networks")
    def _default_allowed_networks(self) -> list[str]:
        return list(getattr(self.parent, "allowed_networks", None) or [])

    in_process = Bool(
        True,
        config=True,
        help="""Run repo2docker inside the fetch stage's Python process, imported while git
        clones, instead of ``exec``-ing the repo2docker command once the clone is done: about
        0.1 s less per build (repo2docker's import, which the bare CLI pays before it clones, and
        one interpreter start). Only for the default command (``LocalProcessBuilder.command``
        unchanged; ``DockerBuilder``: the repo2docker that the image's ``python`` imports); if
        that import fails, the command is ``exec``-ed. Default True. False: always ``exec`` (e.g.
        when repo2docker needs ``PYTHON*`` variables, which the fetch stage's isolated
        interpreter ignores). Env: ``R2D_IN_PROCESS`` (``0`` turns it off).""",
    )

    @default("in_process")
    def _default_in_process(self) -> bool:
        return _env_on("R2D_IN_PROCESS")

    kind: str = "abstract"

    #: the console-script entry point of repo2docker (``jupyter-repo2docker``)
    repo2docker_entry = "repo2docker.__main__:main"

    def entry_point(self, command: list[str]) -> str | None:
        """The Python entry point that runs as ``command`` would, if the fetch stage may run it
        in its own process (see :attr:`in_process`); None: ``exec`` ``command``."""
        return None

    def fetch_spec(
        self,
        build: Build,
        workdir: str,
        command: list[str],
        *,
        credentials_stdin: bool = False,
    ) -> dict[str, Any]:
        """The fetch stage's parameters (JSON in ``R2D_FETCH_SPEC``): no secret in here."""
        config_path = f"{workdir}/repo2docker_config.py"
        source = f"{workdir}/repo"
        args = self.repo2docker_args(build, config_path, source)
        entry = self.entry_point(command) if self.in_process else None
        spec: dict[str, Any] = {
            "repo": build.repo,
            "sha": build.sha,
            "dest": source,
            "home": f"{workdir}/home",
            "allowed_patterns": list(self.allowed_repo_patterns),
            "allowed_networks": list(self.allowed_networks),
            # shown in the log header; subdir is checked inside the checkout after the fetch
            "options": build.options,
            "subdir": build.options.get("subdir"),
            "submodules": self.submodules,
            "timeout": self.fetch_timeout,
            "max_bytes": self.fetch_max_bytes,
            "credentials_stdin": credentials_stdin,
            "config": {"path": config_path, "text": self.config_text()},
            # repo2docker's environment: the image labels as JSON (see config_text)
            "exec_env": {LABELS_ENV: json.dumps(build_labels(build, "image"))},
            "exec": [*command, *args],
        }
        if entry is not None:
            # imported while git clones, then run with this argv instead of the exec
            spec["entry"] = entry
            spec["entry_argv"] = ["jupyter-repo2docker", *args]
        return spec

    def config_text(self) -> str:
        """The repo2docker config file a build runs with: admin settings only (it takes no build,
        so no user-sent value can reach this Python text)."""
        lines = [
            "# generated by repo2docker-service for one build; removed afterwards",
            "c = get_config()  # noqa",
        ]
        if self.build_network:
            lines.append(
                f"c.DockerEngine.extra_buildx_build_args = {json.dumps(['--network', self.build_network])}"
            )
        if self.repo2docker_config:
            lines.append(self.repo2docker_config)
        # The image labels (owner, name, repo, ref, ... : user-sent values) are not given to
        # repo2docker's --label, which pastes them into the LABEL lines of the Dockerfiles it
        # generates. They arrive as JSON in the environment and become `docker buildx build
        # --label k=v` argv elements; this text is constant. Appended last, so an admin's own
        # extra_buildx_build_args are kept.
        lines += [
            "import json as _r2d_json, os as _r2d_os",
            f"_r2d_labels = _r2d_json.loads(_r2d_os.environ.get({LABELS_ENV!r}, '{{}}'))",
            "c.DockerEngine.extra_buildx_build_args.extend(",
            "    [a for k, v in sorted(_r2d_labels.items()) for a in ('--label', f'{k}={v}')]",
            ")",
        ]
        return "\n".join(lines) + "\n"

    def repo2docker_args(self, build: Build, config_path: str, source: str) -> list[str]:
        """Arguments after the ``jupyter-repo2docker`` command itself; ``source`` is the local
        checkout the fetch stage made (no ``--ref``: repo2docker fetches nothing)."""
        options = dict(build.options)
        args = [
            "--config",
            config_path,
            "--json-logs",
            "--no-run",
            "--user-id",
            str(options.pop("user_id", self.user_id)),
            "--user-name",
            options.pop("user_name", self.user_name),
            "--image-name",
            build.image,
        ]
        # the build's options (validated by r2d_core.options): one argv element per value
        args += repo2docker_option_args(options)
        args += list(self.extra_args)
        # "--" is not understood by repo2docker's argparse before the positional: the source is
        # an absolute path of ours
        args.append(source)
        return args

    async def start(self, build: Build) -> BuildProcess:
        """Start ``build``; return its running process."""
        raise NotImplementedError(f"{type(self).__name__} must implement start()")

    async def recover(self) -> list[RecoveredBuild]:
        """Builds that outlived the previous service process (none, unless they run in Docker)."""
        return []

    async def forget(self, build: Build) -> None:
        """Remove what Docker keeps of a finished build (its container), when history expires."""


# ------------------------------------------------------------------------------------------------
class _LocalProcess(BuildProcess):
    def __init__(self, proc: asyncio.subprocess.Process, workdir: str) -> None:
        self.proc = proc
        self.workdir = workdir

    async def output(self) -> AsyncIterator[str]:
        # Read in chunks, not readline(): StreamReader.readline() discards a line over its limit
        # (and raises). Chunks are decoded incrementally (a character cut between two reads stays
        # whole; invalid bytes become U+FFFD) and cut into bounded lines; a last line without a
        # newline is kept.
        assert self.proc.stdout is not None
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        splitter = LineSplitter()
        while True:
            raw = await self.proc.stdout.read(1 << 16)
            for line in splitter.feed(decoder.decode(raw, final=not raw)):
                yield line
            if not raw:
                break
        last = splitter.flush()
        if last is not None:
            yield last

    async def wait(self) -> int:
        return await self.proc.wait()

    async def cancel(self) -> None:
        if self.proc.returncode is not None:
            return
        # repo2docker runs `docker buildx build` as its own child: stop the whole process group,
        # so the buildx client goes too and BuildKit cancels the build.
        for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                await asyncio.wait_for(self.proc.wait(), grace)
                return
            except asyncio.TimeoutError:
                continue

    async def cleanup(self) -> None:
        # a checkout can hold many files: off the event loop
        await asyncio.to_thread(shutil.rmtree, self.workdir, True)


#: prefixes of the service's own variables, never inherited by a build: the Hub's API token and
#: OAuth client (``JUPYTERHUB_*``, ``JPY_*``), the service's settings and secrets (``R2D_*``, e.g.
#: ``R2D_REGISTRY_PASSWORD``). repo2docker reads the hostile repository in that process.
_SERVICE_ENV_PREFIXES = ("JUPYTERHUB_", "JPY_", "R2D_")


def build_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment a local build inherits: the service's, without its identity and secrets
    (proxies, ``PATH``, ``HOME``, ``DOCKER_*`` stay)."""
    return {k: v for k, v in environ.items() if not k.upper().startswith(_SERVICE_ENV_PREFIXES)}


class LocalProcessBuilder(Builder):
    """Run the build as a child process of the service: ``python -I -m r2d_core.fetch`` fetches
    into a temporary directory (removed afterwards), then runs repo2docker (in its own process,
    see :attr:`Builder.in_process`, or by ``exec``-ing :attr:`command`)."""

    kind = "local"

    command = List(
        Unicode(),
        config=True,
        help="""The repo2docker command. Default: ``[sys.executable, "-m", "repo2docker"]``, the
        repo2docker installed next to this service.""",
    )

    @default("command")
    def _default_command(self) -> list[str]:
        return [sys.executable, "-m", "repo2docker"]

    def entry_point(self, command: list[str]) -> str | None:
        # the fetch stage runs with sys.executable too: the same repo2docker
        if list(command) == [sys.executable, "-m", "repo2docker"]:
            return self.repo2docker_entry
        return None

    async def start(self, build: Build) -> BuildProcess:
        workdir = tempfile.mkdtemp(prefix=f"r2d-build-{build.id}-")
        credentials = build.credentials
        spec = self.fetch_spec(
            build, workdir, list(self.command), credentials_stdin=credentials is not None
        )
        env = build_environment(os.environ)
        env[SPEC_ENV] = json.dumps(spec)
        env["DOCKER_HOST"] = self.engine.host
        env["PYTHONUNBUFFERED"] = "1"
        try:
            # -I: the fetch stage imports nothing from its working directory or PYTHON* variables
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-I",
                "-m",
                "r2d_core.fetch",
                stdin=asyncio.subprocess.PIPE if credentials else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                cwd=workdir,
                start_new_session=True,
                limit=1 << 20,
            )
        except OSError as e:
            shutil.rmtree(workdir, ignore_errors=True)
            raise Unavailable(f"could not start the build ({sys.executable}): {e}") from None
        if credentials is not None:
            # through a pipe: the credentials never touch a file, argv or the environment
            assert proc.stdin is not None
            try:
                proc.stdin.write(_credentials_json(credentials))
                await proc.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the process died first: its exit status tells
            finally:
                proc.stdin.close()
        return _LocalProcess(proc, workdir)


def __getattr__(name: str) -> Any:
    # DockerBuilder lives in its own module, which imports this one; it is still named
    # ``r2d_core.builders.DockerBuilder`` in configuration (``BuildManager.builder_class``)
    if name == "DockerBuilder":
        from .docker_builder import DockerBuilder

        return DockerBuilder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
