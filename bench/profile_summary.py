"""Where a service process's time goes: py-spy's raw samples summed into a few buckets.

    pip install py-spy
    py-spy record --pid PID --duration 10 --format raw --output prof.txt --nonblocking
    python bench/profile_summary.py prof.txt

Each sample is charged to the innermost frame that belongs to a bucket below (so time in the
standard library's JSON module called from our handler is "JSON", not "handlers"). py-spy samples
only while the process runs on a CPU; the share of samples out of the duration x rate is how busy
it was.
"""

from __future__ import annotations

import argparse
import collections
import sys

# (bucket, substrings of a frame's "function (file:line)" text), the first match wins per frame
BUCKETS: list[tuple[str, tuple[str, ...]]] = [
    ("onnxruntime (inference)", ("onnxruntime",)),
    ("JSON (orjson / json)", ("jsonio.py", "json/", "orjson")),
    ("Redis client (redis-py, hiredis)", ("redis/",)),
    ("metrics (prometheus_client)", ("prometheus_client",)),
    ("batch: records, events, packing", ("record.py", "events.py", "state_store.py")),
    ("batch: planning and answering", ("plan.py", "batcher.py")),
    ("request parsing and checks (wire.py)", ("wire.py",)),
    ("our handlers and middlewares", ("service/",)),
    ("aiohttp (HTTP parsing, routing, writing)", ("aiohttp/",)),
    ("event loop and sockets (uvloop, asyncio)", ("asyncio/", "uvloop", "runners.py")),
]


def bucket_of(frames: list[str]) -> str:
    for frame in reversed(frames):  # innermost first
        for name, needles in BUCKETS:
            if any(needle in frame for needle in needles):
                return name
    return "other"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("raw", help="py-spy --format raw output")
    args = parser.parse_args()
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    with open(args.raw) as raw:
        for line in raw:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            total += int(n)
            counts[bucket_of(stack.split(";"))] += int(n)
    if not total:
        print("no samples", file=sys.stderr)
        return 1
    print(f"{total} samples")
    for name, count in counts.most_common():
        print(f"{100 * count / total:5.1f}%  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
