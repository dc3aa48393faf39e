"""Helpers shared by the provider tests (a module of its own: every test dir has a ``conftest``)."""

from __future__ import annotations

import importlib
from typing import Any

FAST = {"connect_timeout": "0.5", "first_byte_timeout": "3", "read_timeout": "3"}


def make_provider(name: str, section: dict[str, Any]):
    """``speakd.providers.<name>.create(section)``, as the registry does."""
    return importlib.import_module(f"speakd.providers.{name}").create(section)


async def collect(provider, request) -> list:
    return [chunk async for chunk in provider.synthesize(request)]
