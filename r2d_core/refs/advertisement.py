"""The ref advertisement: pkt-line framing parsed incrementally in linear time, under size bounds.

Also the two ref maps' helpers: ``git ls-remote`` output, and picking the sha a ref names.
"""

from __future__ import annotations

import asyncio
import re

from ..errors import InvalidRequest

__all__ = [
    "MAX_ADVERTISEMENT",
    "MAX_PACKETS",
    "AdvertisementParser",
    "parse_ls_remote",
    "parse_pkt_lines",
    "pick_sha",
]

#: the most a ref advertisement may weigh: ~60 000 refs, far more than the biggest public hosts
#: advertise for one repository; protects memory and the event loop from a hostile server
MAX_ADVERTISEMENT = 4 * 1024 * 1024
#: the most pkt-lines an advertisement may hold (a flood of empty ``0004`` packets is cheap to
#: send and costs a Python loop iteration each)
MAX_PACKETS = 100_000
_READ_CHUNK = 64 * 1024
#: bytes parsed between two yields to the event loop (at most ~2000 packets)
_PARSE_SLICE = 8 * 1024

_FULL_SHA = re.compile(r"^[0-9a-f]{40}\Z")  # \Z: "$" also matches before a final newline
_SHORT_SHA = re.compile(r"^[0-9a-f]{4,39}\Z")
#: "<sha> <refname>[\0capabilities]" (the refname ends at NUL; the line's newline is stripped)
_REF_LINE = re.compile(rb"([0-9a-f]{40}) ([^\0]+)")


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
