from __future__ import annotations

from types import SimpleNamespace

from speakd.api.app import PUBLIC_PATHS, create_app
from speakd.api.openapi import OPENAPI


def test_every_route_is_documented_with_its_methods():
    app = create_app(SimpleNamespace(providers=None), SimpleNamespace(), "piper")  # type: ignore[arg-type]
    documented = OPENAPI["paths"]
    for route in app.router.routes():
        path = route.resource.canonical
        if path in PUBLIC_PATHS or route.method == "HEAD":
            continue
        assert path in documented, f"{path} is served but not in the OpenAPI document"
        assert route.method.lower() in documented[path], f"{route.method} {path} is not documented"
