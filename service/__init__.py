"""The streaming LSTM service: per-stream state in Redis, one onnxruntime step per reading.

``create_app(settings)`` builds the aiohttp application; ``lstm-serve`` (``__main__``) runs it.
"""

from .core.settings import Settings, load_settings
from .process.app import create_app

__all__ = ["Settings", "create_app", "load_settings"]
