"""The TTS providers speakd has, by name: the one list that the config sections, the provider
registry, the API's ``provider`` field and the OpenAPI document are all made from.

A module of its own that imports nothing: the config needs these names and the providers
import the config, so the list cannot live under ``speakd.providers``. Each name is also
the provider's module, ``speakd.providers.<name>``, and its config section, ``[<name>]``.
"""

from __future__ import annotations

# In the order of the spec's enum: error messages and the OpenAPI document list them so.
PROVIDER_NAMES = ("elevenlabs", "gcp", "aws", "piper")
