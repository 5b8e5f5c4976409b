"""Resolving a git ref (branch, tag, HEAD, short or full sha) to a full commit sha.

The ref advertisement is read natively, without spawning git: over the git protocol (``git://``,
asyncio TCP) and smart HTTP(S) (``info/refs?service=git-upload-pack`` through httpx, connections
kept alive). That takes ~5 ms against a local server where ``git ls-remote`` takes ~50 ms, most of
it process start-up. ``ssh://`` URLs, and short shas that no advertised ref starts with, fall back to
the git CLI (``ls-remote``, or a blob-less bare clone into a temporary directory removed afterwards),
run as an async subprocess with a timeout, never through a shell, ``--`` before the URL, remote
helpers disabled and no terminal prompts. Private-repository credentials travel in request headers
or the environment (``GIT_CONFIG_*``), never on a command line where ``ps`` would show them.

Remote servers are untrusted, so every exchange is bounded and held to the network policy
(:mod:`r2d_core.netpolicy`):

* **Addresses.** The host is resolved once and refused if *any* address is internal (unless
  ``allowed_networks`` covers it); the connection then goes to a checked address (pinned), and the
  peer address of the connected socket is checked again. For httpx this is a network backend
  (:class:`CheckedBackend`) under the connection pool, so TLS still verifies the host name. The git
  CLI fallbacks are pinned too: ``http.curloptResolve`` for http(s), the checked IP in the URL for
  ``git://`` and ``HostName``/``HostKeyAlias`` for ssh. Proxies from the environment are not used
  for these lookups (a proxy would connect to an address nobody checked).
* **Redirects are not followed** (consistent with git in the build containers, which runs with
  ``http.followRedirects=false``): a 3xx answers 400 naming the URL it points to, so the user can
  submit that URL, which then goes through the allow-list and the address rule itself.
* **Size and time.** At most :data:`MAX_ADVERTISEMENT` bytes (4 MiB) and :data:`MAX_PACKETS`
  pkt-lines are read, parsed incrementally in linear time as chunks arrive (the loop is given
  back after every chunk), and the whole exchange - connect, TLS, headers, body - runs under one
  total deadline (``ref_timeout``), so a slow-drip server ends in :class:`~r2d_core.errors.RefTimeout`.
* Messages never repeat what a refused or failing server said beyond its status code, and never
  name an internal address.
"""

from __future__ import annotations

from .advertisement import (
    MAX_ADVERTISEMENT,
    MAX_PACKETS,
    AdvertisementParser,
    parse_ls_remote,
    parse_pkt_lines,
    pick_sha,
)
from .connect import CheckedBackend
from .gitcli import git_env
from .resolve import ls_remote, resolve_ref

__all__ = [
    "MAX_ADVERTISEMENT",
    "MAX_PACKETS",
    "AdvertisementParser",
    "CheckedBackend",
    "git_env",
    "ls_remote",
    "parse_ls_remote",
    "parse_pkt_lines",
    "pick_sha",
    "resolve_ref",
]
