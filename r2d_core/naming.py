"""Image names: escaping, templating and parsing of image references.

The mapping ``(owner, name) -> image repository`` is **injective**: no two owners (or two names of one
owner) can ever produce the same repository, so no user can build into another user's namespace by
picking a clever name. That rests on three rules:

* :func:`escape_component` maps any string to ``[a-z0-9]+`` with a prefix-free code: every character
  of ``[a-y0-9]`` stands for itself, every other byte of the UTF-8 encoding becomes ``z`` plus two
  lowercase hex digits (``z`` itself is ``z7a``). Different inputs give different outputs, and the
  output never contains a separator character. ``z`` is the escape lead because it is the rarest
  letter in user names, so common names stay readable (``alice`` stays ``alice``).
* Over-long results are cut at a code boundary and end in ``zz`` + 16 hex digits of the SHA-256 of
  the original value. ``zz`` never occurs in an untruncated result (``z`` is always followed by a hex
  digit there), so the two forms cannot collide; two long values collide only if SHA-256 does.
* :func:`validate_template` accepts only templates whose repository part can be read back
  unambiguously: every field there must be fixed-length (``{sha}``, ``{short_sha}``) or be followed
  by the end of the repository or by literal text whose first character cannot occur in the field's
  values (owner and name are ``[a-z0-9]+``, so ``-``, ``_``, ``.`` or ``/`` do). Reading left to
  right, each field then ends at a known place, so the field values - and, the escaping being
  injective, the raw owner and name - are determined by the reference. ``{ref}`` (chosen by the
  requester, not injective, possibly upper-case) is only allowed in the tag. The check runs on the
  template's structure with every field in place: stripping fields first is what let
  ``{prefix}{owner}{ref}-{name}:{sha}`` map (bob, main) and (bo, bmain) to one repository.
"""

from __future__ import annotations

import hashlib
import re
import string
from dataclasses import dataclass

from .errors import InvalidRequest

__all__ = [
    "DEFAULT_IMAGE_NAME_TEMPLATE",
    "OPTIONS_MARK",
    "ImageReference",
    "escape_component",
    "image_reference",
    "parse_reference",
    "sanitize_tag",
    "validate_template",
]

DEFAULT_IMAGE_NAME_TEMPLATE = "{prefix}{owner}-{name}:{sha}"

_SAFE = frozenset("abcdefghijklmnopqrstuvwxy0123456789")
_ESCAPE = "z"
#: the longest escaped owner or name (the whole reference must stay under Docker's 255 characters)
MAX_COMPONENT_LENGTH = 80
_HASH_MARK = "zz"
_HASH_LEN = 16

_TEMPLATE_FIELDS = frozenset({"prefix", "owner", "name", "sha", "short_sha", "ref", "options"})
#: what ``{options}`` stands for: ``""`` for a build without options, else ``-o`` + the digest
OPTIONS_MARK = "-o"

# Docker's reference grammar (distribution/reference), compiled once.
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_REFERENCE_RE = re.compile(
    rf"^(?P<name>(?:(?P<domain>{_DOMAIN})/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>sha256:[0-9a-f]{{64}}))?\Z"  # not "$": "x\n"
)
_NAME_TOTAL_MAX = 255


def escape_component(value: str, max_length: int = MAX_COMPONENT_LENGTH) -> str:
    """Escape ``value`` into a non-empty ``[a-z0-9]+`` string, injectively (see module docs)."""
    if not value:
        raise InvalidRequest("an image name component cannot be empty")
    units: list[str] = []
    for char in value:
        if char in _SAFE:
            units.append(char)
        else:
            units.extend(f"{_ESCAPE}{byte:02x}" for byte in char.encode("utf-8"))
    escaped = "".join(units)
    if len(escaped) <= max_length:
        return escaped
    digest = hashlib.sha256(value.encode("utf-8")).hexdigest()[:_HASH_LEN]
    budget = max_length - len(_HASH_MARK) - _HASH_LEN
    kept: list[str] = []
    used = 0
    for unit in units:  # cut at a unit boundary so the kept part is a valid code prefix
        if used + len(unit) > budget:
            break
        kept.append(unit)
        used += len(unit)
    return "".join(kept) + _HASH_MARK + digest


def sanitize_tag(value: str) -> str:
    """A Docker tag for a git ref (informational only: never relied upon for uniqueness)."""
    tag = re.sub(r"[^\w.-]", "-", value)[:128]
    if not tag or not re.match(r"\w", tag[0]):
        tag = "r" + tag[:127]
    return tag


@dataclass(frozen=True)
class ImageReference:
    """A parsed ``[domain/]path[:tag][@digest]`` image reference."""

    repository: str
    tag: str | None = None
    digest: str | None = None
    domain: str | None = None

    @property
    def path(self) -> str:
        """The repository without its registry domain (what the registry API calls the name)."""
        if self.domain:
            return self.repository[len(self.domain) + 1 :]
        return self.repository

    def __str__(self) -> str:
        text = self.repository
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_reference(reference: str) -> ImageReference:
    """Parse an image reference, raising :class:`InvalidRequest` if Docker would refuse it."""
    match = _REFERENCE_RE.match(reference)
    if not match or len(match.group("name")) > _NAME_TOTAL_MAX:
        raise InvalidRequest(f"{reference!r} is not a valid image reference")
    name = match.group("name")
    domain = match.group("domain")
    # Docker's rule: the first component is a domain only if it has a '.' or ':' or is localhost.
    if domain and not (
        "." in domain or ":" in domain or domain == "localhost" or domain != domain.lower()
    ):
        domain = None
    return ImageReference(
        repository=name, tag=match.group("tag"), digest=match.group("digest"), domain=domain
    )


def _template_fields(template: str) -> list[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise InvalidRequest(f"image_name_template {template!r} is not a format string: {e}") from e
    fields = []
    for _literal, field, spec, conversion in parsed:
        if field is None:
            continue
        if field not in _TEMPLATE_FIELDS or spec or conversion:
            raise InvalidRequest(
                f"image_name_template {template!r} uses {{{field}}}; only "
                + ", ".join(f"{{{f}}}" for f in sorted(_TEMPLATE_FIELDS))
                + " are allowed, without format specs"
            )
        fields.append(field)
    return fields


#: the characters each field's value may contain, and its length if fixed
_FIELD_ALPHABETS: dict[str, tuple[frozenset[str], int | None]] = {
    "owner": (frozenset("abcdefghijklmnopqrstuvwxyz0123456789"), None),
    "name": (frozenset("abcdefghijklmnopqrstuvwxyz0123456789"), None),
    "sha": (frozenset("0123456789abcdef"), 40),
    "short_sha": (frozenset("0123456789abcdef"), 12),
    "ref": (frozenset(string.ascii_letters + string.digits + "_.-"), None),
}


def _check_unambiguous(template: str, repo_part: str) -> None:
    """Refuse a repository part whose fields could be read back in more than one way.

    ``repo_part`` is the template before its tag, with ``{prefix}`` already replaced by its value.
    """
    pieces = list(string.Formatter().parse(repo_part))
    if any(field == "options" for _literal, field, _spec, _conv in pieces):
        raise InvalidRequest(
            f"image_name_template {template!r}: put {{options}} in the tag (after ':'), right "
            "after {sha} or {short_sha}"
        )
    if any(field == "ref" for _literal, field, _spec, _conv in pieces):
        raise InvalidRequest(
            f"image_name_template {template!r}: put {{ref}} in the tag (after ':'), not in the "
            "repository: a ref is chosen by whoever asks for the build, may contain '-', '.' "
            "and upper-case letters, so it could move an image into another owner's repository"
        )
    for index, (_literal, field, _spec, _conv) in enumerate(pieces):
        if field is None:
            continue
        alphabet, fixed = _FIELD_ALPHABETS[field]
        if fixed is not None:
            continue
        following = pieces[index + 1][0] if index + 1 < len(pieces) else ""
        if index + 1 >= len(pieces) or (not following and pieces[index + 1][1] is None):
            continue  # the field runs to the end of the repository
        if not following or following[0] in alphabet:
            nxt = f"{{{pieces[index + 1][1]}}}" if not following else repr(following[0])
            raise InvalidRequest(
                f"image_name_template {template!r}: {{{field}}} is followed by {nxt}, so where it "
                f"ends is ambiguous; put '-', '_', '.' or '/' right after {{{field}}}"
            )


def validate_template(template: str, prefix: str = "") -> str:
    """Check that ``template`` yields valid, injective image references; return it.

    The fix for each failure is in its message.
    """
    fields = _template_fields(template)
    for required in ("owner", "name"):
        if fields.count(required) != 1:
            raise InvalidRequest(
                f"image_name_template {template!r} must contain {{{required}}} exactly once"
            )
    repo_part, _, tag_part = template.rpartition(":")
    if not repo_part or "/" in tag_part:
        raise InvalidRequest(
            f"image_name_template {template!r} must end in a tag, e.g. '{DEFAULT_IMAGE_NAME_TEMPLATE}'"
        )
    if "{owner}" in tag_part or "{name}" in tag_part:
        raise InvalidRequest(
            f"image_name_template {template!r}: put {{owner}} and {{name}} before the tag"
        )
    if "{sha}" not in tag_part and "{short_sha}" not in tag_part:
        raise InvalidRequest(
            f"image_name_template {template!r}: the tag must contain {{sha}} or {{short_sha}} so that "
            "every built commit keeps its own image"
        )
    _check_unambiguous(
        template, repo_part.replace("{prefix}", prefix.replace("{", "{{").replace("}", "}}"))
    )
    if "{options}" in tag_part and not re.search(r"\{(short_)?sha\}\{options\}", tag_part):
        raise InvalidRequest(
            f"image_name_template {template!r}: put {{options}} right after {{sha}} or "
            "{short_sha}, so that a ref can never look like an options digest"
        )
    sample = image_reference(
        template,
        prefix=prefix,
        owner="o" * MAX_COMPONENT_LENGTH,
        name="n" * MAX_COMPONENT_LENGTH,
        sha="0" * 40,
        ref="main",
        options_digest="0" * 16,
        check=False,
    )
    try:
        parse_reference(sample)
    except InvalidRequest as e:
        raise InvalidRequest(
            f"image_name_template {template!r} with prefix {prefix!r} gives invalid references "
            f"such as {sample!r}: use lowercase letters, digits and '-', '_', '.', '/' around the fields"
        ) from e
    return template


def image_reference(
    template: str,
    *,
    prefix: str,
    owner: str,
    name: str,
    sha: str,
    ref: str = "",
    options_digest: str = "",
    check: bool = True,
) -> str:
    """The image reference for ``owner``'s image ``name`` at commit ``sha``.

    ``owner`` and ``name`` are raw values (escaped here); ``sha`` is a full commit sha;
    ``options_digest`` the hex digest of the build's effective options (``""``: none). A template
    without ``{options}`` gets it right after the tag's first ``{sha}``/``{short_sha}``, so two
    builds of one commit with different options are always two images (fixed-length fields:
    the tag still reads back one way).
    """
    if "{options}" not in template:
        repo_part, sep, tag_part = template.rpartition(":")
        tag_part = re.sub(r"(\{(?:short_)?sha\})", r"\1{options}", tag_part, count=1)
        template = repo_part + sep + tag_part
    mark = OPTIONS_MARK
    if template.partition("{options}")[2].startswith("-"):
        # "{sha}-{ref}": a digest "-o..." there could be read as part of a ref ("o<hex>-main"
        # without options); "_o..." cannot (the plain tag has "-" at that place)
        mark = "_" + OPTIONS_MARK[1:]
    reference = template.format(
        options=f"{mark}{options_digest}" if options_digest else "",
        prefix=prefix,
        owner=escape_component(owner),
        name=escape_component(name),
        sha=sha,
        short_sha=sha[:12],
        ref=sanitize_tag(ref or sha),
    )
    if check:
        parse_reference(reference)
    return reference
