"""The service's errors and their JSON form on the wire.

::

    ServiceError                      status  code
    ├── InvalidRequest                400     invalid_request
    ├── InvalidValues                 400     invalid_values
    ├── InvalidStreamId               400     invalid_stream_id
    ├── ModelNotFound                 404     model_not_found
    ├── StreamNotFound                404     stream_not_found
    ├── StaleSeq                      409     stale_seq (+ current_seq)
    ├── ModelVersionMismatch          409     model_version_mismatch
    ├── PayloadTooLarge               413     payload_too_large
    ├── QuotaExceeded                 429     quota_exceeded (+ max_streams)
    ├── RedisUnavailable              503     redis_unavailable (+ Retry-After)
    └── Overloaded                    503     overloaded (+ Retry-After)

Handlers raise these; the middleware in ``app.py`` turns them into ``{"error": {...}}``.
Third-party exceptions (redis-py's) are wrapped where they happen, never passed to clients.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
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


class InvalidRequest(ServiceError):
    status, code = 400, "invalid_request"


class InvalidValues(ServiceError):
    status, code = 400, "invalid_values"


class InvalidStreamId(ServiceError):
    status, code = 400, "invalid_stream_id"


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
    """A stream could not start: its tenant has as many live streams as its limit allows.
    Not retryable after a delay: a stream of the tenant has to end or expire first."""

    status, code = 429, "quota_exceeded"

    def __init__(self, message: str, max_streams: int) -> None:
        super().__init__(message, max_streams=max_streams)


class RedisUnavailable(ServiceError):
    status, code, retryable = 503, "redis_unavailable", True


class Overloaded(ServiceError):
    status, code, retryable = 503, "overloaded", True
