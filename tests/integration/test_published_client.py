"""A published client of the platform, as a new user would run it, against speakd and the sandbox.

`voipbin-mcp` (PyPI, pinned in the test extra) is an open-source client of the platform whose
Speaking API speakd serves. Its `VoIPbinClient` reads `VOIPBIN_API_BASE_URL` (the API root,
/v1.0 included: its default is https://api.voipbin.net/v1.0 and it appends paths such as
/speakings) and `VOIPBIN_API_KEY`, and by default sends the key as a cookie,
`Cookie: accesskey=<key>`. Errors surface as `VoIPbinAPIError` with `reason`, `request_id` and,
on a 429, `retry_after`, read from `{"error": {"status", "message", "reason", "request_id"}}`.

Nothing here configures the client beyond those two variables. The client needs no particular
media transport, so it runs against one daemon of its own (the default `auto` transport).
"""

from __future__ import annotations

import uuid

import pytest
import pytest_asyncio
from conftest_helpers import wait_for
from harness.daemon import CUSTOMER_A, KEY_A, SpeakdProcess
from voipbin_mcp.client import VoIPbinAPIError, VoIPbinClient

pytestmark = pytest.mark.asyncio(loop_scope="session")

NOT_YET = "9999-01-01 00:00:00.000000"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def daemon(ari_settings, tmp_path_factory):
    process = SpeakdProcess(
        tmp_path_factory.mktemp("speakd-published-client"),
        ari_settings["url"],
        ari_settings["user"],
        ari_settings["password"],
    )
    await process.start()
    yield process
    await process.stop()


def make_client(monkeypatch, daemon: SpeakdProcess, key: str = KEY_A) -> VoIPbinClient:
    """The client exactly as its README sets it up: base URL and key from the environment."""
    monkeypatch.setenv("VOIPBIN_API_BASE_URL", f"{daemon.base}/v1.0")
    monkeypatch.setenv("VOIPBIN_API_KEY", key)
    monkeypatch.delenv("VOIPBIN_AUTH_TRANSPORT", raising=False)  # its default: the key as a cookie
    return VoIPbinClient()


@pytest_asyncio.fixture(loop_scope="session")
async def client(monkeypatch, daemon):
    voipbin = make_client(monkeypatch, daemon)
    assert voipbin.auth_transport == "cookie"
    yield voipbin
    await voipbin.close()


async def api_error(call) -> VoIPbinAPIError:
    """The client's error for a request that must fail, with the envelope's fields filled in."""
    with pytest.raises(VoIPbinAPIError) as caught:
        await call
    error = caught.value
    assert error.reason, f"no reason in {error.message!r}"
    assert error.request_id, f"no request_id in {error.message!r}"
    uuid.UUID(error.request_id)
    # The client renders both into its message: "VoIPbin API error 404 (not_found): ... [request_id: ...]".
    assert f"({error.reason})" in error.message and f"[request_id: {error.request_id}]" in error.message
    return error


async def says_of(client: VoIPbinClient, speaking_id: str) -> list[dict]:
    return (await client.get(f"/speakings/{speaking_id}/says"))["result"]


async def test_create_say_get_list_flush_stop_delete(client, two_party_call):
    created = await client.post(
        "/speakings",
        json={
            "reference_type": "call",
            "reference_id": two_party_call.channel_id,
            "language": "en-US",
            "direction": "out",
        },
    )
    speaking_id = created["id"]
    assert created["status"] == "initiating" and created["customer_id"] == CUSTOMER_A
    assert created["reference_id"] == two_party_call.channel_id

    async def status() -> str:
        return (await client.get(f"/speakings/{speaking_id}"))["status"]

    await wait_for(lambda: _equals(status(), "active"), what="the session to become active")

    text = "Hello from a published client. This sentence is long enough to be cut off by a flush."
    said = await client.post(f"/speakings/{speaking_id}/say", json={"text": text})
    assert said["id"] == speaking_id and said["say_id"]
    # It really plays in the call: speakd's played positions come from Asterisk.
    playing = await wait_for(
        lambda: _first(says_of(client, speaking_id), lambda s: s["status"] == "playing"),
        what="the say to play",
    )
    assert playing["say_id"] == said["say_id"]

    got = await client.get(f"/speakings/{speaking_id}")
    assert got["status"] == "active" and got["direction"] == "out"

    listed = await client.get("/speakings", params={"page_size": 10})
    assert speaking_id in [r["id"] for r in listed["result"]]
    assert "next_page_token" in listed

    flushed = await client.post(f"/speakings/{speaking_id}/flush")
    assert flushed["status"] == "active"
    cut = await wait_for(
        lambda: _first(says_of(client, speaking_id), lambda s: s["status"] == "interrupted"),
        what="the flushed say to read interrupted",
    )
    assert cut["say_id"] == said["say_id"] and cut["played_ms"] > 0 and cut["heard_chars"] < len(text)

    stopped = await client.post(f"/speakings/{speaking_id}/stop")
    assert stopped["status"] == "stopped"

    deleted = await client.delete(f"/speakings/{speaking_id}")
    assert deleted["tm_delete"] != NOT_YET
    listed = await client.get("/speakings", params={"page_size": 100})
    assert speaking_id not in [r["id"] for r in listed["result"]]


async def test_errors_reach_the_client_with_reason_and_request_id(client, daemon, two_party_call):
    # 400: a field speakd does not know (a typo is refused, not ignored).
    bad = await api_error(
        client.post(
            "/speakings", json={"reference_type": "call", "reference_id": two_party_call.channel_id, "colour": "red"}
        )
    )
    assert bad.status_code == 400 and bad.reason == "invalid_field" and "colour" in bad.message

    # 404: no such session.
    unknown = str(uuid.uuid4())
    missing = await api_error(client.get(f"/speakings/{unknown}"))
    assert missing.status_code == 404 and missing.reason == "not_found" and unknown in missing.message

    # 409: a second session on a call that already has one.
    first = await client.post("/speakings", json={"reference_type": "call", "reference_id": two_party_call.channel_id})
    try:
        clash = await api_error(
            client.post("/speakings", json={"reference_type": "call", "reference_id": two_party_call.channel_id})
        )
        assert clash.status_code == 409 and clash.reason == "conflict" and first["id"] in clash.message
    finally:
        await client.post(f"/speakings/{first['id']}/stop")

    # Each request had its own id, and the daemon logged each refusal under it.
    assert len({bad.request_id, missing.request_id, clash.request_id}) == 3
    log = daemon.log_text()
    for error in (bad, missing, clash):
        assert f'"request_id": "{error.request_id}"' in log and f'"reason": "{error.reason}"' in log


async def test_a_full_queue_gives_the_client_retry_after(client, two_party_call):
    created = await client.post(
        "/speakings", json={"reference_type": "call", "reference_id": two_party_call.channel_id}
    )
    speaking_id = created["id"]
    try:
        refused = None
        for i in range(140):
            try:
                await client.post(f"/speakings/{speaking_id}/say", json={"text": f"Item number {i} of a long list."})
            except VoIPbinAPIError as exc:
                refused = exc
                break
        assert refused is not None, "a session must not queue without bound"
        assert refused.status_code == 429 and refused.reason == "queue_full" and refused.retry_after == "5"
        assert "Retry after 5 seconds." in refused.message
        await client.post(f"/speakings/{speaking_id}/flush")
    finally:
        await client.post(f"/speakings/{speaking_id}/stop")


async def test_a_wrong_key_is_refused_with_a_reason(monkeypatch, daemon):
    wrong = make_client(monkeypatch, daemon, key="not-a-key")
    try:
        error = await api_error(wrong.get("/speakings"))
        assert error.status_code == 401 and error.reason == "unauthorized" and "cookie" in error.message
    finally:
        await wrong.close()


async def _equals(awaitable, expected) -> bool:
    return (await awaitable) == expected


async def _first(awaitable, predicate):
    return next((item for item in await awaitable if predicate(item)), None)
