"""Pages of the build list (``GET api/builds``): newest first, a bounded ``limit``, a ``before`` cursor.

The cursor is opaque to clients (they copy ``next`` from one page into ``before`` of the next), and
holds the position of the last build of a page (its creation time and id) rather than the build's
id alone, so a page still follows on when that build has left the history meanwhile (finished
builds are forgotten oldest first). New builds only ever appear on the first page: walking the
pages never shows a build twice or skips one that existed when the walk began.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .errors import InvalidRequest

if TYPE_CHECKING:
    from .models import Build

__all__ = ["CURSOR_PATTERN", "DEFAULT_LIMIT", "MAX_LIMIT", "cursor", "page"]

#: builds per page when the request gives no ``limit``
DEFAULT_LIMIT = 100
#: the most builds one page holds (a larger ``limit`` answers 400)
MAX_LIMIT = 500
#: what a cursor looks like: ``<created>_<id>`` (``created`` as ``repr`` of the float: exact)
CURSOR_PATTERN = r"^[0-9]{1,20}(\.[0-9]{1,20})?_[0-9a-f]{1,64}$"
_CURSOR = re.compile(CURSOR_PATTERN.replace("$", r"\Z"))


def _key(build: Build) -> tuple[float, str]:
    return (build.created, build.id)


def cursor(build: Build) -> str:
    """The ``before`` value that continues after ``build``."""
    return f"{build.created!r}_{build.id}"


def _parse(text: str) -> tuple[float, str]:
    if not _CURSOR.match(text):
        raise InvalidRequest(
            "before is not a cursor of this service; pass the `next` value of the previous page",
            field="before",
        )
    created, _, build_id = text.partition("_")
    return float(created), build_id


def page(
    builds: Iterable[Build], limit: int = DEFAULT_LIMIT, before: str | None = None
) -> tuple[list[Build], str | None]:
    """One page of ``builds``, newest first, and the cursor of the next page (None: last page).

    ``before`` (a value :func:`cursor` made) starts the page after that position. Builds created
    in the same instant are ordered by id, so the order is total and pages never overlap.
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(f"limit must be between 1 and {MAX_LIMIT}", field="limit")
    ordered = sorted(builds, key=_key, reverse=True)
    if before is not None:
        position = _parse(before)
        ordered = [b for b in ordered if _key(b) < position]
    if len(ordered) <= limit:
        return ordered, None
    return ordered[:limit], cursor(ordered[limit - 1])
