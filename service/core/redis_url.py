"""The forms ``REDIS_URL`` takes: checked at start-up, parsed for the clients, shown redacted.

- ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` (TLS) and ``unix://``: one server,
  standalone or any node of a Redis Cluster (the state store asks on first contact).
- ``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service_name[/db]`` and
  ``rediss+sentinel://`` (TLS to the sentinels and the primary alike): the primary that Redis
  Sentinel names for ``service_name``, asked again on every new connection so that clients follow a
  failover. The user and password are the primary's (and its replicas'); the sentinels' come in
  the query, ``sentinel_password=`` (and ``sentinel_username=``). A sentinel's port defaults to
  26379. The query's TLS options (``ssl_ca_certs=``, ``ssl_certfile=``, ``ssl_keyfile=``,
  ``ssl_cert_reqs=``, ``ssl_check_hostname=``) apply to both.

Passwords are never shown: ``redact_url`` replaces the primary's and the sentinels' with ``***``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

__all__ = [
    "SENTINEL_SCHEMES",
    "SentinelUrl",
    "check_redis_url",
    "parse_sentinel_url",
    "redact_url",
]

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SENTINEL_PORT = 26379
_SENTINEL_QUERY = ("sentinel_username", "sentinel_password")
_TLS_QUERY = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname")
_SECRET_QUERY = ("password", "sentinel_password")
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^\[\]:,/]+)(?::(\d{1,5}))?")


@dataclass(frozen=True)
class SentinelUrl:
    """A ``redis+sentinel://`` URL, parsed. Passwords stay out of ``repr``."""

    sentinels: tuple[tuple[str, int], ...]  # (host, port) of each sentinel, in the URL's order
    service_name: str  # the name the sentinels monitor the primary under
    db: int = 0
    tls: bool = False
    username: str | None = None  # the primary's
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    tls_options: tuple[tuple[str, Any], ...] = ()  # ssl_* keyword arguments, for both

    def primary_kwargs(self) -> dict[str, Any]:
        """Connection arguments for the primary (redis-py's names)."""
        kwargs: dict[str, Any] = {"db": self.db, **self._tls()}
        if self.username is not None:
            kwargs["username"] = self.username
        if self.password is not None:
            kwargs["password"] = self.password
        return kwargs

    def sentinel_kwargs(self) -> dict[str, Any]:
        """Connection arguments for the sentinels (redis-py's names)."""
        kwargs: dict[str, Any] = self._tls()
        if self.sentinel_username is not None:
            kwargs["username"] = self.sentinel_username
        if self.sentinel_password is not None:
            kwargs["password"] = self.sentinel_password
        return kwargs

    def _tls(self) -> dict[str, Any]:
        return {"ssl": True, **dict(self.tls_options)} if self.tls else {}


def parse_sentinel_url(url: str) -> SentinelUrl:
    """A ``redis+sentinel://`` or ``rediss+sentinel://`` URL; ValueError saying what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in SENTINEL_SCHEMES:
        raise ValueError("must start with redis+sentinel:// or rediss+sentinel://")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, sep, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if sep else None
    sentinels = []
    for item in hosts.split(","):
        found = _HOST.fullmatch(item.strip())
        if not found:
            raise ValueError(f"names a sentinel {item!r} that is not host or host:port")
        host = found.group(1).strip("[]")
        port = int(found.group(2) or SENTINEL_PORT)
        if not 1 <= port <= 65535:
            raise ValueError(f"names sentinel port {port}, outside 1-65535")
        sentinels.append((host, port))
    path = [unquote(p) for p in parts.path.split("/")[1:]]
    if not path or not path[0] or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(
            "must name the service the sentinels monitor, and optionally a database: "
            "/service_name or /service_name/db"
        )
    query: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in _SENTINEL_QUERY + _TLS_QUERY:
            known = ", ".join(_SENTINEL_QUERY + _TLS_QUERY)
            raise ValueError(f"has query option {key!r}; the known ones are {known}")
        query[key] = value
    tls = parts.scheme == "rediss+sentinel"
    tls_options: list[tuple[str, Any]] = []
    for key in _TLS_QUERY:
        if key in query:
            if not tls:
                raise ValueError(f"has {key} but speaks no TLS: use rediss+sentinel://")
            option: Any = query[key]
            if key == "ssl_check_hostname":
                option = option.lower() in ("1", "true", "yes", "on")
            tls_options.append((key, option))
    return SentinelUrl(
        sentinels=tuple(sentinels),
        service_name=path[0],
        db=int(path[1]) if len(path) == 2 else 0,
        tls=tls,
        username=username,
        password=password,
        sentinel_username=query.get("sentinel_username") or None,
        sentinel_password=query.get("sentinel_password"),
        tls_options=tuple(tls_options),
    )


def check_redis_url(text: str) -> str:
    """``text`` if it is a URL of a form above; ValueError saying what is wrong."""
    parts = urlsplit(text)
    if parts.scheme in SENTINEL_SCHEMES:
        parse_sentinel_url(text)
        return text
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(
            "must start with redis://, rediss://, unix://, redis+sentinel:// or rediss+sentinel://"
        )
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError("names no host")
    return text


def redact_url(url: str) -> str:
    """The URL with every password (the server's and the sentinels') replaced by ``***``, for
    logs and messages."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    netloc = parts.netloc
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:***@{hosts}"
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    query = parts.query
    if any(key in _SECRET_QUERY for key, _ in pairs):
        shown = [(key, "***" if key in _SECRET_QUERY else value) for key, value in pairs]
        query = urlencode(shown, safe="*/", quote_via=quote)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
