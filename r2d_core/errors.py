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
    │   └── QuotaExceeded   409  a new image would exceed the owner's image or byte limit
    ├── PayloadTooLarge     413  a request body over the documented limit
    ├── RateLimited         429  a registry asked us to slow down
    ├── Misconfigured       503  the admin's setting keeps it from working (e.g. no builder image)
    └── Unavailable         503  Docker engine, git server or registry unreachable
        ├── UpstreamError   502  a peer answered, but not as the API says it should
        ├── InsufficientStorage 503  the engine's disk is too full for new builds
        └── RefTimeout      504  the git server did not send its refs within ref_timeout

Anything else reaching an adapter is a bug: :func:`error_response` answers it with 500 and a body
that says nothing about the internals (the adapter logs the traceback).
"""

from __future__ import annotations

__all__ = [
    "Conflict",
    "Forbidden",
    "InsufficientStorage",
    "InvalidRequest",
    "Misconfigured",
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
    "error_response",
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


class QuotaExceeded(Conflict):
    """The owner is at a limit of :class:`~r2d_core.lifecycle.LifecyclePolicy`.

    409, not 403 (the caller may build, nothing is wrong with their permissions) nor 413 (nothing
    is wrong with the request body): the owner's current state conflicts with the request, and the
    owner can resolve it (delete images) and send it again. ``limit`` names the setting.
    """

    code = "quota_exceeded"


class PayloadTooLarge(R2DError):
    status = 413
    code = "too_large"


class RateLimited(R2DError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after: float | None = None, **details: object) -> None:
        super().__init__(message, retry_after=retry_after, **details)
        self.retry_after = retry_after


class Misconfigured(R2DError):
    """What the admin set keeps a build from running (the builder image is missing and may not
    be pulled, or cannot be): 503 like Unavailable, but it says nothing of the engine's health
    (a build failing with it does not mark the engine unreachable)."""

    status = 503
    code = "misconfigured"


class Unavailable(R2DError):
    status = 503
    code = "unavailable"


class UpstreamError(Unavailable):
    status = 502
    code = "upstream_error"


class InsufficientStorage(Unavailable):
    """The Docker engine's data root has less free space than the disk guard demands (503, like
    every "try again later" of the engine; ``free_bytes`` and ``min_free_bytes`` say how much)."""

    code = "insufficient_storage"


class RefTimeout(Unavailable):
    """Resolving a ref took longer than ``BuildManager.ref_timeout`` (in total, not per read)."""

    status = 504
    code = "ref_timeout"


def http_status(error: BaseException) -> int:
    """The HTTP status an adapter answers for ``error`` (500 for anything unexpected)."""
    if isinstance(error, R2DError):
        return error.status
    return 500


def error_response(error: BaseException) -> tuple[int, dict[str, object]]:
    """The HTTP status and JSON body an adapter answers for ``error``.

    An :class:`R2DError` says what went wrong; anything else is a bug in the service: 500 with a
    generic message (the adapter logs the exception; its text may name internals).
    """
    if isinstance(error, R2DError):
        return error.status, error.to_dict()
    return 500, {
        "error": "internal",
        "message": "the service failed unexpectedly; the administrator finds the details in its log",
    }
