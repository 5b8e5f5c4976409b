"""Free space of the Docker engine's data root, for the disk guard.

The engine's API says where its data root is (``/info``: ``DockerRootDir``) and what its objects
take (``/system/df``), but not how much room is left. Two honest ways remain:

* ``statvfs`` of a path on that filesystem, when this process can see it (the service on the
  engine's host, or the data root mounted into its container): exact, and cheap;
* an estimate: the data root's size (given by the administrator) minus what ``/system/df``
  reports. It misses whatever else fills that disk (logs, other programs), and ``/system/df`` is
  slow on a large engine, so its answer is cached.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["DiskSpace", "build_cache_size", "engine_usage", "estimate_space", "statvfs_space"]


@dataclass(frozen=True)
class DiskSpace:
    """Free space of the engine's data root, and where the number comes from."""

    free: int
    total: int | None
    #: ``statvfs <path>`` or ``estimate`` (data_root_size minus what ``/system/df`` reports)
    source: str


def engine_usage(df: Mapping[str, Any]) -> int:
    """Bytes the engine's objects take according to ``/system/df``."""
    used = int(df.get("LayersSize") or 0)
    used += sum(int(c.get("SizeRw") or 0) for c in df.get("Containers") or [])
    used += sum(int((v.get("UsageData") or {}).get("Size") or 0) for v in df.get("Volumes") or [])
    used += sum(int(r.get("Size") or 0) for r in df.get("BuildCache") or [] if not r.get("Shared"))
    return used


def build_cache_size(df: Mapping[str, Any]) -> int:
    """Bytes of BuildKit cache that pruning can free (records shared with images excluded)."""
    return sum(int(r.get("Size") or 0) for r in df.get("BuildCache") or [] if not r.get("Shared"))


def statvfs_space(path: str) -> DiskSpace:
    """Free and total bytes of the filesystem holding ``path`` (blocking: run it in a thread)."""
    st = os.statvfs(path)
    return DiskSpace(
        free=st.f_bavail * st.f_frsize, total=st.f_blocks * st.f_frsize, source=f"statvfs {path}"
    )


def estimate_space(size: int, df: Mapping[str, Any]) -> DiskSpace:
    """Free bytes of a data root of ``size`` bytes from the engine's ``/system/df`` answer."""
    return DiskSpace(free=max(0, size - engine_usage(df)), total=size, source="estimate")
