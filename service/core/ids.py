"""Identifiers every layer may check: the stream id pattern of DESIGN.md, one definition.

``STREAM_ID`` is what ``/v1`` and ``/v2`` paths and bodies, subscription cursors and the OpenAPI
document all mean by a stream id; ``check_stream_id`` raises the wire's ``invalid_stream_id``.
"""

from __future__ import annotations

import re

from .errors import InvalidStreamId

__all__ = ["STREAM_ID", "check_stream_id"]

STREAM_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def check_stream_id(stream: str) -> str:
    if not STREAM_ID.fullmatch(stream):
        shown = stream if len(stream) <= 140 else stream[:140] + "..."
        raise InvalidStreamId(
            f"stream id {shown!r} must be 1 to 128 characters of A-Z a-z 0-9 . _ : -"
        )
    return stream
