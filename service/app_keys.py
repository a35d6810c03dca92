"""Typed keys under which the application stores its resources (aiohttp ``AppKey``)."""

from __future__ import annotations

from aiohttp import web

from .batcher import Batcher
from .event_hub import EventHub
from .metrics import Metrics
from .model import ServedModel
from .settings import Settings
from .state_store import StateStore

__all__ = ["BATCHER", "HUB", "METRICS", "MODELS", "SETTINGS", "STORE"]

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
MODELS = web.AppKey("models", dict[str, ServedModel])
STORE = web.AppKey("store", StateStore)
BATCHER = web.AppKey("batcher", Batcher)
HUB = web.AppKey("hub", EventHub)
