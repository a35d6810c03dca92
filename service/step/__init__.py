"""The step path: everything between a queued reading and its stored, announced result.

Owns the queue and the natural-batching loop (``batcher``), what a batch does to each stream
(``plan``), the state record's layout (``record``), every Redis key and Lua script
(``state_store``), every Redis client and how it follows a failover (``redis_clients``), the
records this process wrote last (``state_cache``), the onnxruntime models (``model``) and their
feedback mappings (``feedback``), forecasts and what-ifs run in memory from stored states
(``forecast``), the event log's encodings (``events``) and what follows from expired streams
(``expiry``). A stream is named by (tenant, model, stream) throughout.

May import: ``core``.
"""
