"""A WebSocket subscriber for tests, over aiohttp's real client: send control messages, take
messages by type."""

from __future__ import annotations

from typing import Any

import aiohttp


class WsSubscriber:
    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse):
        self.session = session
        self.ws = ws

    @classmethod
    async def open(cls, url: str) -> WsSubscriber:
        session = aiohttp.ClientSession()
        try:
            ws = await session.ws_connect(url, heartbeat=None)
        except BaseException:
            await session.close()
            raise
        return cls(session, ws)

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send_json(message)

    async def next(self, timeout: float = 10.0) -> dict[str, Any] | None:
        """The next JSON message; None when the server closed the connection."""
        message = await self.ws.receive(timeout=timeout)
        if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
            return None
        assert message.type == aiohttp.WSMsgType.TEXT, message
        body: dict[str, Any] = message.json()
        return body

    async def until(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        """Skip to the next message of ``kind`` (``streams`` notices are skipped silently)."""
        while True:
            body = await self.next(timeout)
            assert body is not None, f"closed while waiting for {kind}"
            if body["type"] == kind:
                return body
            assert body["type"] == "streams", body

    async def events(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        while len(got) < count:
            body = await self.next(timeout)
            assert body is not None, f"closed after {len(got)} of {count} events"
            if body["type"] == "event":
                got.append(body)
            else:
                assert body["type"] in ("streams", "subscribed", "unsubscribed"), body
        return got

    async def close(self) -> None:
        await self.ws.close()
        await self.session.close()


async def quiet(ws: WsSubscriber, seconds: float) -> list[dict[str, Any]]:
    """Whatever arrives within ``seconds`` (for checking that nothing more comes)."""
    got: list[dict[str, Any]] = []
    try:
        while True:
            body = await ws.next(timeout=seconds)
            if body is None:
                return got
            got.append(body)
    except TimeoutError:
        return got
