"""The foundation: what every other layer may import, and which imports no other layer.

Owns the settings (one frozen dataclass), the error tree and its wire form, every Prometheus
metric (and Triton's per-model statistics, which are metrics read back), log records, JSON in and
out, identifiers such as the stream id pattern, the forms of ``REDIS_URL`` (standalone, cluster,
Sentinel), and the tokens file: its rules, the registry of
tokens and tenants, its reload and the tenants' reading buckets.

May import: the standard library and third-party packages only; nothing else of ``service``.
"""
