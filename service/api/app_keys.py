"""Typed keys under which the application stores its resources (aiohttp ``AppKey``)."""

from __future__ import annotations

from aiohttp import web

from ..core.metrics import Metrics
from ..core.settings import Settings
from ..push.event_hub import EventHub
from ..step.batcher import Batcher
from ..step.model import ServedModel
from ..step.state_store import StateStore

__all__ = ["BATCHER", "HUB", "METRICS", "MODELS", "SETTINGS", "STORE"]

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
MODELS = web.AppKey("models", dict[str, ServedModel])
STORE = web.AppKey("store", StateStore)
BATCHER = web.AppKey("batcher", Batcher)
HUB = web.AppKey("hub", EventHub)
