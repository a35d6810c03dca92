"""Identifiers every layer may check: the stream id pattern of DESIGN.md, one definition.

``STREAM_ID`` is what ``/v1`` and ``/v2`` paths and bodies, subscription cursors and the OpenAPI
document all mean by a stream id; ``check_stream_id`` raises the wire's ``invalid_stream_id``.

``TENANT_NAME`` is what a tokens file may name as a tenant. ``DEFAULT_TENANT`` is the tenant of a
service without authentication, and of tokens that name it: its streams keep the key layout of
before tenants existed, so turning authentication on keeps every existing stream.
"""

from __future__ import annotations

import re

from .errors import InvalidStreamId

__all__ = ["DEFAULT_TENANT", "STREAM_ID", "TENANT_NAME", "check_stream_id"]

STREAM_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
TENANT_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
DEFAULT_TENANT = "default"


def check_stream_id(stream: str) -> str:
    if not STREAM_ID.fullmatch(stream):
        shown = stream if len(stream) <= 140 else stream[:140] + "..."
        raise InvalidStreamId(
            f"stream id {shown!r} must be 1 to 128 characters of A-Z a-z 0-9 . _ : -"
        )
    return stream
