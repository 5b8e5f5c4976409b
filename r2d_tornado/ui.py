"""The UI: the single page (its config as inert JSON in a ``<script>``) and its static assets."""

from __future__ import annotations

import functools
import hashlib
import json
import os

from tornado import template, web

from r2d_core import __version__
from r2d_core.errors import R2DError, Unauthorized
from r2d_core.manager import BuildManager

from .base import R2DHandler

__all__ = [
    "STATIC_DIR",
    "TEMPLATE_DIR",
    "PageHandler",
    "StaticHandler",
    "script_json",
    "static_url",
]

HERE = os.path.dirname(os.path.abspath(__file__))
STATIC_DIR = os.path.join(HERE, "static")
TEMPLATE_DIR = os.path.join(HERE, "templates")


class PageHandler(R2DHandler):
    """The single page of the UI; the browser app does the rest through the API."""

    async def get(self, path: str = "") -> None:
        try:
            await self.r2d_setup()
            await self.r2d_authenticate()
        except Unauthorized:
            self.redirect(self.r2d_login_url())
            return
        except R2DError as e:
            self.r2d_send_error(e)
            return
        base = self.ctx.base_url
        config = {
            "base_url": base,
            "hub_url": self.ctx.hub_url,
            "logout_url": self.ctx.logout_url,
            "user": self.identity.name,
            "xsrf_token": self.r2d_xsrf_token(),
            "version": __version__,
            "launch_url": _launch_url(self.manager),
        }
        page = _page_template()
        if page is None:
            # a source checkout whose UI was never built: say how to fix it instead of a 500
            self.set_status(503)
            self.finish(
                "<!doctype html><title>repo2docker-service</title><p>The web UI is not built. "
                "Reinstall the package (<code>pip install .</code> runs the npm build). The API works "
                f"at <a href='{base}api/'>{base}api/</a>.</p>"
            )
            return
        html = page.generate(
            base_url=base,
            static_url=lambda p: static_url(base, p),
            xsrf_token=config["xsrf_token"],
            user=self.identity.name,
            hub_url=self.ctx.hub_url,
            logout_url=self.ctx.logout_url,
            page_config=script_json(config),
        )
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(html)


#: what JSON inside an HTML ``<script>`` element must not contain raw: ``<`` (``</script>`` ends the
#: element, ``<!--`` then ``<script`` switch the HTML tokenizer into a state where the real
#: ``</script>`` no longer closes it), ``>`` and ``&`` (markup, should the text ever land in an
#: attribute or XHTML), and U+2028/U+2029 (line terminators to JavaScript before ES2019). JSON
#: syntax has none of them outside strings, so a ``\\u`` escape is always valid JSON.
_SCRIPT_JSON_ESCAPES = {
    ord("<"): "\\u003c",
    ord(">"): "\\u003e",
    ord("&"): "\\u0026",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}


def script_json(value: object) -> str:
    """``value`` as JSON that is inert inside a ``<script>`` element (the page's config)."""
    return json.dumps(value).translate(_SCRIPT_JSON_ESCAPES)


def _launch_url(manager: BuildManager) -> str:
    from .launch import launch_url_template

    return launch_url_template(manager)


_loader = template.Loader(TEMPLATE_DIR, autoescape="xhtml_escape")


def _page_template() -> template.Template | None:
    """The page template (tornado's loader caches it), or None when the UI was never built."""
    try:
        return _loader.load("page.html")
    except FileNotFoundError:
        return None


@functools.lru_cache(maxsize=256)
def _file_hash(path: str, mtime: float) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:12]


def static_url(base_url: str, path: str) -> str:
    """Versioned URL of a static file, so browsers cache it until it changes."""
    full = os.path.join(STATIC_DIR, path)
    try:
        version = _file_hash(full, os.path.getmtime(full))
    except OSError:
        version = __version__
    return f"{base_url}static/{path}?v={version}"


class StaticHandler(web.StaticFileHandler):
    """UI assets (no user data: served without authentication, cached by version)."""

    def set_extra_headers(self, path: str) -> None:
        if self.get_argument("v", None):
            self.set_header("Cache-Control", "public, max-age=31536000, immutable")
