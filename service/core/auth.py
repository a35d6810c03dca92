"""Bearer tokens: the tokens file, the registry that says whose a token is, reloading it, and each
tenant's readings-per-second bucket. No HTTP here: ``api/authn.py`` is the edge that uses it.

The tokens file (``--auth-tokens``) is JSON and holds only the SHA-256 of each token::

    {"tokens": [{"name": "plant-a-writer", "sha256": "<64 hex digits>", "tenant": "plant-a",
                 "scopes": ["write", "read"]}],
     "tenants": {"plant-a": {"max_streams": 10000, "readings_per_s": 5000}}}

``tenants`` is optional, and so is each limit in it: a tenant it does not name has none. Scopes do
not imply one another (``admin`` does not grant ``read``). A file that breaks a rule raises
``TokenFileError`` naming the entry and the field; its messages quote names, never a hash.

``TokenRegistry.reload`` reads the file again when its inode, size or modification time changed
(``force``: whatever they say, as on SIGHUP), and takes the new content only when all of it is
valid; otherwise the tokens loaded before stay, and the reason is logged once. Each change of the
set increments ``generation``. ``MetricsToken`` is the one token of ``/metrics``, read and reloaded
the same way.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .ids import TENANT_NAME

__all__ = [
    "SCOPES",
    "TOKEN_NAME",
    "MetricsToken",
    "Principal",
    "TenantLimits",
    "TokenBucket",
    "TokenFileError",
    "TokenRegistry",
    "TokenSet",
    "WatchedFile",
    "hash_token",
    "parse_entry",
    "parse_tokens",
]

log = logging.getLogger(__name__)

SCOPES = ("read", "write", "admin")
# A token's name shows in messages and logs: no spaces, quotes or control characters.
TOKEN_NAME = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_ENTRY_FIELDS = ("name", "sha256", "tenant", "scopes")
_LIMIT_FIELDS = ("max_streams", "readings_per_s")


class TokenFileError(ValueError):
    """A tokens file (or metrics token file) the service cannot use; the message names the fault
    (which entry, which field) and never quotes a token or a hash."""


def hash_token(token: str) -> str:
    """The SHA-256 of a token as 64 lowercase hex digits: what a tokens file holds."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Principal:
    """Whose a token is: its entry's name, tenant and scopes."""

    name: str
    tenant: str
    scopes: frozenset[str]
    sha256: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class TenantLimits:
    max_streams: int | None = None
    readings_per_s: float | None = None


@dataclass(frozen=True)
class TokenSet:
    """One version of a tokens file: principals by the hex SHA-256 of their token, limits by
    tenant."""

    principals: Mapping[str, Principal]
    tenants: Mapping[str, TenantLimits]

    def summary(self) -> str:
        tenants = {p.tenant for p in self.principals.values()} | set(self.tenants)
        return f"{len(self.principals)} token(s) of {len(tenants)} tenant(s)"


# -- the file's rules ------------------------------------------------------------------------


def _fields(value: object, where: str, allowed: tuple[str, ...], hint: str = "") -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TokenFileError(f"{where} must be an object with {', '.join(allowed)}")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        names = ", ".join(repr(str(k)[:40]) for k in unknown)
        raise TokenFileError(
            f"{where} has unknown field(s) {names}; it takes {', '.join(allowed)}{hint}"
        )
    return value


def parse_entry(entry: object, where: str) -> Principal:
    """One element of ``tokens``; raises TokenFileError naming ``where`` and the field."""
    hint = ""
    if isinstance(entry, dict) and "token" in entry:
        hint = " (a tokens file holds only each token's sha256, as lstm-token new prints it)"
    data = _fields(entry, where, _ENTRY_FIELDS, hint)
    for name in _ENTRY_FIELDS:
        if name not in data:
            raise TokenFileError(f"{where} has no {name!r}")
    name = data["name"]
    if not isinstance(name, str) or not TOKEN_NAME.fullmatch(name):
        raise TokenFileError(f"{where}.name must be 1 to 128 of A-Z a-z 0-9 . _ : @ -")
    where = f"{where} ({name})"
    sha256 = data["sha256"]
    if not isinstance(sha256, str) or not _SHA256_HEX.fullmatch(sha256.lower()):
        raise TokenFileError(
            f"{where}: 'sha256' must be the SHA-256 of the token as 64 hexadecimal digits"
        )
    tenant = data["tenant"]
    if not isinstance(tenant, str) or not TENANT_NAME.fullmatch(tenant):
        raise TokenFileError(f"{where}: 'tenant' must be 1 to 64 of A-Z a-z 0-9 _ -")
    scopes = data["scopes"]
    if (
        not isinstance(scopes, list)
        or not scopes
        or not all(isinstance(s, str) and s in SCOPES for s in scopes)
    ):
        raise TokenFileError(
            f"{where}: 'scopes' must be a non-empty list of {', '.join(map(repr, SCOPES))}"
        )
    if len(set(scopes)) != len(scopes):
        raise TokenFileError(f"{where}: 'scopes' names a scope twice")
    return Principal(name, tenant, frozenset(scopes), sha256.lower())


def _limits(name: object, value: object) -> TenantLimits:
    if not isinstance(name, str) or not TENANT_NAME.fullmatch(name):
        raise TokenFileError(
            f"tenants: {str(name)[:70]!r} is not a tenant name (1 to 64 of A-Z a-z 0-9 _ -)"
        )
    where = f"tenants.{name}"
    data = _fields(value, where, _LIMIT_FIELDS)
    max_streams = data.get("max_streams")
    if max_streams is not None and (
        not isinstance(max_streams, int) or isinstance(max_streams, bool) or max_streams < 1
    ):
        raise TokenFileError(f"{where}.max_streams must be a whole number of at least 1")
    rate = data.get("readings_per_s")
    if rate is not None and (
        not isinstance(rate, int | float)
        or isinstance(rate, bool)
        or not math.isfinite(rate)
        or rate <= 0
    ):
        raise TokenFileError(f"{where}.readings_per_s must be a number greater than 0")
    return TenantLimits(max_streams, None if rate is None else float(rate))


def parse_tokens(data: bytes) -> TokenSet:
    """A tokens file's content; raises TokenFileError naming the fault."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:  # the message has a position, not content
        raise TokenFileError(f"is not valid JSON ({exc})") from None
    top = _fields(doc, "the file", ("tokens", "tenants"))
    if "tokens" not in top:
        raise TokenFileError("has no 'tokens' list")
    entries = top["tokens"]
    if not isinstance(entries, list):
        raise TokenFileError("'tokens' must be a list of token entries")
    tenants_doc = top.get("tenants", {})
    if not isinstance(tenants_doc, dict):
        raise TokenFileError("'tenants' must be an object {tenant: {max_streams, readings_per_s}}")
    tenants = {name: _limits(name, value) for name, value in tenants_doc.items()}
    principals: dict[str, Principal] = {}
    seen_names: dict[str, int] = {}
    seen_hashes: dict[str, int] = {}
    for index, entry in enumerate(entries):
        principal = parse_entry(entry, f"tokens[{index}]")
        where = f"tokens[{index}] ({principal.name})"
        if principal.name in seen_names:
            raise TokenFileError(
                f"{where}: tokens[{seen_names[principal.name]}] has the same name; names must "
                "be unique"
            )
        if principal.sha256 in seen_hashes:
            raise TokenFileError(
                f"{where}: tokens[{seen_hashes[principal.sha256]}] has the same sha256; each "
                "token has one entry"
            )
        seen_names[principal.name] = index
        seen_hashes[principal.sha256] = index
        principals[principal.sha256] = principal
    return TokenSet(principals, tenants)


# -- reading a file that may change ------------------------------------------------------------


class WatchedFile:
    """A small file, read again when its inode, size or modification time differ from the last
    read (or when forced), and handed on only when its bytes differ from the last handed on.

    The inode catches a file replaced by a rename (and a Kubernetes Secret's symlink swap, since
    ``stat`` follows links); size and modification time an edit in place. An edit that keeps all
    three (rare: nanosecond times) waits for a forced read, such as SIGHUP's."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._key: tuple[int, int, int] | None = None
        self._digest: bytes | None = None

    def changed(self, force: bool = False) -> bytes | None:
        """The new content, or None when unchanged; raises OSError when it cannot be read."""
        try:
            st = os.stat(self.path)
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
            if key == self._key and not force:
                return None
            data = self.path.read_bytes()
        except OSError:
            self._key = None  # whatever comes back is read afresh
            raise
        self._key = key
        digest = hashlib.sha256(data).digest()
        if digest == self._digest:
            return None
        self._digest = digest
        return data


def _unreadable(exc: OSError) -> str:
    return f"cannot be read ({exc.strerror or type(exc).__name__})"


class _Reloadable:
    """What a registry and the metrics token share: a watched file, the fault of its last read
    (logged once, not at every check) and a generation that counts changes."""

    what = "file"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.generation = 0
        self._file = WatchedFile(path)
        self._fault: str | None = None
        try:
            data = self._file.changed(force=True)
        except OSError as exc:
            raise TokenFileError(f"{path}: {_unreadable(exc)}") from None
        assert data is not None  # the first read always hands its content on
        try:
            self._take(data)
        except TokenFileError as exc:
            raise TokenFileError(f"{path}: {exc}") from None

    def _take(self, data: bytes) -> str:
        """Install new content; a short summary for the log. Raises TokenFileError."""
        raise NotImplementedError

    def reload(self, force: bool = False, trigger: str = "a change") -> bool:
        """Read the file again if it changed (``force``: whatever its metadata says); True when
        new content was installed. A fault keeps what was loaded and is logged once."""
        try:
            data = self._file.changed(force)
            if data is None:
                if force:
                    if self._fault is not None:
                        log.warning(
                            "%s %s still not reloaded: %s", self.what, self.path, self._fault
                        )
                    else:
                        log.info("%s %s unchanged on %s", self.what, self.path, trigger)
                return False
            summary = self._take(data)
        except OSError as exc:
            self._failed(_unreadable(exc), force)
            return False
        except TokenFileError as exc:
            self._failed(str(exc), force)
            return False
        self._fault = None
        self.generation += 1
        log.info("%s %s reloaded on %s: %s", self.what, self.path, trigger, summary)
        return True

    def _failed(self, fault: str, force: bool) -> None:
        if fault != self._fault or force:
            log.warning(
                "%s %s not reloaded: %s; keeping what was loaded before",
                self.what,
                self.path,
                fault,
            )
        self._fault = fault


# -- quotas ------------------------------------------------------------------------------------


class TokenBucket:
    """A tenant's readings per second in one process: ``rate`` a second, holding at most one
    second's worth (and at least one reading).

    A request takes its readings whole or not at all: when more are asked than the bucket holds,
    nothing is taken and ``take`` says how long until they would fit. A request of more readings
    than the bucket can ever hold passes when the bucket is full and leaves it in debt, repaid
    over the following seconds, so that no request is refused for ever and the rate holds over
    time."""

    __slots__ = ("_level", "_stamp", "capacity", "rate")

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.capacity = max(rate, 1.0)
        self._level = self.capacity
        self._stamp = now

    def take(self, count: int, now: float) -> float:
        """0.0 when ``count`` readings were taken; else the seconds until they could be."""
        level = min(self.capacity, self._level + (now - self._stamp) * self.rate)
        self._stamp = now
        if count <= level or level >= self.capacity:
            self._level = level - count
            return 0.0
        self._level = level
        return (min(count, self.capacity) - level) / self.rate


# -- the registry --------------------------------------------------------------------------------


class TokenRegistry(_Reloadable):
    """The tokens of ``--auth-tokens``: who a token is, what a tenant may do. Raises
    TokenFileError when the file cannot be used at start-up."""

    what = "tokens file"

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._principals: Mapping[str, Principal] = {}
        self._tenants: Mapping[str, TenantLimits] = {}
        self._buckets: dict[str, TokenBucket] = {}
        super().__init__(path)

    def _take(self, data: bytes) -> str:
        tokens = parse_tokens(data)
        now = self._clock()
        buckets: dict[str, TokenBucket] = {}
        for tenant, limits in tokens.tenants.items():
            if limits.readings_per_s is None:
                continue
            # A tenant whose rate did not change keeps its bucket, and what it has spent.
            kept = self._buckets.get(tenant)
            if kept is None or kept.rate != limits.readings_per_s:
                kept = TokenBucket(limits.readings_per_s, now)
            buckets[tenant] = kept
        self._principals, self._tenants, self._buckets = tokens.principals, tokens.tenants, buckets
        return tokens.summary()

    def __len__(self) -> int:
        return len(self._principals)

    def lookup(self, digest: str) -> Principal | None:
        """The principal whose token has this SHA-256 (64 lowercase hex digits), or None."""
        principal = self._principals.get(digest)
        if principal is None or not hmac.compare_digest(principal.sha256, digest):
            return None
        return principal

    def authenticate(self, token: str) -> Principal | None:
        return self.lookup(hash_token(token))

    def allows(self, principal: Principal, scope: str) -> bool:
        """Whether the token that made ``principal`` is still in the set, for the same tenant,
        with ``scope``: a connection opened with it may stay open."""
        now = self._principals.get(principal.sha256)
        return now is not None and now.tenant == principal.tenant and scope in now.scopes

    def limit(self, tenant: str) -> int | None:
        """The tenant's ``max_streams``, or None for no limit."""
        limits = self._tenants.get(tenant)
        return None if limits is None else limits.max_streams

    def readings_wait_s(self, tenant: str, count: int) -> float:
        """Take ``count`` readings from the tenant's bucket: 0.0 when taken (or the tenant has no
        ``readings_per_s``), else the seconds until they would fit (nothing taken)."""
        bucket = self._buckets.get(tenant)
        if bucket is None:
            return 0.0
        return bucket.take(count, self._clock())


class MetricsToken(_Reloadable):
    """The one bearer token of ``/metrics`` (``--metrics-token-file``): the file's content,
    surrounding white space removed. Only its SHA-256 is kept."""

    what = "metrics token file"

    def __init__(self, path: Path) -> None:
        self._digest = ""
        super().__init__(path)

    def _take(self, data: bytes) -> str:
        try:
            token = data.decode().strip()
        except UnicodeDecodeError:
            raise TokenFileError("is not UTF-8 text") from None
        if not token or any(ch.isspace() for ch in token):
            raise TokenFileError("must hold one token: non-empty, without white space")
        self._digest = hash_token(token)
        return "a new token"

    def matches(self, digest: str) -> bool:
        """Whether a presented token with this SHA-256 is the metrics token."""
        return hmac.compare_digest(self._digest, digest)
