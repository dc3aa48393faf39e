"""The error envelope and request ids, on the real aiohttp app with a stand-in service.

Every error answers ``{"error": {"status", "message", "reason", "request_id"}}``; every response,
error or not, carries ``X-Request-Id``; a 429 carries ``Retry-After``; log lines written while a
request runs carry its id.
"""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import pytest
import pytest_asyncio
import structlog
from aiohttp.test_utils import TestClient, TestServer

from speakd import errors
from speakd.api.app import create_app
from speakd.api.auth import Authenticator
from speakd.providers import ProviderRegistry

pytestmark = pytest.mark.asyncio(loop_scope="session")

KEY = "key-a"
CUSTOMER = "cust-a"
AUTH = {"accesskey": KEY}


class FakeService:
    """Answers like SpeakingService; `raises` makes the next verb fail with that error."""

    def __init__(self) -> None:
        self.raises: BaseException | None = None
        self.providers = ProviderRegistry({}, {"gcp": "provider 'gcp' is not configured on this speakd: add [gcp]"})

    def _maybe_raise(self) -> None:
        if self.raises is not None:
            exc, self.raises = self.raises, None
            raise exc

    async def health(self):
        return {"status": "ok", "failed": [], "live_sessions": 0, "media_transport": "websocket"}

    async def voices(self, provider: str, language: str):
        return await self.providers.voices(provider, language)

    async def get(self, customer_id: str, speaking_id: str):
        structlog.get_logger("test").info("fake_get", speaking_id=speaking_id)
        self._maybe_raise()
        return SimpleNamespace(to_dict=lambda: {"id": speaking_id, "customer_id": customer_id})

    async def here(self, customer_id: str, speaking_id: str):
        return await self.get(customer_id, speaking_id), None

    async def list(self, customer_id: str, page_size: int, page_token: str | None):
        self._maybe_raise()
        return [], ""

    async def say(self, customer_id: str, speaking_id: str, text: str, payload_type: str):
        self._maybe_raise()
        return SimpleNamespace(to_dict=lambda: {"id": speaking_id}), SimpleNamespace(say_id="s1")


@pytest_asyncio.fixture(loop_scope="session")
async def client():
    service = FakeService()
    app = create_app(service, Authenticator({KEY: CUSTOMER}, ""), "piper")  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as test_client:
        test_client.service = service  # type: ignore[attr-defined]
        yield test_client


async def error_of(resp, status: int, reason: str) -> dict:
    """The envelope of an error response, checked: its keys, status, reason and request id."""
    assert resp.status == status, await resp.text()
    body = await resp.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"status", "message", "reason", "request_id"}, error
    assert error["status"] == status and error["reason"] == reason, error
    assert error["message"], error
    uuid.UUID(error["request_id"])
    assert resp.headers["X-Request-Id"] == error["request_id"]
    return error


@pytest.mark.parametrize(
    ("exc", "status", "reason"),
    [
        (errors.InvalidRequest("speaking 'x' is stopped; create a new session to speak"), 400, "invalid_request"),
        (errors.UnsupportedLanguage("provider 'piper' does not speak 'ko-KR'"), 400, "unsupported_language"),
        (errors.ProviderNotConfigured("aws: region is missing"), 400, "provider_not_configured"),
        (errors.NotFound("speaking 'x' not found"), 404, "not_found"),
        (errors.Conflict("a session is already active on call 'c'; stop it first"), 409, "conflict"),
        (errors.TooManyRequests("100 says waiting"), 429, "queue_full"),
        (errors.ProviderError("elevenlabs: timed out"), 502, "provider_failed"),
        (errors.ServiceUnavailable("speakd is not connected to Asterisk"), 503, "unavailable"),
        (errors.SpeakdError("something of our own"), 500, "internal"),
        (errors.NotFound("finer", reason="say_not_found"), 404, "say_not_found"),
    ],
)
async def test_every_speakd_error_has_its_reason_and_request_id(client, exc, status, reason):
    client.service.raises = exc
    resp = await client.get("/v1.0/speakings/x", params=AUTH)
    error = await error_of(resp, status, reason)
    assert error["message"] == exc.message
    if status == 429:
        assert resp.headers["Retry-After"] == "5"
    else:
        assert "Retry-After" not in resp.headers


async def test_a_crash_is_a_500_that_leaks_nothing(client):
    client.service.raises = RuntimeError("secret internals")
    error = await error_of(await client.get("/v1.0/speakings/x", params=AUTH), 500, "internal")
    assert "secret" not in error["message"]


@pytest.mark.parametrize(
    ("data", "reason", "word"),
    [
        ("{not json", "invalid_json", "JSON"),
        ("[1, 2]", "invalid_json", "object"),
        ('{"text": ""}', "invalid_field", "empty"),
        ('{"text": 5}', "invalid_field", "string"),
        ('{"text": "hi", "colour": "red"}', "invalid_field", "colour"),
    ],
)
async def test_body_errors_say_json_or_field(client, data, reason, word):
    resp = await client.post("/v1.0/speakings/x/say", params=AUTH, data=data)
    assert word in (await error_of(resp, 400, reason))["message"]


async def test_create_field_errors(client):
    resp = await client.post("/v1.0/speakings", params=AUTH, json={"reference_type": "meeting", "reference_id": "c"})
    await error_of(resp, 400, "invalid_field")
    resp = await client.get("/v1.0/speakings", params={**AUTH, "page_size": "0"})
    await error_of(resp, 400, "invalid_field")


async def test_provider_not_configured_from_the_registry(client):
    resp = await client.get("/v1.0/voices", params={**AUTH, "provider": "gcp"})
    assert "[gcp]" in (await error_of(resp, 400, "provider_not_configured"))["message"]


async def test_unauthorized(client):
    await error_of(await client.get("/v1.0/speakings"), 401, "unauthorized")
    await error_of(await client.get("/v1.0/speakings", params={"accesskey": "nope"}), 401, "unauthorized")
    resp = await client.get("/v1.0/speakings", headers={"Cookie": "accesskey=nope"})
    assert "cookie" in (await error_of(resp, 401, "unauthorized"))["message"]


async def test_cookie_credential_is_accepted(client):
    resp = await client.get("/v1.0/speakings", headers={"Cookie": f"theme=dark; accesskey={KEY}"})
    assert resp.status == 200, await resp.text()


async def test_routing_errors(client):
    error = await error_of(await client.get("/v1.0/nothing-here", params=AUTH), 404, "no_such_endpoint")
    assert "no such endpoint" in error["message"]
    not_allowed = await client.put("/v1.0/speakings", params=AUTH)
    await error_of(not_allowed, 405, "method_not_allowed")
    assert set(not_allowed.headers["Allow"].split(",")) == {"GET", "HEAD", "POST"}
    too_big = b'{"text": "' + b"a" * (300 * 1024) + b'"}'
    await error_of(await client.post("/v1.0/speakings/x/say", params=AUTH, data=too_big), 413, "body_too_large")


async def test_every_response_has_a_request_id_and_each_its_own(client):
    seen = set()
    for method, path, params in [
        ("GET", "/v1.0/speakings", AUTH),
        ("GET", "/v1.0/speakings/x", AUTH),
        ("POST", "/v1.0/speakings/x/say", AUTH),
        ("GET", "/health", None),
        ("GET", "/v1.0/openapi.json", None),
        ("GET", "/v1.0/speakings", None),
    ]:
        kwargs = {"json": {"text": "hi"}} if method == "POST" else {}
        resp = await client.request(method, path, params=params, **kwargs)
        request_id = resp.headers.get("X-Request-Id")
        assert request_id, (method, path, resp.status)
        uuid.UUID(request_id)
        seen.add(request_id)
    assert len(seen) == 6


async def test_log_lines_carry_the_request_id(client):
    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        resp = await client.get("/v1.0/speakings/abc", params=AUTH)
        client.service.raises = errors.NotFound("speaking 'def' not found")
        failed = await client.get("/v1.0/speakings/def", params=AUTH)
    ok_id, failed_id = resp.headers["X-Request-Id"], failed.headers["X-Request-Id"]
    by_event = {(e["event"], e.get("speaking_id")): e for e in logs}
    assert by_event[("fake_get", "abc")]["request_id"] == ok_id
    assert by_event[("fake_get", "def")]["request_id"] == failed_id
    refused = by_event[("request_refused", None)]
    assert refused["request_id"] == failed_id and refused["reason"] == "not_found" and refused["status"] == 404
    # Nothing leaks into what runs after the request.
    assert "request_id" not in structlog.contextvars.get_contextvars()
