"""Authentication at the HTTP edge: which scope each route needs, the middleware that checks a
request's bearer token before its handler runs, the tenants' reading quotas, and ending the
subscriptions of a token that is revoked.

``ROUTE_SCOPES`` classifies every route the app registers, (method, route template) to a rule:
open to anyone, or a scope (``read``, ``write``, ``admin``) that the request's token must have.
``Authenticator.classify`` refuses an app with a route missing from it, so a route added later
cannot be left unguarded by mistake.

Order of checks: the middleware runs inside the error middleware and before the handler, so a
request without a valid token is answered 401 before its body is read, before any 404 of a model
or a path (a path no route has needs a valid token too), any 413 and any 503 of a full queue; a
valid token without the route's scope is 403. A token is ``Authorization: Bearer <token>``; the
event routes also take ``?access_token=`` (a browser's EventSource cannot send headers), which is
taken out of the query before the handler sees it. Per request this costs one SHA-256 of the token
and one dictionary lookup.

A tenant's ``readings_per_s`` is charged by the handlers once they know how many readings a
request carries and before it is queued (``charge_readings``): over it, 429 ``quota_exceeded``
with ``Retry-After``.

A subscription (SSE or WebSocket) opened with a token is ended with a ``closed`` event, code
``token_revoked``, as soon as a reload of the tokens file removes that token or takes away its
scope or tenant (``end_on_revocation``). The tokens file is checked for changes every
``RELOAD_CHECK_S`` and read again on SIGHUP.

Never logged: a token, its hash, the metrics token or an Authorization header; the messages of
the errors here name a token by its entry's name only.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from weakref import WeakKeyDictionary

from aiohttp import web
from aiohttp.typedefs import Middleware
from aiohttp.web_urldispatcher import AbstractRoute

from ..core.auth import MetricsToken, Principal, TokenRegistry
from ..core.errors import Forbidden, QuotaExceeded, Unauthenticated
from ..core.settings import Settings
from ..push.event_hub import Mailbox
from .app_keys import TENANT

__all__ = [
    "ACCESS_TOKEN",
    "AUTHENTICATOR",
    "PRINCIPAL",
    "RELOAD_CHECK_S",
    "ROUTE_SCOPES",
    "Authenticator",
    "Rule",
    "charge_readings",
    "end_on_revocation",
]

log = logging.getLogger(__name__)

# The request key of the request's Principal (absent: no authentication, or an open route).
PRINCIPAL = web.RequestKey("principal", Principal)
ACCESS_TOKEN = "access_token"  # the query parameter of the routes that take a token there
RELOAD_CHECK_S = 2.0  # how often the token files' metadata is checked for a change

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_Opened = WeakKeyDictionary[Mailbox, tuple[Principal, str]]  # a subscription: its token, scope


@dataclass(frozen=True, slots=True)
class Rule:
    """What a route asks of a request: ``scope`` None is open to anyone; ``query_token``: the
    token may come as ``?access_token=`` instead of the Authorization header."""

    scope: str | None
    query_token: bool = False


OPEN = Rule(None)
READ = Rule("read")
WRITE = Rule("write")
ADMIN = Rule("admin")
SUBSCRIBE = Rule("read", query_token=True)
# /metrics: open, or the metrics token alone when --metrics-token-file is given.
METRICS = Rule("metrics")
# A request no route matches (an unknown path or method): any valid token, then its 404 or 405.
_UNROUTED = Rule("")

_LONG = "/v1/models/{model}"
_V2 = "/v2/models/{model}"
_V2_VERSION = _V2 + "/versions/{version}"

# Every route, (method, route template) -> rule. HEAD, which aiohttp adds beside a GET, follows
# its GET.
ROUTE_SCOPES: dict[tuple[str, str], Rule] = {
    # operations
    ("GET", "/healthz"): OPEN,
    ("GET", "/readyz"): OPEN,
    ("GET", "/openapi.json"): OPEN,
    ("GET", "/metrics"): METRICS,
    # /v1: a named model's paths, then the default model's short paths
    ("POST", _LONG + "/streams/{stream}/readings"): WRITE,
    ("POST", _LONG + "/readings"): WRITE,
    ("GET", _LONG + "/streams/{stream}"): READ,
    ("DELETE", _LONG + "/streams/{stream}"): ADMIN,
    ("POST", _LONG + "/streams/{stream}/forecast"): READ,
    ("POST", _LONG + "/forecast"): READ,
    ("GET", _LONG + "/streams/{stream}/events"): SUBSCRIBE,
    ("GET", _LONG + "/events"): SUBSCRIBE,
    ("GET", _LONG + "/events/ws"): SUBSCRIBE,
    ("POST", "/v1/streams/{stream}/readings"): WRITE,
    ("POST", "/v1/readings"): WRITE,
    ("GET", "/v1/streams/{stream}"): READ,
    ("DELETE", "/v1/streams/{stream}"): ADMIN,
    ("POST", "/v1/streams/{stream}/forecast"): READ,
    ("POST", "/v1/forecast"): READ,
    ("GET", "/v1/streams/{stream}/events"): SUBSCRIBE,
    ("GET", "/v1/events"): SUBSCRIBE,
    ("GET", "/v1/events/ws"): SUBSCRIBE,
    ("GET", "/v1/models"): READ,
    ("GET", "/v1/models/{model}"): READ,
    # /v2 (KServe v2): health is open, inference writes, statistics are administrative
    ("GET", "/v2"): READ,
    ("GET", "/v2/health/live"): OPEN,
    ("GET", "/v2/health/ready"): OPEN,
    ("POST", "/v2/repository/index"): READ,
    ("GET", "/v2/models/stats"): ADMIN,
    ("POST", _V2 + "/infer"): WRITE,
    ("GET", _V2): READ,
    ("GET", _V2 + "/ready"): READ,
    ("GET", _V2 + "/config"): READ,
    ("GET", _V2 + "/stats"): ADMIN,
    ("POST", _V2_VERSION + "/infer"): WRITE,
    ("GET", _V2_VERSION): READ,
    ("GET", _V2_VERSION + "/ready"): READ,
    ("GET", _V2_VERSION + "/config"): READ,
    ("GET", _V2_VERSION + "/stats"): ADMIN,
}

_NEEDS_TOKEN = "this request needs a bearer token: send the header 'Authorization: Bearer <token>'"
_MALFORMED = "the Authorization header must be 'Bearer <token>'"
_UNKNOWN = "the bearer token is not valid: unknown, or revoked"


def _bearer(header: str) -> str:
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise Unauthenticated(_MALFORMED, token_given=True)
    return token


def _without_access_token(request: web.Request) -> web.Request:
    """The request with ``access_token`` taken out of its query, so that the handler (and
    anything it logs or echoes) never sees the token."""
    query = [(k, v) for k, v in request.query.items() if k != ACCESS_TOKEN]
    return request.clone(rel_url=request.rel_url.with_query(query))


class Authenticator:
    """The tokens (``registry``) and the metrics token in force, and the middleware that checks
    them. Either may be None: that check is off."""

    def __init__(self, registry: TokenRegistry | None, metrics_token: MetricsToken | None) -> None:
        self.registry = registry
        self.metrics_token = metrics_token
        self._rules: dict[AbstractRoute, Rule] = {}
        # Open subscriptions and the token and scope that opened them. Weak: a connection's
        # mailbox that is gone needs no ending.
        self._subscriptions: _Opened = WeakKeyDictionary()

    @classmethod
    def from_settings(cls, settings: Settings) -> Authenticator | None:
        """None when there is nothing to check; raises TokenFileError (a ValueError) for a
        file that cannot be used."""
        registry = None if settings.auth_tokens is None else TokenRegistry(settings.auth_tokens)
        metrics = (
            None
            if settings.metrics_token_file is None
            else MetricsToken(settings.metrics_token_file)
        )
        if registry is None and metrics is None:
            return None
        return cls(registry, metrics)

    def classify(self, router: web.UrlDispatcher) -> None:
        """Look up every registered route's rule once; raises LookupError naming the routes that
        ``ROUTE_SCOPES`` does not classify."""
        missing: list[str] = []
        for route in router.routes():
            resource = route.resource
            template = resource.canonical if resource is not None else "?"
            method = "GET" if route.method == "HEAD" else route.method
            rule = ROUTE_SCOPES.get((method, template))
            if rule is None:
                missing.append(f"{route.method} {template}")
            else:
                self._rules[route] = rule
        if missing:
            raise LookupError(
                f"routes without a scope: {', '.join(sorted(set(missing)))}; classify each in "
                "ROUTE_SCOPES (service/api/authn.py)"
            )

    def middleware(self) -> Middleware:
        rules = self._rules
        registry = self.registry
        metrics_token = self.metrics_token

        @web.middleware
        async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
            rule = rules.get(request.match_info.route, _UNROUTED)
            scope = rule.scope
            if scope is None:
                return await handler(request)
            if scope == "metrics":
                if metrics_token is not None:
                    _check_metrics_token(request, metrics_token)
                return await handler(request)
            if registry is None:
                return await handler(request)
            if (
                rule is _UNROUTED
                and request.method == "OPTIONS"
                and "Access-Control-Request-Method" in request.headers
            ):
                return await handler(request)  # a browser's preflight never carries a token
            header = request.headers.get("Authorization")
            token: str | None = None
            if rule.query_token and ACCESS_TOKEN in request.query:
                token = request.query[ACCESS_TOKEN]
                request = _without_access_token(request)
            if header is not None:
                token = _bearer(header)  # the header wins over the query
            elif token is None:
                hint = f" or the query parameter {ACCESS_TOKEN}=<token>" if rule.query_token else ""
                raise Unauthenticated(_NEEDS_TOKEN + hint, token_given=False)
            principal = registry.lookup(hashlib.sha256(token.encode()).hexdigest())
            if principal is None:
                raise Unauthenticated(_UNKNOWN, token_given=True)
            if scope and scope not in principal.scopes:
                raise Forbidden(
                    f"the token {principal.name!r} lacks the {scope!r} scope this request needs"
                )
            request[PRINCIPAL] = principal
            request[TENANT] = principal.tenant
            return await handler(request)

        return authenticate

    # -- reloading ---------------------------------------------------------------------------

    def reload(self, force: bool = False, trigger: str = "a change") -> None:
        """Read the token files again if they changed (``force``: whatever their metadata
        says), and end the subscriptions of tokens that are no longer valid."""
        if self.metrics_token is not None:
            self.metrics_token.reload(force, trigger)
        if self.registry is not None and self.registry.reload(force, trigger):
            self._end_revoked(self.registry)

    async def watch_files(self) -> None:
        """Check the token files every ``RELOAD_CHECK_S`` until cancelled. The check is a
        ``stat`` (the file is read only when it changed), too short to leave the event loop."""
        while True:
            await asyncio.sleep(RELOAD_CHECK_S)
            try:
                self.reload()
            except Exception:  # never let a surprise stop the checks
                log.exception("checking the token files failed")

    def follow(self, request: web.Request, mailbox: Mailbox) -> None:
        """Remember the subscription ``mailbox`` of ``request``, to end it when its token is
        revoked or loses the route's scope."""
        principal: Principal | None = request.get(PRINCIPAL)
        rule = self._rules.get(request.match_info.route)
        if principal is not None and rule is not None and rule.scope:
            self._subscriptions[mailbox] = (principal, rule.scope)

    def _end_revoked(self, registry: TokenRegistry) -> None:
        ended = 0
        for mailbox, (principal, scope) in list(self._subscriptions.items()):
            if registry.allows(principal, scope):
                continue
            del self._subscriptions[mailbox]
            if mailbox.reason is None:
                ended += 1
                mailbox.close(
                    "token_revoked",
                    f"the token this connection was opened with ({principal.name}) was revoked "
                    f"or lost its {scope!r} scope; {mailbox.resume_hint}, with a valid token",
                )
        if ended:
            log.info("ended %d subscription(s) opened with tokens no longer valid", ended)


def _check_metrics_token(request: web.Request, metrics_token: MetricsToken) -> None:
    header = request.headers.get("Authorization")
    if header is None:
        raise Unauthenticated(
            "GET /metrics needs the metrics token: send 'Authorization: Bearer <token>'",
            token_given=False,
        )
    digest = hashlib.sha256(_bearer(header).encode()).hexdigest()
    if not metrics_token.matches(digest):
        raise Unauthenticated("the bearer token is not the metrics token", token_given=True)


AUTHENTICATOR = web.AppKey("authenticator", Authenticator)


def charge_readings(request: web.Request, count: int) -> None:
    """Take ``count`` readings (a request's readings, or a v2 request's steps) from the request's
    tenant's ``readings_per_s``, before they are queued; raises QuotaExceeded when they do not
    fit. A request is charged whole: a bulk request over the remaining budget is refused whole,
    none of its items applied. No-op without authentication or for a tenant without a quota."""
    principal: Principal | None = request.get(PRINCIPAL)
    if principal is None or count <= 0:  # (a bulk request of invalid items only queues none)
        return
    registry = request.app[AUTHENTICATOR].registry
    assert registry is not None  # a principal comes from it
    wait_s = registry.readings_wait_s(principal.tenant, count)
    if wait_s > 0:
        raise QuotaExceeded(
            f"tenant {principal.tenant!r} has spent its readings per second; these {count} "
            f"reading(s) fit in {wait_s:.2f} s: retry after Retry-After",
            retry_after_s=max(1, math.ceil(wait_s)),
        )


def end_on_revocation(request: web.Request, mailbox: Mailbox) -> None:
    """End this subscription (``closed``, ``token_revoked``) when the token that opened it is
    revoked or loses the route's scope. No-op without authentication."""
    if PRINCIPAL in request:
        request.app[AUTHENTICATOR].follow(request, mailbox)
