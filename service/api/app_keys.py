"""Typed keys under which the application stores its resources (aiohttp ``AppKey``), and the
request's tenant (set by authentication; ``tenant_of``)."""

from __future__ import annotations

from aiohttp import web

from ..core.ids import DEFAULT_TENANT
from ..core.metrics import Metrics
from ..core.settings import Settings
from ..push.event_hub import EventHub
from ..step.batcher import Batcher
from ..step.model import ServedModel
from ..step.state_store import StateStore

__all__ = ["BATCHER", "HUB", "METRICS", "MODELS", "SETTINGS", "STORE", "TENANT", "tenant_of"]

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
MODELS = web.AppKey("models", dict[str, ServedModel])
STORE = web.AppKey("store", StateStore)
BATCHER = web.AppKey("batcher", Batcher)
HUB = web.AppKey("hub", EventHub)

# The request's tenant, as authentication found it (absent: the service runs without it).
TENANT = web.RequestKey("tenant", str)


def tenant_of(request: web.Request) -> str:
    """The tenant whose streams this request may address."""
    tenant: str = request.get(TENANT, DEFAULT_TENANT)
    return tenant
