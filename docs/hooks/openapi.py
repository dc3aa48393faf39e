"""MkDocs hook: the site carries the OpenAPI document the daemon serves at /v1.0/openapi.json.

It is speakd's own ``OPENAPI`` (speakd/api/openapi.py), written as ``openapi.json`` at the site's
root, so docs/api.md renders exactly what a running daemon answers.
"""

from __future__ import annotations

import json

from mkdocs.structure.files import File, Files

from speakd.api.openapi import OPENAPI

SITE_PATH = "openapi.json"


def on_files(files: Files, config, **_) -> Files:
    files.append(File.generated(config, SITE_PATH, content=json.dumps(OPENAPI, indent=2)))
    return files
