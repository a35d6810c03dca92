"""Push delivery: prediction events to subscribers, live and resumed from the log.

Owns the per-process pub/sub connections, their fan-out to subscribers and their recovery after a
failover (``event_hub``), and one
subscriber connection following several streams, whatever its transport (``subscriber``).

May import: ``core`` and ``step`` (the event log's encodings and reads).
"""
