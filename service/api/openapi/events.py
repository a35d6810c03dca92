"""The OpenAPI document's subscription part: multi-stream Server-Sent Events and WebSocket."""

from __future__ import annotations

from .common import Schema, operation, ref, resp


def subscription_paths(prefix: str, suffix: str, model_params: list[str]) -> dict[str, Schema]:
    """The multi-stream SSE and WebSocket routes under ``prefix``."""
    return {
        f"{prefix}/events": {
            "get": operation(
                f"multiStreamEvents{suffix}",
                "Follow several streams' predictions on one connection (Server-Sent Events)",
                [*model_params, "Streams", "Prefix", "AfterCursor", "From", "LastEventCursor"],
                {
                    "200": {
                        "description": "An event stream. Each event's `data:` is one "
                        "PredictionEvent (naming its stream) and its `id:` a cursor "
                        "`STREAM~GENERATION-SEQ,...` naming every followed stream's last event "
                        "(0-0: none yet); reconnecting with it as Last-Event-ID (or ?after=) "
                        "resumes every stream. `event: streams` (data `{streams}`, with the "
                        "cursor as id) lists the followed streams at the start and whenever a "
                        "prefix finds a new one; `event: gap` (data `{stream, after, "
                        "lost_through, first_held, message}`) and `event: closed` (data "
                        "`{code, message}`; codes as on the single-stream route, plus "
                        "`too_many_streams`) carry no event of their own. Comment lines are "
                        "heartbeats.",
                        "content": {
                            "text/event-stream": {
                                "schema": {"type": "string"},
                                "x-event-data": ref("PredictionEvent"),
                            }
                        },
                    },
                    "400": resp("BadRequest"),
                    "404": resp("NotFound"),
                    "503": resp("Unavailable"),
                },
                tags=["events"],
            )
        },
        f"{prefix}/events/ws": {
            "get": operation(
                f"webSocketEvents{suffix}",
                "Follow streams over a WebSocket: subscribe and unsubscribe on a live connection",
                model_params,
                {
                    "101": {
                        "description": "Switching to the WebSocket protocol. The client sends "
                        'JSON control messages `{"op": "subscribe", "streams": [...] | "prefix": '
                        '"...", "after": {stream: id}?, "from": "start"?, "ref": any?}` and '
                        '`{"op": "unsubscribe", "streams" | "prefix", "ref"?}`; the service '
                        "answers "
                        '`{"type": "subscribed" | "unsubscribed", "streams", "ref"?}` and sends '
                        '`{"type": "event", "id", ...PredictionEvent}`, `{"type": "streams"}`, '
                        '`{"type": "gap", ...}`, `{"type": "error", "code", "message", "ref"?}` '
                        '(the connection stays open) and `{"type": "closed", "code", '
                        '"message"}` (then it closes). See the README.'
                    },
                    "400": resp("BadRequest"),
                    "404": resp("NotFound"),
                },
                tags=["events"],
            )
        },
    }
