"""The OpenAPI document's security: the bearer schemes, and each operation's ``security`` and its
401, 403 and 429 answers, derived from the route table of ``authn.py`` (``ROUTE_SCOPES``), so that
the document and the middleware cannot disagree.

As the rest of the document, it describes the deployment: without ``--auth-tokens`` every
operation has ``security: []`` (and ``/metrics`` too, without ``--metrics-token-file``).
"""

from __future__ import annotations

from ...core.settings import Settings
from ..authn import ACCESS_TOKEN, METRICS, ROUTE_SCOPES
from .common import Schema, resp

__all__ = ["secure", "security_schemes"]


def security_schemes(settings: Settings) -> dict[str, Schema]:
    schemes: dict[str, Schema] = {}
    if settings.auth_tokens is not None:
        schemes["bearerToken"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "A token of the tokens file (Authorization: Bearer <token>). An "
            "operation's security names the scope its token needs: read, write or admin.",
        }
        schemes["accessToken"] = {
            "type": "apiKey",
            "in": "query",
            "name": ACCESS_TOKEN,
            "description": "The same token as a query parameter, on the event routes only (a "
            "browser's EventSource cannot send headers).",
        }
    if settings.metrics_token_file is not None:
        schemes["metricsToken"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "The metrics token (--metrics-token-file); API tokens are not it.",
        }
    return schemes


def secure(paths: dict[str, Schema], settings: Settings) -> None:
    """Give every operation of ``paths`` its ``security`` and the answers a refusal gives."""
    auth = settings.auth_tokens is not None
    metrics = settings.metrics_token_file is not None
    for path, item in paths.items():
        v2 = "V2" if path.startswith("/v2") else ""
        for method, op in item.items():
            rule = ROUTE_SCOPES[(method.upper(), path)]
            responses = op["responses"]
            if rule is METRICS:
                op["security"] = [{"metricsToken": []}] if metrics else []
                if metrics:
                    responses["401"] = resp("Unauthorized")
                    op["responses"] = dict(sorted(responses.items()))
                continue
            if rule.scope is None or not auth:
                op["security"] = []
                continue
            op["security"] = [{"bearerToken": [rule.scope]}]
            if rule.query_token:
                op["security"].append({"accessToken": [rule.scope]})
            responses["401"] = resp(v2 + "Unauthorized")
            responses["403"] = resp(v2 + "Forbidden")
            if rule.scope == "write":
                responses["429"] = resp(v2 + "QuotaExceeded")
            op["responses"] = dict(sorted(responses.items()))
