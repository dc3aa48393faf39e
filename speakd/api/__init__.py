"""The Speaking REST API (aiohttp): thin resources over :class:`SpeakingService`."""

from speakd.api.app import create_app

__all__ = ["create_app"]
