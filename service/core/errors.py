"""The service's errors and their JSON form on the wire.

::

    ServiceError                      status  code
    ├── InvalidRequest                400     invalid_request
    ├── InvalidValues                 400     invalid_values
    ├── InvalidStreamId               400     invalid_stream_id
    ├── ForecastUnsupported           400     forecast_unsupported
    ├── Unauthenticated               401     unauthenticated (+ WWW-Authenticate)
    ├── Forbidden                     403     forbidden
    ├── ModelNotFound                 404     model_not_found
    ├── StreamNotFound                404     stream_not_found
    ├── StaleSeq                      409     stale_seq (+ current_seq)
    ├── ModelVersionMismatch          409     model_version_mismatch
    ├── PayloadTooLarge               413     payload_too_large
    ├── QuotaExceeded                 429     quota_exceeded (+ Retry-After, or max_streams)
    ├── RedisUnavailable              503     redis_unavailable (+ Retry-After)
    └── Overloaded                    503     overloaded (+ Retry-After)

Handlers raise these; the middleware in ``app.py`` turns them into ``{"error": {...}}``, with the
headers ``headers()`` names.
Third-party exceptions (redis-py's) are wrapped where they happen, never passed to clients.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "Forbidden",
    "ForecastUnsupported",
    "InvalidRequest",
    "InvalidStreamId",
    "InvalidValues",
    "ModelNotFound",
    "ModelVersionMismatch",
    "Overloaded",
    "PayloadTooLarge",
    "QuotaExceeded",
    "RedisUnavailable",
    "ServiceError",
    "StaleSeq",
    "StreamNotFound",
    "Unauthenticated",
]


class ServiceError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.details}

    def headers(self) -> dict[str, str]:
        """Response headers this error's answer carries beside its body (Retry-After of a
        retryable 503 aside, which the settings give)."""
        return {}


class InvalidRequest(ServiceError):
    status, code = 400, "invalid_request"


class InvalidValues(ServiceError):
    status, code = 400, "invalid_values"


class InvalidStreamId(ServiceError):
    status, code = 400, "invalid_stream_id"


class ForecastUnsupported(ServiceError):
    """A forecast (horizon of one or more) on a model that declares no feedback mapping."""

    status, code = 400, "forecast_unsupported"


class Unauthenticated(ServiceError):
    """No token, a malformed one, or one the service does not know (RFC 6750's challenge)."""

    status, code = 401, "unauthenticated"

    def __init__(self, message: str, token_given: bool) -> None:
        super().__init__(message)
        self.token_given = token_given

    def headers(self) -> dict[str, str]:
        challenge = 'Bearer error="invalid_token"' if self.token_given else "Bearer"
        return {"WWW-Authenticate": challenge}


class Forbidden(ServiceError):
    """A valid token without the scope the request needs."""

    status, code = 403, "forbidden"


class ModelNotFound(ServiceError):
    status, code = 404, "model_not_found"


class StreamNotFound(ServiceError):
    status, code = 404, "stream_not_found"


class StaleSeq(ServiceError):
    status, code = 409, "stale_seq"

    def __init__(self, message: str, current_seq: int) -> None:
        super().__init__(message, current_seq=current_seq)


class ModelVersionMismatch(ServiceError):
    status, code = 409, "model_version_mismatch"


class PayloadTooLarge(ServiceError):
    status, code = 413, "payload_too_large"


class QuotaExceeded(ServiceError):
    """Over a tenant's quota. Readings per second: ``retry_after_s`` (whole seconds, at least
    1) is when the request would fit, sent as Retry-After. Live streams (``max_streams``): a
    stream could not start; not retryable after a delay, as a stream of the tenant has to end or
    expire first, so the body names the limit and no Retry-After is sent."""

    status, code = 429, "quota_exceeded"

    def __init__(
        self, message: str, *, retry_after_s: int | None = None, max_streams: int | None = None
    ) -> None:
        if max_streams is None:
            super().__init__(message)
        else:
            super().__init__(message, max_streams=max_streams)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        if self.retry_after_s is None:
            return {}
        return {"Retry-After": str(self.retry_after_s)}


class RedisUnavailable(ServiceError):
    status, code, retryable = 503, "redis_unavailable", True


class Overloaded(ServiceError):
    status, code, retryable = 503, "overloaded", True
