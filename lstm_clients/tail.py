"""``lstm-tail``: print streams' predictions live, one JSON line per event (or a table).

Follows the streams over the multi-stream SSE endpoint; after a disconnect it reconnects with
back-off and resumes from the last cursor it received, so nothing is printed twice or skipped.
Gaps (events the log no longer holds) are reported on stderr. Ctrl-C exits with status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from typing import Any
from urllib.parse import quote

import aiohttp

from .auth import add_token_argument, auth_headers
from .sse import read_events

__all__ = ["main"]

DEFAULT_URL = "http://127.0.0.1:8080"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lstm-tail",
        description="Print the predictions of one or more streams live, one JSON object per line.",
    )
    parser.add_argument("streams", nargs="*", metavar="STREAM", help="stream ids to follow")
    parser.add_argument("--prefix", help="follow every stream whose id starts with this instead")
    parser.add_argument("--model", help="model name (default: the service's default model)")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"service URL (default {DEFAULT_URL})")
    parser.add_argument("--table", action="store_true", help="a compact table instead of JSON")
    parser.add_argument(
        "--from-start", action="store_true", help="first print what the streams' logs still hold"
    )
    parser.add_argument(
        "--count", type=int, default=0, help="exit after this many events (0: run until Ctrl-C)"
    )
    add_token_argument(parser)
    return parser


def _row(event: dict[str, Any]) -> str:
    prediction = " ".join(f"{p:.6g}" for p in event["prediction"])
    values = " ".join(f"{v:.6g}" for v in event["values"])
    return (
        f"{event['stream']:<24} {event['seq']:>8} {event['ts']:>16.3f}  {values:<16} {prediction}"
    )


async def tail(args: argparse.Namespace) -> int:
    base = args.url.rstrip("/")
    path = f"/v1/models/{quote(args.model)}/events" if args.model else "/v1/events"
    query = (
        f"prefix={quote(args.prefix)}"
        if args.prefix is not None
        else ("streams=" + ",".join(args.streams))
    )
    if args.from_start:
        query += "&from=start"
    cursor: str | None = None
    printed = 0
    delay = 0.5
    if args.table:
        print(f"{'stream':<24} {'seq':>8} {'ts':>16}  {'values':<16} prediction", flush=True)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    async with aiohttp.ClientSession(timeout=timeout, headers=auth_headers(args.token)) as session:
        while True:
            headers = {"Last-Event-ID": cursor} if cursor else {}
            try:
                async with session.get(f"{base}{path}?{query}", headers=headers) as response:
                    if response.status != 200:
                        body = await response.text()
                        print(f"lstm-tail: {response.status}: {body.strip()}", file=sys.stderr)
                        if 400 <= response.status < 500:
                            return 1
                        raise aiohttp.ClientError("retryable status")
                    delay = 0.5
                    async for event in read_events(response):
                        if event.id:
                            cursor = event.id
                        if event.kind == "message":
                            body = json.loads(event.data)
                            print(_row(body) if args.table else event.data, flush=True)
                            printed += 1
                            if args.count and printed >= args.count:
                                return 0
                        elif event.kind == "gap":
                            print(f"lstm-tail: gap: {json.loads(event.data)['message']}",
                                  file=sys.stderr)  # fmt: skip
                        elif event.kind == "closed":
                            reason = json.loads(event.data)
                            print(f"lstm-tail: disconnected: closed by the service "
                                  f"({reason['code']}); resuming", file=sys.stderr)  # fmt: skip
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                print(f"lstm-tail: disconnected ({exc or type(exc).__name__}); retrying in "
                      f"{delay:g} s", file=sys.stderr)  # fmt: skip
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if bool(args.streams) == (args.prefix is not None):
        print("lstm-tail: name streams to follow, or --prefix (not both)", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(tail(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
