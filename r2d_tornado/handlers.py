"""The routes of the HTTP API, the event-stream logs and the UI, written once for both adapters.

Each handler is a *logic mixin* (on :class:`~r2d_tornado.base.R2DHandler`). An adapter turns them
into tornado handlers with :func:`make_handlers`, putting its own base class behind them; that base
supplies only

* ``async r2d_identify() -> Identity | None`` — who is calling, with the scopes JupyterHub resolved;
* ``r2d_login_url() -> str`` — where a logged-out browser goes;
* ``r2d_xsrf_token() -> str`` — the token the UI sends back on writes (checked by the adapter).

Everything else lives in this package, so the standalone service (:mod:`r2d_tornado.app`) and the
TLJH plugin (:mod:`r2d_tljh`) cannot drift apart:

* :mod:`r2d_tornado.base` — identity, context, permissions, the one exception-to-HTTP mapping;
* :mod:`r2d_tornado.api` — the JSON API (info, images, builds, health, metrics, OpenAPI);
* :mod:`r2d_tornado.streams` — a build's log as an event stream or text;
* :mod:`r2d_tornado.ui` — the UI page and its static files;
* :mod:`r2d_tornado.binder` — the BinderHub-compatible build endpoint.

The names other modules import from here (``Identity``, ``R2DContext``, ``ContextProvider``,
``R2DHandler``, ``StreamingHandler``, ``script_json``, ...) are re-exported below.
"""

from __future__ import annotations

import re
from typing import Any

from .api import (
    APINotFoundHandler,
    BuildHandler,
    BuildsHandler,
    HealthHandler,
    ImageHandler,
    ImagesHandler,
    InfoHandler,
    MetricsHandler,
    OpenAPIHandler,
)
from .base import ContextProvider, Identity, R2DContext, R2DHandler, StreamingHandler, r2d_api
from .binder import ROUTES as BINDER_ROUTES
from .streams import REPLAY_CHUNK, BuildLogsHandler
from .ui import STATIC_DIR, TEMPLATE_DIR, PageHandler, StaticHandler, script_json, static_url

__all__ = [
    "REPLAY_CHUNK",
    "STATIC_DIR",
    "TEMPLATE_DIR",
    "APINotFoundHandler",
    "BuildHandler",
    "BuildLogsHandler",
    "BuildsHandler",
    "ContextProvider",
    "HealthHandler",
    "Identity",
    "ImageHandler",
    "ImagesHandler",
    "InfoHandler",
    "MetricsHandler",
    "OpenAPIHandler",
    "PageHandler",
    "R2DContext",
    "R2DHandler",
    "StaticHandler",
    "StreamingHandler",
    "make_handlers",
    "r2d_api",
    "script_json",
    "static_url",
]


_ROUTES: list[tuple[str, type[R2DHandler]]] = [
    (r"api/?", InfoHandler),
    (r"api/openapi\.json", OpenAPIHandler),
    (r"api/images/?", ImagesHandler),
    (r"api/images/([^/]+)/([^/]+)/?", ImageHandler),
    (r"api/builds/?", BuildsHandler),
    (r"api/builds/([0-9a-f]+)/?", BuildHandler),
    (r"api/builds/([0-9a-f]+)/logs/?", BuildLogsHandler),
    (r"health/?", HealthHandler),
    (r"metrics/?", MetricsHandler),
    (r"api/.*", APINotFoundHandler),
    (r"", PageHandler),
]


def make_handlers(
    prefix: str, base: type, context: R2DContext
) -> list[tuple[str, type, dict[str, Any]]]:
    """Tornado URL specs for every route under ``prefix``, each handler built on ``base``.

    The context travels in the handler's ``initialize`` keyword (so the Hub's own settings, in the
    TLJH adapter, need no new key).
    """
    prefix = "/" + prefix.strip("/") + "/" if prefix.strip("/") else "/"
    specs: list[tuple[str, type, dict[str, Any]]] = []
    for pattern, logic in [*BINDER_ROUTES, *_ROUTES]:
        cls = type(logic.__name__, (logic, base), {"__module__": base.__module__})
        specs.append(
            (
                re.escape(prefix) + pattern + "$" if pattern else re.escape(prefix) + "?$",
                cls,
                {"r2d": context},
            )
        )
    specs.append((re.escape(prefix) + r"static/(.*)$", StaticHandler, {"path": STATIC_DIR}))
    return specs
