"""BinderHub-style repository providers: ``gh/<owner>/<repo>/<ref>`` → a repository URL and a ref.

BinderHub names a build by a *provider prefix* and a *spec* (``binderhub/repoproviders.py``):

==========  ================================  ==========================================
prefix      spec                              repository
==========  ================================  ==========================================
``gh``      ``<owner>/<repo>/<ref>``          ``https://github.com/<owner>/<repo>``
``gl``      ``<url-escaped namespace>/<ref>`` ``https://gitlab.com/<namespace>.git``
``git``     ``<url-escaped URL>/<ref>``       the URL itself
==========  ================================  ==========================================

Here each prefix maps to a URL *template* (:attr:`RepoProviders.url_templates`), so GitHub
Enterprise, a GitLab of one's own or (in tests) a loopback git server can stand behind ``gh``.
The template's fields say how its spec is read: ``{owner}`` and ``{repo}`` (three parts, GitHub
style), ``{namespace}`` (an escaped, possibly nested path, GitLab style) or ``{url}`` (an escaped
URL). The URL this produces is only a *proposal*: :meth:`BuildManager.submit
<r2d_core.manager.BuildManager.submit>` holds it to the same validation and allow-list as any
other build.

Pure functions plus one small configurable; no tornado.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from traitlets import Dict, Unicode, validate
from traitlets.config import LoggingConfigurable

from .errors import InvalidRequest

__all__ = [
    "DEFAULT_URL_TEMPLATES",
    "ProviderSpec",
    "RepoProviders",
    "resolve_spec",
    "template_kind",
]

#: BinderHub's public providers
DEFAULT_URL_TEMPLATES: dict[str, str] = {
    "gh": "https://github.com/{owner}/{repo}",
    "gl": "https://gitlab.com/{namespace}.git",
    "git": "{url}",
}

#: one path segment of an owner, repository or namespace (GitHub's and GitLab's own rules are
#: narrower still); anything else could change the URL the template produces
_SEGMENT = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,99}\Z")
#: ``git@host:path``, which ``git`` accepts and BinderHub maps to ``ssh://git@host/path``
_SCP_LIKE = re.compile(r"^([\w\-]+@[\w\-.]+):(.+)$")
_MAX_SPEC = 4096


@dataclass(frozen=True)
class ProviderSpec:
    """What a BinderHub spec names: a repository URL and an unresolved ref."""

    provider: str
    repo: str
    ref: str


def template_kind(template: str) -> str:
    """``"github"`` (``{owner}`` and ``{repo}``), ``"namespace"`` or ``"url"``; else ValueError."""
    fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    if fields in ({"owner", "repo"}, {"repo"}):
        # {repo} alone: a mirror keyed by repository name only (the owner part is ignored)
        return "github"
    if fields == {"namespace"}:
        return "namespace"
    if fields == {"url"}:
        if template != "{url}":
            raise ValueError("a template with {url} must be exactly '{url}'")
        return "url"
    raise ValueError(
        f"template {template!r} must use {{owner}} and {{repo}} (or {{repo}} alone), or "
        "{namespace}, or be '{url}'"
    )


def _segment(value: str, what: str) -> str:
    if value in (".", "..") or not _SEGMENT.match(value):
        raise InvalidRequest(
            f"{what} {value[:100]!r} is not valid: letters, digits, '.', '_' and '-' only"
        )
    return value


def _ref(raw: str, spec: str) -> str:
    ref = unquote(raw)
    if not ref:
        raise InvalidRequest(f"the spec {spec[:200]!r} names no ref: add '/HEAD' or a branch")
    return ref


def resolve_spec(provider: str, spec: str, templates: Mapping[str, str]) -> ProviderSpec:
    """The repository and ref that ``<provider>/<spec>`` names, or :class:`InvalidRequest`.

    ``spec`` is the raw (still percent-encoded) rest of the path, as BinderHub reads it.
    """
    if provider not in templates:
        raise InvalidRequest(
            f"No provider found for prefix {provider[:50]!r}; this service knows "
            f"{', '.join(sorted(templates)) or '(none)'}"
        )
    if len(spec) > _MAX_SPEC:
        raise InvalidRequest("the spec is too long")
    spec = spec.rstrip("/")
    template = templates[provider]
    kind = template_kind(template)
    if kind == "github":
        parts = spec.split("/", 2)  # the ref may contain '/'
        if len(parts) != 3:
            hint = f' Did you mean "{spec}/HEAD"?' if len(parts) == 2 else ""
            raise InvalidRequest(
                f'Spec is not of the form "user/repo/ref", provided: "{spec[:200]}".{hint}'
            )
        owner = _segment(unquote(parts[0]), "owner")
        repo = _segment(unquote(parts[1]).removesuffix(".git"), "repository")
        return ProviderSpec(provider, template.format(owner=owner, repo=repo), _ref(parts[2], spec))
    head, sep, raw_ref = spec.partition("/")
    if not sep:
        raise InvalidRequest(
            f'Spec is not of the form "<url-escaped repository>/<ref>", provided: "{spec[:200]}"'
        )
    value = unquote(head)
    if kind == "namespace":
        segments = value.strip("/").split("/")
        if len(segments) < 2:
            raise InvalidRequest(f"namespace {value[:100]!r} must be 'group/project'")
        namespace = "/".join(_segment(s, "namespace part") for s in segments)
        return ProviderSpec(provider, template.format(namespace=namespace), _ref(raw_ref, spec))
    match = _SCP_LIKE.match(value)
    if match:
        value = f"ssh://{match.group(1)}/{match.group(2)}"
    return ProviderSpec(provider, value, _ref(raw_ref, spec))


class RepoProviders(LoggingConfigurable):
    """Which BinderHub provider prefixes ``build/<provider>/<spec>`` accepts, and their URLs."""

    url_templates = Dict(
        value_trait=Unicode(),
        default_value=DEFAULT_URL_TEMPLATES,
        config=True,
        help="""Provider prefix → repository URL template of the BinderHub-compatible
        ``build/<provider>/<spec>`` endpoint. Default ``{"gh": "https://github.com/{owner}/{repo}",
        "gl": "https://gitlab.com/{namespace}.git", "git": "{url}"}``. A template uses ``{owner}``
        and ``{repo}`` (spec ``<owner>/<repo>/<ref>``), ``{namespace}`` (spec ``<url-escaped
        group/project>/<ref>``) or is ``{url}`` (spec ``<url-escaped URL>/<ref>``). Remove a prefix
        to refuse it; e.g. ``{"gh": "https://github.example.org/{owner}/{repo}"}`` for GitHub
        Enterprise only. The URLs are still held to ``BuildManager.allowed_repo_patterns``.""",
    )

    @validate("url_templates")
    def _check_templates(self, proposal: Any) -> dict[str, str]:
        from traitlets import TraitError

        for prefix, template in proposal["value"].items():
            if not re.match(r"^[a-z][a-z0-9_-]{0,31}$", prefix):
                raise TraitError(f"RepoProviders.url_templates: prefix {prefix!r} is not valid")
            try:
                template_kind(template)
            except ValueError as e:
                raise TraitError(f"RepoProviders.url_templates[{prefix!r}]: {e}") from None
        return proposal["value"]

    def resolve(self, provider: str, spec: str) -> ProviderSpec:
        return resolve_spec(provider, spec, self.url_templates)
