"""The streaming LSTM service: per-stream state in Redis, one onnxruntime step per reading.

``create_app(settings)`` builds the aiohttp application; ``lstm-serve`` (``__main__``) runs it.
"""

from .app import create_app
from .settings import Settings, load_settings

__all__ = ["Settings", "create_app", "load_settings"]
