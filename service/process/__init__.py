"""Running the process: the application's composition and lifetime, workers, a private Redis.

Owns ``create_app`` (every resource opened and closed in order), serving one process until a
signal and draining it (``runner``), the supervisor of ``--workers`` (``supervisor``), the
private server used without ``REDIS_URL`` (``embedded_redis``) and ``lstm-token``
(``tokens_cli``).

May import: every other layer (``core``, ``step``, ``push``, ``api``).
"""
