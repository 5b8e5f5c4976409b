"""Request logs without secrets: query parameters that carry credentials are never logged.

The approach of JupyterHub's ``jupyterhub/log.py`` (``_scrub_uri``), for the service's own request
log and for tornado's log lines about a request (HTTPError warnings, uncaught exceptions).
"""

from __future__ import annotations

from urllib.parse import quote, unquote_plus

from tornado import web

__all__ = ["SECRET_PARAMS", "ScrubbedSummary", "scrub_uri"]

#: query parameters whose name contains one of these never reach the log (JupyterHub's list in
#: jupyterhub/log.py, plus password/secret/credential)
SECRET_PARAMS = (
    "token",
    "auth",
    "key",
    "code",
    "state",
    "xsrf",
    "password",
    "secret",
    "credential",
)


def scrub_uri(uri: str) -> str:
    """``uri`` with the values of secret-bearing query parameters replaced by ``[secret]``.

    Names are compared decoded and case-insensitively (``%5Fxsrf``, ``Token``); the rest of the URI
    is kept as sent, so the log still shows what was asked.
    """
    path, sep, query = uri.partition("?")
    if not sep:
        return uri
    query, hash_, _fragment = query.partition("#")
    parts = query.split("&")
    for i, part in enumerate(parts):
        key, _, value = part.partition("=")
        name = unquote_plus(key).lower()
        if any(secret in name for secret in SECRET_PARAMS):
            parts[i] = f"{key}=[secret]"
        elif "?" in unquote_plus(value):
            # a URL in a parameter (next=/hub/...?token=...): scrubbed the same way
            inner = unquote_plus(value)
            scrubbed = scrub_uri(inner)
            if scrubbed != inner:
                parts[i] = f"{key}={quote(scrubbed, safe='/[]')}"
    return path + "?" + "&".join(parts) + (hash_ + "[secret]" if hash_ else "")


class ScrubbedSummary(web.RequestHandler):
    """Tornado's request summary (in its own log lines: ``403 GET /uri (ip): reason``), scrubbed."""

    def _request_summary(self) -> str:
        return (
            f"{self.request.method} {scrub_uri(self.request.uri or '')} ({self.request.remote_ip})"
        )
