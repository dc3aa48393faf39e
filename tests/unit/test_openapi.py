from __future__ import annotations

from types import SimpleNamespace

from speakd.api.app import PUBLIC_PATHS, create_app
from speakd.api.openapi import OPENAPI


def test_every_route_is_documented_with_its_methods():
    app = create_app(SimpleNamespace(providers=None), SimpleNamespace(), "piper")  # type: ignore[arg-type]
    documented = OPENAPI["paths"]
    for route in app.router.routes():
        path = route.resource.canonical
        if path == "/v1.0/openapi.json" or route.method == "HEAD":
            continue
        assert path in documented, f"{path} is served but not in the OpenAPI document"
        operation = documented[path].get(route.method.lower())
        assert operation is not None, f"{route.method} {path} is not documented"
        # The document says which routes take no credentials: exactly the public ones.
        assert (operation.get("security") == []) == (path in PUBLIC_PATHS), path


def test_cookie_credential_and_error_envelope_are_documented():
    from speakd import errors
    from speakd.api.app import HTTP_REASONS
    from speakd.errors import INVALID_FIELD, INVALID_JSON

    schemes = OPENAPI["components"]["securitySchemes"]
    assert {"type": "apiKey", "in": "cookie", "name": "accesskey"} in schemes.values()
    assert {name for req in OPENAPI["security"] for name in req} == set(schemes)
    error = OPENAPI["components"]["schemas"]["Error"]["properties"]["error"]
    assert set(error["required"]) == {"status", "message", "reason", "request_id"}
    # Every reason speakd can answer is listed.
    reasons = {cls.reason for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, Exception)}
    reasons |= set(HTTP_REASONS.values()) | {INVALID_FIELD, INVALID_JSON}
    assert reasons <= set(error["properties"]["reason"]["examples"])
    say_429 = OPENAPI["paths"]["/v1.0/speakings/{id}/say"]["post"]["responses"]["429"]
    assert "Retry-After" in say_429["headers"]


def test_documented_fields_are_the_ones_served():
    from speakd.sessions.says import SayItem
    from speakd.store.records import FIELDS

    schemas = OPENAPI["components"]["schemas"]
    assert list(schemas["Speaking"]["properties"]) == list(FIELDS)
    assert list(schemas["Say"]["properties"]) == list(SayItem.SHOWN)


def test_documented_request_bodies_take_the_fields_parsed():
    from speakd.sessions.requests import CREATE_FIELDS, SAY_FIELDS

    def body(path: str) -> dict:
        return OPENAPI["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]

    assert list(body("/v1.0/speakings")["properties"]) == list(CREATE_FIELDS)
    assert list(body("/v1.0/speakings/{id}/say")["properties"]) == list(SAY_FIELDS)
