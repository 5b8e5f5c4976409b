"""Modules loaded on first use: :func:`lazy_modules` (stdlib :class:`importlib.util.LazyLoader`)."""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Iterator, Sequence
from types import ModuleType

__all__ = ["lazy_modules"]


class _LazyFinder(importlib.abc.MetaPathFinder):
    """Gives the named modules a :class:`importlib.util.LazyLoader`: an import binds the module,
    its code runs at the first attribute access."""

    def __init__(self, names: set[str]) -> None:
        self.names = names

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.names:
            return None
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            if finder is self or find_spec is None:
                continue
            spec = find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = importlib.util.LazyLoader(spec.loader)
                return spec
        return None


@contextlib.contextmanager
def lazy_modules(*names: str) -> Iterator[None]:
    """Modules first imported inside this block load lazily (on first use, if ever)."""
    finder = _LazyFinder(set(names) - set(sys.modules))
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
