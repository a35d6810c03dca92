"""Prediction events: their ids and their encodings.

Every applied step is one event, id ``{generation}-{seq}``. The batcher's commit appends a write's
events to the stream's log as one entry and announces them on the stream's shard channel in the
same script call (``state_store.COMMIT_SCRIPT``). One encoding serves both: the body of the live
message (``log_append_packed``: a header, the model version, every event's id, values, prediction
and reading ts) is all the call carries; the script stores it as the log entry of a write of
several steps (field ``e``) and cuts a one-step write's entry (fields ``m t x y r``) from it. This
module builds what that call carries and decodes what subscribers receive, from an announcement
(``decode_message``) or from the log (``log_events``: every entry form, those of logs written one
entry per step included, expanded into their events), into SSE frames built once per event,
however many subscribers it has.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from ..core.errors import InvalidRequest
from .state_store import LogAppend, LogChunk

__all__ = [
    "Event",
    "EventId",
    "LiveBatch",
    "decode_message",
    "format_id",
    "log_append",
    "log_append_packed",
    "log_events",
    "parse_event_id",
]

EventId = tuple[int, int]  # (generation, seq)

_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
_U64 = 2**64 - 1
# inputs, outputs, events, commit time (Unix ms), model version length
_MESSAGE_HEAD = struct.Struct("<HHIQB")
_PAIR = struct.Struct("<QQ")  # an event id in a message: generation, seq


def parse_event_id(text: str, where: str) -> EventId:
    """``"{generation}-{seq}"`` as a pair; raises InvalidRequest naming ``where``."""
    match = _ID.fullmatch(text.strip())
    if match is None or int(match[1]) > _U64 or int(match[2]) > _U64:
        raise InvalidRequest(
            f"{where} must be an event id '{{generation}}-{{seq}}' as sent in 'id:' lines, "
            f"not {text!r}"
        )
    return int(match[1]), int(match[2])


def format_id(event_id: EventId) -> str:
    return f"{event_id[0]}-{event_id[1]}"


def _id_of(text: str) -> EventId | None:
    """An id written by Redis or by the commit script; None for "" (unknown)."""
    if not text:
        return None
    generation, _, seq = text.partition("-")
    return int(generation), int(seq)


# -- what a commit carries ------------------------------------------------------------------


def log_append(
    version: str,
    generation: int,
    seqs: Sequence[int],
    values: np.ndarray,
    predictions: np.ndarray,
    reading_ts: Sequence[float | str | None],
    prev: EventId | None,
    now_ms: int,
) -> LogAppend:
    """The events of one stream's write: ``values`` float64 ``[n, inputs]``, ``predictions``
    float32 ``[n, outputs]``, one per seq, in order."""
    x = np.ascontiguousarray(values, np.float64)
    y = np.ascontiguousarray(predictions, np.float32)
    return log_append_packed(
        version, generation, seqs, x.tobytes(), y.tobytes(), reading_ts, prev, now_ms
    )


def log_append_packed(
    version: str,
    generation: int,
    seqs: Sequence[int],
    values: bytes,
    predictions: bytes,
    reading_ts: Sequence[float | str | None],
    prev: EventId | None,
    now_ms: int,
) -> LogAppend:
    """``log_append`` from the raw bytes: float64 values and float32 predictions, row after row
    (the batcher slices them out of a whole batch's arrays)."""
    n = len(seqs)
    if any(t is not None for t in reading_ts):
        stamps = [b"null" if t is None else json.dumps(t).encode() for t in reading_ts]
        stamped = b"[" + b",".join(stamps) + b"]"
    else:
        stamped = b""
    if n == 1:
        pairs = _PAIR.pack(generation, seqs[0])
    else:
        pairs = struct.pack(f"<{2 * n}Q", *[v for seq in seqs for v in (generation, seq)])
    vbytes = version.encode("ascii")
    message = b"".join(
        [
            _MESSAGE_HEAD.pack(
                len(values) // n // 8, len(predictions) // n // 4, n, now_ms, len(vbytes)
            ),
            vbytes,
            pairs,
            values,
            predictions,
            stamped,
        ]
    )
    return LogAppend(
        prev=f"{prev[0]}-{prev[1]}" if prev is not None else "",
        floor=f"{generation}-{seqs[0] - 1}",
        first=f"{generation}-{seqs[0]}",
        last=f"{generation}-{seqs[-1]}",
        message=message,
        seqs=(prev[1] if prev is not None else seqs[0] - 1, seqs[-1]),
    )


# -- what subscribers get -------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    id: EventId
    frame: bytes  # the whole SSE event: "id: ...\ndata: {...}\n\n"
    data: str  # the event JSON alone, shared by every multi-stream and WebSocket subscriber

    @cached_property
    def ws_text(self) -> str:
        """The WebSocket message: the event JSON with its type and id first, built on first use
        and then shared by every WebSocket subscriber of the stream."""
        return f'{{"type":"event","id":"{self.id[0]}-{self.id[1]}",{self.data[1:]}'


@dataclass(frozen=True)
class LiveBatch:
    prev: EventId | None  # the event just before these (None: unknown, a new generation)
    events: list[Event]


def _frame(
    model: str,
    version: str,
    stream: str,
    event_id: EventId,
    values: list[float],
    prediction: list[float],
    t_ms: int,
    reading_ts: Any,
) -> Event:
    body: dict[str, Any] = {
        "model": model,
        "model_version": version,
        "stream": stream,
        "generation": event_id[0],
        "seq": event_id[1],
        "values": values,
        "prediction": prediction,
        "ts": t_ms / 1000,
    }
    if reading_ts is not None:
        body["reading_ts"] = reading_ts
    data = json.dumps(body, separators=(",", ":"))
    frame = f"id: {event_id[0]}-{event_id[1]}\ndata: {data}\n\n".encode()
    return Event(event_id, frame, data)


def _decode_body(model: str, stream: str, body: bytes) -> list[Event]:
    """The events of a message body (``log_append_packed``), in order."""
    inputs, outputs, n, t_ms, vlen = _MESSAGE_HEAD.unpack_from(body)
    at = _MESSAGE_HEAD.size
    version = body[at : at + vlen].decode("ascii")
    at += vlen
    pairs = np.frombuffer(body, "<u8", 2 * n, at).reshape(n, 2).tolist()
    at += 16 * n
    x = np.frombuffer(body, "<f8", n * inputs, at).reshape(n, inputs).tolist()
    at += 8 * n * inputs
    y = np.frombuffer(body, "<f4", n * outputs, at).reshape(n, outputs).tolist()
    at += 4 * n * outputs
    stamps = json.loads(body[at:]) if len(body) > at else [None] * n
    return [
        _frame(model, version, stream, (g, s), x[i], y[i], t_ms, stamps[i])
        for i, (g, s) in enumerate(pairs)
    ]


def decode_message(model: str, stream: str, message: bytes) -> LiveBatch:
    """A channel message (the script's ``prev + "\\n"`` and ``log_append``'s body)."""
    prev, _, body = message.partition(b"\n")
    return LiveBatch(_id_of(prev.decode("ascii")), _decode_body(model, stream, body))


def log_events(model: str, stream: str, chunk: LogChunk, after: EventId | None) -> list[Event]:
    """The events of a log read (``StateStore.read_log``), oldest first: each entry expanded into
    its events, keeping only those after ``after`` (None: from the start) and after the log's
    ``deleted_id``, since the first entry read may straddle either."""
    floor = _id_of(chunk.deleted_id)
    if after is not None and (floor is None or after > floor):
        floor = after
    events: list[Event] = []
    for entry_id, fields in chunk.entries:
        body = fields.get(b"e")
        if body is not None:  # a write's entry: all its events
            batch = _decode_body(model, stream, body)
            if floor is not None and batch[0].id <= floor:
                batch = [e for e in batch if e.id > floor]
            events += batch
            continue
        event_id = _id_of(entry_id)  # a one-step entry: m (or v, an earlier log's), t, x, y, r
        assert event_id is not None
        if floor is not None and event_id <= floor:
            continue
        stamp = fields[b"r"]
        version = fields[b"m"] if b"m" in fields else fields[b"v"]
        events.append(
            _frame(
                model,
                version.decode("ascii"),
                stream,
                event_id,
                np.frombuffer(fields[b"x"], "<f8").tolist(),
                np.frombuffer(fields[b"y"], "<f4").tolist(),
                int(fields[b"t"]),
                json.loads(stamp) if stamp else None,
            )
        )
    return events
