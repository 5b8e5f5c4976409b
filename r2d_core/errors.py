"""The one exception tree of repo2docker-service.

Every error the core raises on purpose is an :class:`R2DError`. Adapters map it to an HTTP status with
:func:`http_status` (one place, like ``httpx._exceptions``), and show ``str(error)`` to the caller:
messages are written for the person who has to act on them, and never contain credentials.

::

    R2DError
    ├── InvalidRequest      400  bad input (URL, ref, name, template)
    │   └── UnknownRef      400  the ref does not exist in the repository
    ├── Unauthorized        401  no identity (adapters only)
    ├── Forbidden           403  identity known, permission missing
    ├── NotFound            404  no such build, image or tag
    ├── Conflict            409  would overwrite another owner's image, build already finished, ...
    ├── RateLimited         429  a registry asked us to slow down
    └── Unavailable         503  Docker engine, git server or registry unreachable
        ├── UpstreamError   502  a peer answered, but not as the API says it should
        └── RefTimeout      504  the git server did not send its refs within ref_timeout
"""

from __future__ import annotations

__all__ = [
    "Conflict",
    "Forbidden",
    "InvalidRequest",
    "NotFound",
    "R2DError",
    "RateLimited",
    "RefTimeout",
    "Unauthorized",
    "Unavailable",
    "UnknownRef",
    "UpstreamError",
    "http_status",
]


class R2DError(Exception):
    """Base class of every error repo2docker-service raises on purpose."""

    status: int = 500
    #: a short stable identifier for API clients (``error`` field of JSON error bodies)
    code: str = "internal"

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        #: extra machine-readable fields for the error body (never secrets)
        self.details = details

    def to_dict(self) -> dict[str, object]:
        return {"error": self.code, "message": self.message, **self.details}


class InvalidRequest(R2DError):
    status = 400
    code = "invalid"


class UnknownRef(InvalidRequest):
    code = "unknown_ref"


class Unauthorized(R2DError):
    status = 401
    code = "unauthorized"


class Forbidden(R2DError):
    status = 403
    code = "forbidden"


class NotFound(R2DError):
    status = 404
    code = "not_found"


class Conflict(R2DError):
    status = 409
    code = "conflict"


class RateLimited(R2DError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after: float | None = None, **details: object) -> None:
        super().__init__(message, retry_after=retry_after, **details)
        self.retry_after = retry_after


class Unavailable(R2DError):
    status = 503
    code = "unavailable"


class UpstreamError(Unavailable):
    status = 502
    code = "upstream_error"


class RefTimeout(Unavailable):
    """Resolving a ref took longer than ``BuildManager.ref_timeout`` (in total, not per read)."""

    status = 504
    code = "ref_timeout"


def http_status(error: BaseException) -> int:
    """The HTTP status an adapter answers for ``error`` (500 for anything unexpected)."""
    if isinstance(error, R2DError):
        return error.status
    return 500
