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

import asyncio
import base64
import logging
import os
import re
import shutil
import ssl
import tempfile
import weakref

import httpcore
import httpx

from .errors import InvalidRequest, RefTimeout, Unavailable, UnknownRef
from .models import Credentials
from .netpolicy import AddressRefused, NetPolicy, NetPolicyError, ResolveFailed
from .urls import RepoURL, URLError, parse_repo_url

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

log = logging.getLogger(__name__)

#: the most a ref advertisement may weigh: ~60 000 refs, far more than the biggest public hosts
#: advertise for one repository; protects memory and the event loop from a hostile server
MAX_ADVERTISEMENT = 4 * 1024 * 1024
#: the most pkt-lines an advertisement may hold (a flood of empty ``0004`` packets is cheap to
#: send and costs a Python loop iteration each)
MAX_PACKETS = 100_000
_READ_CHUNK = 64 * 1024
#: bytes parsed between two yields to the event loop (at most ~2000 packets)
_PARSE_SLICE = 8 * 1024
_USER_AGENT = "git/2.39 (repo2docker-service)"
_PROXY_VARS = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")

_FULL_SHA = re.compile(r"^[0-9a-f]{40}\Z")  # \Z: "$" also matches before a final newline
_SHORT_SHA = re.compile(r"^[0-9a-f]{4,39}\Z")
#: "<sha> <refname>[\0capabilities]" (the refname ends at NUL; the line's newline is stripped)
_REF_LINE = re.compile(rb"([0-9a-f]{40}) ([^\0]+)")


def _parse(url: str | RepoURL) -> RepoURL:
    if isinstance(url, RepoURL):
        return url
    try:
        return parse_repo_url(url)
    except URLError as e:
        raise InvalidRequest(str(e), field="repo") from None


def git_env(url: str | RepoURL, credentials: Credentials | None = None) -> dict[str, str]:
    """Environment for git talking to ``url``: no prompts, only network protocols, optional auth.

    The credentials' config key is built from the canonical origin of ``url`` only (nothing a user
    typed reaches git's config syntax), and travels as ``GIT_CONFIG_*`` environment entries.
    """
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        # never /tmp: any local user (a TLJH user's terminal) could plant /tmp/.gitconfig or
        # /tmp/.ssh/config there (core.fsmonitor, ProxyCommand: commands run as the service);
        # without $HOME (a root systemd unit), the account's own home from the password database
        "HOME": os.environ.get("HOME") or os.path.expanduser("~"),
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "/bin/false",
        "SSH_ASKPASS": "/bin/false",
        "GIT_ALLOW_PROTOCOL": "https:http:git:ssh",
        "GIT_SSH_COMMAND": "ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new",
        "LC_ALL": "C",
    }
    for name in (*_PROXY_VARS, "GIT_SSL_CAINFO", "SSL_CERT_FILE"):
        if name in os.environ:
            env[name] = os.environ[name]
    if credentials is not None:
        origin = _parse(url).origin
        token = base64.b64encode(f"{credentials.username}:{credentials.password}".encode()).decode()
        _add_config(env, f"http.{origin}/.extraHeader", f"Authorization: Basic {token}")
    return env


def _add_config(env: dict[str, str], key: str, value: str) -> None:
    index = int(env.get("GIT_CONFIG_COUNT", "0"))
    env[f"GIT_CONFIG_KEY_{index}"] = key
    env[f"GIT_CONFIG_VALUE_{index}"] = value
    env["GIT_CONFIG_COUNT"] = str(index + 1)


def _pinned_git_env(
    url: RepoURL, credentials: Credentials | None, addresses: list[str]
) -> dict[str, str]:
    """:func:`git_env` for the service's own git runs: one protocol, no redirects, pinned address."""
    env = git_env(url, credentials)
    for name in _PROXY_VARS:
        env.pop(name, None)
    env["GIT_ALLOW_PROTOCOL"] = url.scheme
    _add_config(env, "http.followRedirects", "false")
    _add_config(env, "protocol.file.allow", "never")
    if url.scheme in ("http", "https") and not url.host_is_ip:
        pins = ",".join(f"[{a}]" if ":" in a else a for a in addresses)
        _add_config(env, "http.curloptResolve", f"{url.host}:{url.effective_port}:{pins}")
    if url.scheme == "ssh":
        # the address and the name come from the URL model and getaddrinfo: no user text
        env["GIT_SSH_COMMAND"] += f" -o HostName={addresses[0]} -o HostKeyAlias={url.host}"
    return env


def _git_cli_url(url: RepoURL, addresses: list[str]) -> str:
    """The URL handed to the git CLI: ``git://`` goes to the checked address itself."""
    if url.scheme != "git" or url.host_is_ip:
        return url.canonical
    address = addresses[0]
    host = f"[{address}]" if ":" in address else address
    return f"git://{host}:{url.effective_port}{url.path}"


def parse_ls_remote(output: str) -> dict[str, str]:
    """``{refname: sha}`` from ``git ls-remote`` output (peeled tags as ``refs/tags/x^{}``)."""
    refs: dict[str, str] = {}
    for line in output.splitlines():
        sha, _, name = line.partition("\t")
        if _FULL_SHA.match(sha) and name:
            refs[name] = sha
    return refs


def pick_sha(refs: dict[str, str], ref: str) -> str | None:
    """The commit ``ref`` names among ``refs``, following git's own precedence; None if absent."""
    if _FULL_SHA.match(ref):
        return ref
    candidates = [
        ref,  # HEAD, or a full name like refs/heads/main
        f"refs/tags/{ref}^{{}}",  # annotated tag, peeled to its commit
        f"refs/tags/{ref}",
        f"refs/heads/{ref}",
        f"refs/{ref}",
        f"refs/remotes/{ref}",
    ]
    if ref.startswith("refs/tags/"):
        candidates.insert(0, f"{ref}^{{}}")
    for candidate in candidates:
        if candidate in refs:
            return refs[candidate]
    if _SHORT_SHA.match(ref):
        matches = {sha for sha in refs.values() if sha.startswith(ref)}
        if len(matches) == 1:
            return matches.pop()
    return None


# ---- the advertisement, parsed as it arrives --------------------------------------------------------
class AdvertisementParser:
    """An incremental, linear-time parser of a protocol-v0 ref advertisement in pkt-line framing.

    Feed it chunks as they arrive; :meth:`feed` returns True once the advertisement is complete
    (the flush that ends it). Raises :class:`InvalidRequest` beyond :data:`MAX_ADVERTISEMENT`
    bytes or :data:`MAX_PACKETS` packets, on anything that is not pkt-line framing, and on an
    ``ERR`` packet. ``smart_http`` expects the ``# service=...`` section (and its flush) first.
    """

    def __init__(
        self,
        *,
        smart_http: bool = False,
        max_bytes: int = MAX_ADVERTISEMENT,
        max_packets: int = MAX_PACKETS,
    ) -> None:
        self.refs: dict[str, str] = {}
        self.done = False
        self._buf = bytearray()
        self._total = 0
        self._packets = 0
        self._in_service_section = smart_http
        self._first = True
        self._max_bytes = max_bytes
        self._max_packets = max_packets

    def feed(self, chunk: bytes) -> bool:
        if self.done:
            return True
        self._total += len(chunk)
        if self._total > self._max_bytes:
            raise InvalidRequest(
                f"the repository's ref advertisement is larger than {self._max_bytes // 2**20} MiB",
                field="repo",
            )
        self._buf += chunk
        view = memoryview(self._buf)
        pos = 0
        try:
            while not self.done and pos + 4 <= len(view):
                head = bytes(view[pos : pos + 4])
                if not head.isalnum():  # int() would also take "+1f", " 1f" and "0_1f"
                    raise _not_git()
                try:
                    length = int(head, 16)
                except ValueError:
                    raise _not_git() from None
                self._packets += 1
                if self._packets > self._max_packets:
                    raise InvalidRequest(
                        f"the repository's ref advertisement has more than {self._max_packets} "
                        "lines",
                        field="repo",
                    )
                if length == 0:  # flush
                    pos += 4
                    if self._in_service_section and not self._first:
                        self._in_service_section = False
                    else:
                        self.done = True
                    continue
                if length < 4:
                    raise _not_git()
                if pos + length > len(view):
                    break  # the rest of this packet has not arrived yet
                self._line(bytes(view[pos + 4 : pos + length]))
                pos += length
        finally:
            view.release()
            del self._buf[:pos]
        return self.done

    def finish(self) -> dict[str, str]:
        """The refs, once the input ended; raise if it ended in the middle of a packet."""
        if not self.done and (self._buf or self._first):
            raise _not_git()
        return self.refs

    def _line(self, line: bytes) -> None:
        first, self._first = self._first, False
        line = line.rstrip(b"\n")
        if line.startswith(b"ERR "):
            # the server's own words, shortened; it is the server the user asked us to talk to
            text = line[4:204].decode("utf-8", errors="replace")
            text = "".join(c if c.isprintable() else "?" for c in text)
            raise InvalidRequest(f"git server: {text}", field="repo")
        if self._in_service_section:
            if first and not line.startswith(b"# service="):
                raise _not_git()
            return
        match = _REF_LINE.match(line)
        if match is not None and match[2] != b"capabilities^{}":
            self.refs[match[2].decode(errors="replace")] = match[1].decode()


async def _feed(parser: AdvertisementParser, chunk: bytes) -> bool:
    """Feed ``chunk`` in slices, giving the loop back after each: a slice of empty packets costs
    a few ms of Python, and a fast server must not starve the loop (the Hub's, in TLJH)."""
    for start in range(0, len(chunk), _PARSE_SLICE):
        if parser.feed(chunk[start : start + _PARSE_SLICE]):
            return True
        await asyncio.sleep(0)
    return False


def _not_git() -> InvalidRequest:
    return InvalidRequest("the server did not answer with the git protocol", field="repo")


def parse_pkt_lines(data: bytes, *, smart_http: bool | None = None) -> dict[str, str]:
    """``{refname: sha}`` from a whole protocol-v0 ref advertisement in pkt-line framing.

    Accepts the smart-HTTP form (a ``# service=...`` line and a flush first) and the bare form.
    """
    if smart_http is None:
        smart_http = data[4:14] == b"# service="
    parser = AdvertisementParser(smart_http=smart_http)
    parser.feed(data)
    return parser.refs if parser.done else parser.finish()


# ---- connections held to the network policy ----------------------------------------------------------
def _refused(url: RepoURL, error: NetPolicyError) -> InvalidRequest | Unavailable:
    if isinstance(error, AddressRefused):
        log.warning("refused %s: %s resolves to %s", url.canonical, url.host, error.address)
        return InvalidRequest(str(error), field="repo")
    if isinstance(error, ResolveFailed) and error.temporary:
        return Unavailable(str(error))
    return InvalidRequest(str(error), field="repo")


class CheckedBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that connects only to addresses the policy allows.

    The host is resolved and checked here (refused if any address is internal), the TCP connection
    goes to the checked address, and the connected peer is checked once more. TLS is then started
    by the connection with the original host name, so certificates are verified as usual.
    """

    def __init__(self, policy: NetPolicy) -> None:
        self.policy = policy
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: object = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self.policy.resolve_checked(host, port)
        error: Exception | None = None
        for address in addresses:
            try:
                stream = await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,  # type: ignore[arg-type]
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as e:
                error = e
                continue
            peer = stream.get_extra_info("server_addr")
            try:
                self.policy.check_ip(peer[0] if peer else address, host)
            except AddressRefused:
                await stream.aclose()
                raise
            return stream
        assert error is not None
        raise error

    async def connect_unix_socket(self, *args: object, **kwargs: object) -> None:  # type: ignore[override]
        raise httpcore.ConnectError("unix sockets are not repository hosts")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class CheckedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with :class:`CheckedBackend` under its connection pool (no proxies)."""

    def __init__(self, policy: NetPolicy, ssl_context: ssl.SSLContext) -> None:
        super().__init__(verify=ssl_context, trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=20,
            max_keepalive_connections=10,
            keepalive_expiry=5.0,
            network_backend=CheckedBackend(policy),
        )


#: one client per event loop and policy (connections are bound to the loop that opened them)
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple, httpx.AsyncClient]] = (
    weakref.WeakKeyDictionary()
)


_ssl_context: ssl.SSLContext | None = None


async def _client(policy: NetPolicy) -> httpx.AsyncClient:
    global _ssl_context
    if _ssl_context is None:  # loading the CA bundle takes tens of ms: not on the loop
        _ssl_context = await asyncio.to_thread(httpx.create_ssl_context, trust_env=False)
    per_loop = _clients.setdefault(asyncio.get_running_loop(), {})
    key = tuple(str(n) for n in policy.allowed_networks)
    client = per_loop.get(key)
    if client is None:
        client = per_loop[key] = httpx.AsyncClient(
            transport=CheckedTransport(policy, _ssl_context),
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(None),  # the caller's total deadline bounds every exchange
            headers={"User-Agent": _USER_AGENT},
        )
    return client


async def _open_checked(
    url: RepoURL, policy: NetPolicy
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    port = url.effective_port
    addresses = await policy.resolve_checked(url.host, port)
    error: OSError | None = None
    for address in addresses:
        try:
            reader, writer = await asyncio.open_connection(address, port)
        except OSError as e:
            error = e
            continue
        peer = writer.get_extra_info("peername")
        try:
            policy.check_ip(peer[0] if peer else address, url.host)
        except AddressRefused:
            writer.close()
            raise
        return reader, writer
    assert error is not None
    raise error


async def _ls_remote_git(url: RepoURL, policy: NetPolicy) -> dict[str, str]:
    request = f"git-upload-pack {url.path}\0host={url.host}:{url.effective_port}\0".encode()
    reader, writer = await _open_checked(url, policy)
    try:
        writer.write(f"{len(request) + 4:04x}".encode() + request)
        await writer.drain()
        parser = AdvertisementParser()
        while True:
            chunk = await reader.read(_READ_CHUNK)
            if not chunk:
                if not parser.refs and not parser.done:
                    raise InvalidRequest(
                        f"repository {url} was not found (the git server closed the connection)",
                        field="repo",
                    )
                return parser.finish()
            if await _feed(parser, chunk):
                break
        writer.write(b"0000")  # we want nothing: end the conversation politely
        await writer.drain()
        return parser.refs
    finally:
        writer.close()


def _redirect_message(url: RepoURL, response: httpx.Response) -> str:
    location = response.headers.get("location", "")
    target = ""
    try:
        joined = str(response.request.url.join(location)) if location else ""
        joined = joined.split("?", 1)[0].removesuffix("/info/refs")
        target = parse_repo_url(joined).canonical if joined else ""
    except (URLError, httpx.InvalidURL, ValueError):
        target = ""
    where = f" to {target}" if target else " elsewhere"
    advice = f"; submit {target} instead if you trust it" if target else ""
    return f"{url} redirects ({response.status_code}){where}; redirects are not followed{advice}"


async def _ls_remote_http(
    url: RepoURL, credentials: Credentials | None, policy: NetPolicy
) -> dict[str, str]:
    auth = (credentials.username, credentials.password) if credentials else None
    info_url = url.canonical.rstrip("/") + "/info/refs"
    client = await _client(policy)
    async with client.stream(
        "GET", info_url, params={"service": "git-upload-pack"}, auth=auth
    ) as response:
        if response.is_redirect:
            raise InvalidRequest(_redirect_message(url, response), field="repo")
        if response.status_code in (401, 403, 404):
            hint = "" if credentials else " (a private repository needs credentials)"
            raise InvalidRequest(
                f"repository {url} was not found or access was refused "
                f"({response.status_code}){hint}",
                field="repo",
            )
        if response.status_code != 200:
            raise Unavailable(f"git server answered {response.status_code} for {url}")
        if "git-upload-pack-advertisement" not in response.headers.get("content-type", ""):
            raise InvalidRequest(
                f"{url} does not look like a git repository (no smart HTTP)", field="repo"
            )
        parser = AdvertisementParser(smart_http=True)
        async for chunk in response.aiter_raw(_READ_CHUNK):
            if await _feed(parser, chunk):
                break
        return parser.refs if parser.done else parser.finish()


async def ls_remote(
    url: str | RepoURL,
    *,
    credentials: Credentials | None = None,
    timeout: float = 30.0,
    policy: NetPolicy | None = None,
) -> dict[str, str]:
    """``{refname: sha}`` of the repository at ``url`` (peeled tags as ``refs/tags/x^{}``).

    ``timeout`` bounds the whole exchange; ``policy`` (default: refuse every internal address)
    decides which addresses may be connected.
    """
    parsed = _parse(url)
    policy = policy if policy is not None else NetPolicy()
    try:
        async with asyncio.timeout(timeout):
            if parsed.scheme == "git":
                return await _ls_remote_git(parsed, policy)
            if parsed.scheme in ("http", "https"):
                return await _ls_remote_http(parsed, credentials, policy)
            addresses = await policy.resolve_checked(parsed.host, parsed.effective_port)
            output = await _run_git(
                ["ls-remote", "--", parsed.canonical],
                _pinned_git_env(parsed, credentials, addresses),
                f"git ls-remote {parsed}",
            )
            return parse_ls_remote(output)
    except TimeoutError:
        raise RefTimeout(
            f"the git server of {parsed} did not send its refs within {timeout:g} s"
        ) from None
    except NetPolicyError as e:
        raise _refused(parsed, e) from None
    except httpx.InvalidURL:  # httpx prepares the next request of a redirect even unfollowed
        raise InvalidRequest(
            f"{parsed} redirects elsewhere (to an invalid URL); redirects are not followed",
            field="repo",
        ) from None
    except httpx.HTTPError as e:
        raise Unavailable(
            f"could not reach the git server of {parsed}: {e or type(e).__name__}"
        ) from None
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise Unavailable(f"could not reach the git server of {parsed}: {reason}") from None
    except asyncio.IncompleteReadError:
        raise _not_git() from None


async def _run_git(args: list[str], env: dict[str, str], what: str, cwd: str | None = None) -> str:
    """Run git; the caller's deadline (``asyncio.timeout``) bounds it, and kills it when it ends."""
    git = shutil.which("git")
    if git is None:
        raise Unavailable("git is not installed on the service's machine")
    proc = await asyncio.create_subprocess_exec(
        git,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=cwd,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        out, err = await asyncio.gather(
            _read_capped(proc.stdout, MAX_ADVERTISEMENT, what), _read_tail(proc.stderr, 2000)
        )
        await proc.wait()
    except BaseException:  # cancelled, timed out or too much output: do not leave git running
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    if proc.returncode != 0:
        message = err.decode(errors="replace").strip().splitlines()
        detail = message[-1] if message else f"exit status {proc.returncode}"
        detail = "".join(c if c.isprintable() else "?" for c in detail)
        raise InvalidRequest(f"{what} failed: {detail}", field="repo")
    return out.decode(errors="replace")


async def _read_capped(stream: asyncio.StreamReader, cap: int, what: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := await stream.read(_READ_CHUNK):
        size += len(chunk)
        if size > cap:
            raise InvalidRequest(f"{what} printed more than {cap // 2**20} MiB", field="repo")
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_tail(stream: asyncio.StreamReader, keep: int) -> bytes:
    tail = b""
    while chunk := await stream.read(_READ_CHUNK):
        tail = (tail + chunk)[-keep:]
    return tail


async def _short_sha_from_clone(
    url: RepoURL, ref: str, credentials: Credentials | None, policy: NetPolicy
) -> str | None:
    addresses = await policy.resolve_checked(url.host, url.effective_port)
    env = _pinned_git_env(url, credentials, addresses)
    tmp = await asyncio.to_thread(tempfile.mkdtemp, prefix="r2d-resolve-")
    try:
        await _run_git(
            [
                "clone",
                "--bare",
                "--filter=blob:none",
                "--quiet",
                "--",
                _git_cli_url(url, addresses),
                tmp,
            ],
            env,
            f"git clone {url}",
        )
        try:
            out = await _run_git(
                ["rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}"],
                env,
                "git rev-parse",
                cwd=tmp,
            )
        except InvalidRequest:
            out = ""
        return out.strip() if _FULL_SHA.match(out.strip()) else None
    finally:
        await asyncio.to_thread(shutil.rmtree, tmp, True)


async def resolve_ref(
    url: str | RepoURL,
    ref: str,
    *,
    credentials: Credentials | None = None,
    timeout: float = 30.0,
    policy: NetPolicy | None = None,
) -> str:
    """The full commit sha that ``ref`` names in the repository at ``url``.

    Branches, tags (annotated ones peeled) and ``HEAD`` come from the ref advertisement. A short
    sha that no advertised ref starts with is looked up in a blob-less bare clone in a temporary
    directory, removed afterwards. A full sha is taken as it is (repo2docker checks it out).
    ``timeout`` bounds each of the two steps; ``policy`` decides which addresses may be reached.
    """
    if _FULL_SHA.match(ref):
        return ref
    parsed = _parse(url)
    policy = policy if policy is not None else NetPolicy()
    refs = await ls_remote(parsed, credentials=credentials, timeout=timeout, policy=policy)
    sha = pick_sha(refs, ref)
    if sha:
        return sha
    if _SHORT_SHA.match(ref):
        try:
            async with asyncio.timeout(timeout):
                sha = await _short_sha_from_clone(parsed, ref, credentials, policy)
        except TimeoutError:
            raise RefTimeout(f"looking up {ref} in {parsed} took more than {timeout:g} s") from None
        except NetPolicyError as e:
            raise _refused(parsed, e) from None
        if sha:
            return sha
    raise UnknownRef(f"ref {ref!r} was not found in {parsed}", field="ref")
