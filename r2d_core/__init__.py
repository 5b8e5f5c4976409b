"""repo2docker-service core: framework-agnostic build manager, builders, registry client and checks."""

from __future__ import annotations

from ._version import __version__
from .errors import (
    Conflict,
    Forbidden,
    InsufficientStorage,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    QuotaExceeded,
    R2DError,
    RateLimited,
    RefTimeout,
    Unauthorized,
    Unavailable,
    UnknownRef,
    UpstreamError,
    http_status,
)

__all__ = [
    "Conflict",
    "Forbidden",
    "InsufficientStorage",
    "InvalidRequest",
    "NotFound",
    "PayloadTooLarge",
    "QuotaExceeded",
    "R2DError",
    "RateLimited",
    "RefTimeout",
    "Unauthorized",
    "Unavailable",
    "UnknownRef",
    "UpstreamError",
    "__version__",
    "http_status",
]
