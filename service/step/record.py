"""The state record: one Redis string per (model, stream), so that a 2-layer, 64-unit stream
costs one allocation of about 1.1 KiB::

    offset  size  field
    0       8     generation      u64 LE   \\ the first 16 bytes are the compare-and-set guard
    8       8     seq             u64 LE   /
    16      8     updated_at      f64 LE   Unix seconds
    24      4     state_nbytes    u32 LE   bytes of h (and of c)
    28      2     n_results       u16 LE   results of the last applied request
    30      1     version_len     u8
    31      v     model version   ASCII
    ..      S     h               float32 [layers, hidden]
    ..      S     c               float32 [layers, hidden]
    ..      n*(8+4*O)  results    (seq u64, prediction float32[O]) per reading

A stream ended by its last request (the v2 ``sequence_end`` flag) keeps a record with no state
(``state_nbytes`` 0): it holds that request's results, so that a retry of it is still answered as
a duplicate, while the next new reading starts a new generation from zero state.

The commit script compares the guard and the first 24 bytes (``state_store.COMMIT_SCRIPT``).
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

__all__ = [
    "GUARD_BYTES",
    "StreamState",
    "encode_record",
    "encode_record_packed",
    "guard_of",
    "head_dtype",
    "record_dtype",
]

_HEAD = struct.Struct("<QQdIHB")
_SEQ = struct.Struct("<Q")
GUARD_BYTES = 16


class StreamState(NamedTuple):
    """A decoded record. ``h``/``c`` are None when another model version wrote the record."""

    guard: bytes
    generation: int
    seq: int
    updated_at: float
    model_version: str
    h: np.ndarray | None
    c: np.ndarray | None
    held: np.ndarray  # (seq, prediction [O]) of the last applied request, as stored
    ended: bool = False  # the stream was ended after its last request: no state is held

    @property
    def results(self) -> dict[int, np.ndarray]:
        """seq -> prediction [O] of the last applied request (decoded when asked: the batch
        path needs them only for a retry)."""
        return dict(zip(self.held["seq"].tolist(), self.held["prediction"], strict=True))

    @classmethod
    def decode(
        cls, raw: bytes, version: str, state_shape: tuple[int, int], outputs: int
    ) -> StreamState:
        generation, seq, updated_at, nbytes, n_results, vlen = _HEAD.unpack_from(raw)
        at = _HEAD.size
        stored_version = raw[at : at + vlen].decode("ascii")
        at += vlen
        dtype = _results_dtype(outputs)
        guard = raw[:GUARD_BYTES]
        ended = nbytes == 0  # only the last request's results, no state
        if ended or stored_version != version or nbytes != state_shape[0] * state_shape[1] * 4:
            # No state to use: ended, or written by another model version (whose results are
            # of no use either)
            same = ended and stored_version == version
            held = np.frombuffer(raw, dtype, n_results, at) if same else np.empty(0, dtype)
            return cls(guard, generation, seq, updated_at, stored_version, None, None, held, ended)
        size = state_shape[0] * state_shape[1]
        h = np.frombuffer(raw, np.float32, size, at).reshape(state_shape)
        c = np.frombuffer(raw, np.float32, size, at + nbytes).reshape(state_shape)
        held = np.frombuffer(raw, dtype, n_results, at + 2 * nbytes)
        return cls(guard, generation, seq, updated_at, stored_version, h, c, held)

    def last_prediction(self) -> list[float] | None:
        pred = self.results.get(self.seq)
        return None if pred is None else pred.tolist()


def encode_record(
    generation: int,
    seq: int,
    updated_at: float,
    version: str,
    h: bytes,
    c: bytes,
    result_seqs: Sequence[int],
    result_preds: np.ndarray,
) -> bytes:
    """Pack a record; ``result_preds`` is float32 ``[len(result_seqs), O]``."""
    preds = np.ascontiguousarray(result_preds, np.float32).tobytes()
    return encode_record_packed(generation, seq, updated_at, version, h, c, result_seqs, preds)


def encode_record_packed(
    generation: int,
    seq: int,
    updated_at: float,
    version: str,
    h: bytes,
    c: bytes,
    result_seqs: Sequence[int],
    result_preds: bytes,
) -> bytes:
    """``encode_record`` with the predictions as float32 bytes, row after row."""
    n = len(result_seqs)
    vbytes = version.encode("ascii")
    head = _HEAD.pack(generation, seq, updated_at, len(h), n, len(vbytes))
    if n == 1:
        held = _SEQ.pack(result_seqs[0]) + result_preds
    else:
        size = len(result_preds) // n
        held = b"".join(
            _SEQ.pack(s) + result_preds[k * size : (k + 1) * size]
            for k, s in enumerate(result_seqs)
        )
    return b"".join((head, vbytes, h, c, held))


@functools.cache
def _results_dtype(outputs: int) -> np.dtype:
    """One held result: its seq and its prediction, packed (8 + 4 * outputs bytes)."""
    return np.dtype([("seq", "<u8"), ("prediction", "<f4", (outputs,))])


@functools.cache
def head_dtype(version_len: int, state_shape: tuple[int, int]) -> np.dtype:
    """A record's fields up to the end of ``c``, as one NumPy record (the layout above), so that
    a batch decodes many streams' heads from one buffer (``columns.py``)."""
    return np.dtype(
        [
            ("generation", "<u8"),
            ("seq", "<u8"),
            ("updated_at", "<f8"),
            ("state_nbytes", "<u4"),
            ("n_results", "<u2"),
            ("version_len", "u1"),
            ("version", f"S{version_len}"),
            ("h", "<f4", state_shape),
            ("c", "<f4", state_shape),
        ]
    )


@functools.cache
def record_dtype(
    version_len: int, state_shape: tuple[int, int], outputs: int, n_results: int
) -> np.dtype:
    """A whole record holding ``n_results`` results, as one NumPy record: a batch encodes many
    streams' records into one buffer and cuts it (``columns.py``)."""
    head = head_dtype(version_len, state_shape)
    assert head.fields is not None  # a record type has fields
    fields = [(name, spec[0]) for name, spec in head.fields.items()]
    return np.dtype([*fields, ("held", _results_dtype(outputs), (n_results,))])


def guard_of(generation: int, seq: int) -> bytes:
    return struct.pack("<QQ", generation, seq)
