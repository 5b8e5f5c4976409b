"""``./dev demo``: a demo JupyterHub with repo2docker-service on a private local Docker engine.

Starts, on loopback only: a private dockerd (no bridge, nothing pulled), local base images, a git
daemon serving example repositories, a docker-registry, and JupyterHub + configurable-http-proxy
with the service as a managed service (DockerBuilder: builds survive service restarts). Prints
where to click, then waits; Ctrl-C stops everything it started, by PID.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import threading

from tests.harness import Dockerd, GitServer, ensure_images
from tests.harness.hub import PASSWORD, Hub
from tests.harness.registry import RegistryServer
from tests.service_support import GROUPS, ROLES, SERVICE, make_hub, service_config


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--port", type=int, default=8000, help="Hub port on 127.0.0.1 (default 8000, or a free one)"
    )
    parser.add_argument("--builder", choices=["docker", "local"], default="docker")
    args = parser.parse_args(argv)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    started: list[object] = []
    try:
        print("Starting a private Docker engine ...", flush=True)
        dockerd = Dockerd().start()
        started.append(dockerd)
        ensure_images(dockerd.host)
        git = GitServer().start()
        started.append(git)
        registry = RegistryServer("anonymous")
        registry.start()
        started.append(registry)

        hub: Hub = make_hub(dockerd.host)
        if _port_free(args.port):
            hub.port = args.port
            hub.url = f"http://127.0.0.1:{hub.port}"
            hub.service_url = f"{hub.url}/services/{SERVICE}/"
        hub.config.roles = ROLES
        hub.config.groups = GROUPS
        hub.config.service_config = (
            service_config(builder=args.builder)
            + f"\nc.Registry.url = {registry.url!r}"
            + f"\nc.BuildManager.image_prefix = {registry.host + '/r2d-'!r}"
        )
        print("Starting JupyterHub with the service ...", flush=True)
        hub.start()
        started.append(hub)
        hub.wait_for_service()

        repos = "\n".join(f"    {git.url(name)}" for name in sorted(git.repos))
        print(
            f"""
repo2docker-service demo is running.

  Open        {hub.service_url}
  Log in as   alice, bob (own images), carol (read-only), admin1 (everything),
              erin (builds for group 'team'), gina (no repo2docker scope)
  Password    {PASSWORD}

  Repositories to build (Dockerfile repos build offline; 'requirements' fails offline on purpose):
{repos}
  Registry    {registry.url} (tick "push")

Ctrl-C stops everything.""",
            flush=True,
        )
        while not stop.wait(1):
            pass
        print("\nStopping ...", flush=True)
        return 0
    finally:
        for part in reversed(started):
            try:
                if isinstance(part, Hub):
                    part.cleanup()
                elif isinstance(part, RegistryServer):
                    part.close()
                else:
                    part.stop()  # type: ignore[attr-defined]
            except Exception as e:  # keep stopping the rest
                print(f"while stopping {part!r}: {e}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
