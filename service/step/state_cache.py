"""The records this process wrote last, so that the next batch of a stream skips reading it.

A stream's next reading usually comes back to the process that served its last one (one worker,
or a client that keeps its connection). Its batch can then plan from the record this process just
wrote instead of reading it from Redis: one round trip per batch instead of two. Redis stays the
only truth. The commit is a compare-and-set on the record's guard, so a cached record that is no
longer current (another replica or worker advanced the stream, it was ended or deleted, or it
expired) makes that write fail, the entry is dropped, and the stream is read and recomputed as
after any lost race. An answer that writes nothing (a retry's stored result, a stale seq) is never
given from the cache: such a stream is read first (``batcher.py``).

Bounded: the least recently used entries go first. ``--state-cache-streams 0`` turns it off.
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["StateCache"]


class StateCache:
    __slots__ = ("_entries", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> bytes | None:
        record = self._entries.get(key)
        if record is not None:
            self._entries.move_to_end(key)
        return record

    def put(self, key: str, record: bytes) -> None:
        entries = self._entries
        entries[key] = record
        entries.move_to_end(key)
        if len(entries) > self.capacity:
            entries.popitem(last=False)

    def drop(self, key: str) -> None:
        self._entries.pop(key, None)
