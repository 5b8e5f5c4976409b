"""``r2d-service``: the standalone JupyterHub service (managed by the Hub, or external).

::

    r2d-service                       # run (config: ./r2d_service_config.py, env, command line)
    r2d-service generate-config       # write a config file with every option
    r2d-service generate-hub-config   # print the jupyterhub_config.py snippet for this service
"""

from __future__ import annotations

import gc

# The imports below create ~80k long-lived objects (tornado, JupyterHub's auth, aiohttp, traitlets
# ...): the cyclic collector would walk them again and again while they load (~10 % of the start)
# and once more at the first request. It is off while they load; main() then freezes them
# (gc.freeze: what the gc docs advise for start-up state that lives as long as the process).
_gc_was_enabled = gc.isenabled()
gc.disable()
try:
    import asyncio
    import logging
    import os
    import signal
    import sys
    from typing import Any
    from urllib.parse import urlsplit

    from tornado import httpserver, web
    from traitlets import Bool, Dict, Float, Int, TraitError, Unicode, default, validate
    from traitlets.config import Application, catch_config_error

    from r2d_core import __version__
    from r2d_core.builders import DockerBuilder, LocalProcessBuilder
    from r2d_core.engine import DockerEngine
    from r2d_core.lifecycle import LifecyclePolicy
    from r2d_core.manager import BuildManager
    from r2d_core.options import BuildOptions
    from r2d_core.providers import RepoProviders
    from r2d_core.registry.config import Registry
    from r2d_core.scopes import Authorizer, HubGroups

    from .auth import HubOAuth, HubOAuthCallbackHandler, ServiceAuthBase
    from .handlers import R2DContext, make_handlers
    from .hubconfig import hub_config_snippet
    from .launch import LaunchButton
    from .logscrub import ScrubbedSummary, scrub_uri
finally:
    if _gc_was_enabled:
        gc.enable()


__all__ = ["R2DService", "main", "scrub_uri"]


class _CallbackHandler(ScrubbedSummary, HubOAuthCallbackHandler):
    @property
    def hub_auth(self):  # type: ignore[override]
        return self.settings["hub_auth"]


class GenerateHubConfig(Application):
    """Print a jupyterhub_config.py snippet registering this service."""

    name = "r2d-service generate-hub-config"
    description = "Print the jupyterhub_config.py snippet: service, custom scopes, roles, groups."
    mode = Unicode(
        "managed", config=True, help="'managed' (the Hub starts the service) or 'external'."
    )
    service_name = Unicode("repo2docker", config=True, help="The service's name in the Hub.")
    url = Unicode("http://127.0.0.1:8585", config=True, help="Where the service listens.")
    singleuser = Bool(False, config=True, help="Also let single-user servers call the API.")
    aliases = {
        "mode": "GenerateHubConfig.mode",
        "name": "GenerateHubConfig.service_name",
        "url": "GenerateHubConfig.url",
    }
    flags = {
        "singleuser": (
            {"GenerateHubConfig": {"singleuser": True}},
            "Add single-user server scopes.",
        )
    }

    def start(self) -> None:
        print(
            hub_config_snippet(
                name=self.service_name,
                mode=self.mode,
                url=self.url,
                singleuser=self.singleuser,
                command=_service_command(),
            )
        )


def _service_command() -> str:
    """``r2d-service`` by absolute path when it is installed next to this Python (a venv the
    Hub's PATH does not include), else the bare name."""
    path = os.path.join(os.path.dirname(sys.executable), "r2d-service")
    return path if os.access(path, os.X_OK) else "r2d-service"


class R2DService(Application):
    """The repo2docker-service web server, under ``/services/<name>/`` of a JupyterHub."""

    name = "r2d-service"
    version = __version__
    description = "Build images from repositories with repo2docker, as a JupyterHub service."
    examples = "r2d-service --port 8585\nr2d-service generate-hub-config --mode external"
    classes = [
        BuildManager,
        BuildOptions,
        DockerEngine,
        LocalProcessBuilder,
        DockerBuilder,
        LifecyclePolicy,
        Registry,
        RepoProviders,
        LaunchButton,
        HubGroups,
        HubOAuth,
    ]

    @default("log_level")
    def _default_log_level(self) -> int:
        return logging.INFO

    @default("log_format")
    def _default_log_format(self) -> str:
        return "[%(levelname)1.1s %(asctime)s.%(msecs).03d %(name)s] %(message)s"

    @default("log_datefmt")
    def _default_log_datefmt(self) -> str:
        return "%Y-%m-%d %H:%M:%S"

    config_file = Unicode(
        "r2d_service_config.py",
        config=True,
        help="Config file to load (default ./r2d_service_config.py; env R2D_CONFIG_FILE).",
    )

    @default("config_file")
    def _default_config_file(self) -> str:
        return os.environ.get("R2D_CONFIG_FILE", "r2d_service_config.py")

    service_url = Unicode(
        config=True,
        help="URL the service listens on. Default: env JUPYTERHUB_SERVICE_URL (set by the Hub for "
        "managed services), else http://127.0.0.1:8585.",
    )

    @default("service_url")
    def _default_service_url(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_URL") or "http://127.0.0.1:8585"

    ip = Unicode(config=True, help="IP to listen on. Default: the host of service_url.")

    @default("ip")
    def _default_ip(self) -> str:
        return urlsplit(self.service_url).hostname or "127.0.0.1"

    port = Int(config=True, help="Port to listen on. Default: the port of service_url.")

    @default("port")
    def _default_port(self) -> int:
        return urlsplit(self.service_url).port or 8585

    base_url = Unicode(
        config=True,
        help="URL prefix of the service. Default: env JUPYTERHUB_SERVICE_PREFIX, else /services/repo2docker/.",
    )

    @default("base_url")
    def _default_base_url(self) -> str:
        prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX") or "/services/repo2docker/"
        return "/" + prefix.strip("/") + "/"

    hub_prefix = Unicode(
        config=True,
        help="The Hub's URL prefix, for links back to it. Default: env JUPYTERHUB_BASE_URL + hub/.",
    )

    @default("hub_prefix")
    def _default_hub_prefix(self) -> str:
        return (os.environ.get("JUPYTERHUB_BASE_URL") or "/").rstrip("/") + "/hub/"

    permissions_ttl = Float(
        30.0,
        config=True,
        help="""Seconds a caller's scopes and group memberships may be cached (default 30). A role
        change in the Hub reaches the service within this time.""",
    )

    keepalive_interval = Float(
        15.0, config=True, help="Seconds between keepalive comments on event streams (default 15)."
    )

    request_timeout = Float(
        60.0,
        config=True,
        help="""Seconds a client may take to send a request's headers, or its body, and a kept-alive
        connection may sit idle (default 60). Tornado's own default is an hour: a client sending
        one byte a minute (slowloris) would hold a connection, and a file descriptor, that long.
        Event streams are answers, not requests: they are not cut.""",
    )

    @validate("request_timeout")
    def _check_request_timeout(self, proposal: Any) -> float:
        if proposal["value"] <= 0:
            raise TraitError("R2DService.request_timeout must be a positive number of seconds")
        return proposal["value"]

    max_streams_per_user = Int(
        20,
        config=True,
        help="""Event streams (build logs, the BinderHub-compatible endpoint) one user or service may
        hold open at once (default 20; 0: no limit); one more answers 429. Each open stream holds
        a connection for as long as its build runs.""",
    )

    tornado_settings = Dict(config=True, help="Extra tornado Application settings.")

    subcommands = {
        "generate-hub-config": (GenerateHubConfig, GenerateHubConfig.description),
        "generate-config": (
            "r2d_tornado.app.GenerateConfig",
            "Write a default r2d_service_config.py with every option.",
        ),
    }
    aliases = {
        "port": "R2DService.port",
        "ip": "R2DService.ip",
        "config": "R2DService.config_file",
        "base-url": "R2DService.base_url",
        "log-level": "Application.log_level",
    }

    @catch_config_error
    def initialize(self, argv: list[str] | None = None) -> None:
        super().initialize(argv)
        if self.subapp is not None:
            return
        if os.path.exists(self.config_file):
            self.load_config_file(self.config_file)
        self.manager = BuildManager(parent=self, log=self.log)
        # permissions_ttl is the default of both caches; c.HubGroups.ttl or c.HubOAuth.cache_max_age,
        # when set, is the admin's word for that one (a keyword here would override the config)
        ttl = {} if "ttl" in self.config.HubGroups else {"ttl": self.permissions_ttl}
        self.groups = HubGroups(parent=self, log=self.log, **ttl)
        max_age = {"cache_max_age": int(self.permissions_ttl)}
        if "cache_max_age" in self.config.HubOAuth or "cache_max_age" in self.config.HubAuth:
            max_age = {}
        self.hub_auth = HubOAuth(parent=self, log=self.log, **max_age)
        self.context = R2DContext(
            manager=self.manager,
            authorizer=Authorizer(self.groups),
            base_url=self.base_url,
            hub_url=self.hub_prefix,
            logout_url=self.hub_prefix + "logout",
            keepalive_interval=self.keepalive_interval,
            max_streams_per_user=self.max_streams_per_user,
        )
        handlers: list[Any] = make_handlers(self.base_url, ServiceAuthBase, self.context)
        handlers.insert(0, (self.base_url + "oauth_callback", _CallbackHandler))
        settings = {
            "hub_auth": self.hub_auth,
            "cookie_secret": os.urandom(32),
            "xsrf_cookies": False,  # checked by HubOAuth for cookie-authenticated writes only
            "log_function": self._log_request,
            **self.tornado_settings,
        }
        self.web_app = web.Application(handlers, **settings)

    def _log_request(self, handler: web.RequestHandler) -> None:
        status = handler.get_status()
        level = (
            self.log.info if status < 400 else self.log.warning if status < 500 else self.log.error
        )
        if handler.request.path.rstrip("/").endswith(("health", "metrics")) and status < 400:
            level = self.log.debug
        # query strings do carry secrets (OAuth code/state, _xsrf of EventSources, ?token=)
        location = ""
        if status in (301, 302, 303, 307, 308):
            target = handler._headers.get("Location")  # tornado has no public getter
            if target:
                location = f" -> {scrub_uri(target)}"
        level(
            "%d %s %s%s %.1fms",
            status,
            handler.request.method,
            scrub_uri(handler.request.uri or ""),
            location,
            1000 * handler.request.request_time(),
        )

    async def start_async(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await self.manager.start()
        # tornado reads a whole body before any handler runs: read at most this much (the API
        # answers 413 above MAX_BODY_BYTES itself; beyond this the connection is closed, 400)
        server = httpserver.HTTPServer(
            self.web_app,
            xheaders=True,
            max_body_size=8 * 1024 * 1024,
            idle_connection_timeout=self.request_timeout,  # also the time to send the headers
            body_timeout=self.request_timeout,
        )
        server.listen(self.port, self.ip)
        self.log.info(
            "repo2docker-service %s at http://%s:%d%s (builder: %s)",
            __version__,
            self.ip,
            self.port,
            self.base_url,
            self.manager.builder.kind,
        )
        await stop.wait()
        self.log.info("Stopping")
        server.stop()
        await self.manager.stop()
        await self.groups.close()
        await asyncio.wait_for(server.close_all_connections(), 5)

    def start(self) -> None:
        if self.subapp is not None:
            self.subapp.start()
            return
        asyncio.run(self.start_async())


class GenerateConfig(Application):
    """Write a default config file."""

    name = "r2d-service generate-config"
    output = Unicode("r2d_service_config.py", config=True, help="Where to write it.")
    force = Bool(False, config=True, help="Overwrite an existing file.")
    aliases = {"output": "GenerateConfig.output"}
    flags = {"force": ({"GenerateConfig": {"force": True}}, "Overwrite an existing file.")}

    def start(self) -> None:
        if os.path.exists(self.output) and not self.force:
            print(f"{self.output} exists; pass --force to overwrite", file=sys.stderr)
            self.exit(1)
        text = R2DService().generate_config_file()
        with open(self.output, "w") as f:
            f.write(text)
        print(f"Wrote {self.output}")


def main(argv: list[str] | None = None) -> None:
    app = R2DService.instance()
    app.initialize(argv)
    gc.freeze()  # what start-up made stays: later collections skip it
    app.start()


if __name__ == "__main__":
    main()
