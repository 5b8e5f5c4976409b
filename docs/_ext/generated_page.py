"""Shared by the docs extensions that write a reference page from the code before Sphinx reads."""

from __future__ import annotations

import os
from collections.abc import Callable

DOCS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def register(app: object, page: str, render: Callable[[], str]) -> dict[str, object]:
    """Write ``render()`` to ``docs/<page>`` when the builder starts (only if it changed, so an
    incremental build does not re-read an unchanged page)."""

    def write(_app: object) -> None:
        target = os.path.join(DOCS, page)
        text = render()
        if os.path.exists(target):
            with open(target) as f:
                if f.read() == text:
                    return
        with open(target, "w") as f:
            f.write(text)

    app.connect("builder-inited", write)  # type: ignore[attr-defined]
    return {"parallel_read_safe": True}
