"""A small blocking Server-Sent Events reader for tests, over the standard library's HTTP client.

It parses the wire format itself (``id:``, ``event:``, ``data:`` lines, blank line ends an event,
``:`` starts a comment), so tests see exactly what a browser's EventSource would.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True)
class SseEvent:
    kind: str  # "message" unless an "event:" line names another
    id: str | None
    data: str

    def json(self) -> Any:
        return json.loads(self.data)


class SseStream:
    def __init__(
        self,
        url: str,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
        rcvbuf: int | None = None,
    ) -> None:
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        if rcvbuf is not None:  # a small receive window, to play a reader that falls behind
            self.conn.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.conn.sock.settimeout(timeout)
            self.conn.sock.connect((parts.hostname, parts.port))
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        self.conn.request("GET", path, headers=dict(headers or {}))
        self.response = self.conn.getresponse()
        self.status = self.response.status
        self.headers = dict(self.response.getheaders())
        self.comments = 0

    def body(self) -> Any:
        """The whole body as JSON, for an error answer."""
        return json.loads(self.response.read())

    def next(self) -> SseEvent | None:
        """The next event; None when the server ends the stream."""
        kind, event_id, data = "message", None, []
        while True:
            raw = self.response.readline()
            if not raw:
                return None
            line = raw.decode().rstrip("\r\n")
            if not line:
                if data or kind != "message" or event_id is not None:
                    return SseEvent(kind, event_id, "\n".join(data))
                continue
            if line.startswith(":"):
                self.comments += 1
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
            elif name == "id":
                event_id = value
            elif name == "event":
                kind = value

    def take(self, count: int) -> list[SseEvent]:
        events = []
        while len(events) < count:
            event = self.next()
            if event is None:
                raise AssertionError(f"the stream ended after {len(events)} of {count} events")
            events.append(event)
        return events

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> SseStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
