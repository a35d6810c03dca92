"""A Server-Sent Events parser over an aiohttp response: (event type, id, data) per event."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp

__all__ = ["SseEvent", "read_events"]


@dataclass(frozen=True)
class SseEvent:
    kind: str  # "message" unless an "event:" line names another
    id: str | None
    data: str


async def read_events(response: aiohttp.ClientResponse) -> AsyncIterator[SseEvent]:
    """Events until the server ends the stream; comment lines (heartbeats) are skipped."""
    kind, event_id = "message", None
    data: list[str] = []
    async for raw in response.content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data or event_id is not None or kind != "message":
                yield SseEvent(kind, event_id, "\n".join(data))
            kind, event_id, data = "message", None, []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "id":
            event_id = value
        elif name == "event":
            kind = value
