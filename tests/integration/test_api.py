"""The Speaking API over HTTP against the real daemon and Asterisk: fields, verbs, every error."""

from __future__ import annotations

import re
import time
import uuid

import jwt
import pytest
from harness.daemon import CUSTOMER_A, CUSTOMER_B, JWT_SECRET, KEY_A, KEY_B

pytestmark = pytest.mark.asyncio(loop_scope="session")

STAMP = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{6}$")
FIELDS = {
    "id",
    "customer_id",
    "reference_type",
    "reference_id",
    "language",
    "provider",
    "voice_id",
    "direction",
    "status",
    "tm_create",
    "tm_update",
    "tm_delete",
}


def token(customer_id: str | None = CUSTOMER_A, exp_in: float = 300, secret: str = JWT_SECRET) -> str:
    claims: dict = {"exp": int(time.time() + exp_in)}
    if customer_id is not None:
        claims["customer_id"] = customer_id
    return jwt.encode(claims, secret, algorithm="HS256")


def assert_error(reply, status: int, *words: str) -> None:
    assert reply.status == status, reply
    assert isinstance(reply.body, dict) and set(reply.body) == {"error"}, reply.body
    assert set(reply.body["error"]) == {"status", "message", "reason", "request_id"}, reply.body
    assert reply.body["error"]["status"] == status and reply.body["error"]["reason"], reply.body
    uuid.UUID(reply.body["error"]["request_id"])
    message = reply.message.lower()
    for word in words:
        assert word.lower() in message, f"{word!r} not in {reply.message!r}"


async def test_create_get_stop_delete_lifecycle(api, two_party_call):
    created = await api.create(two_party_call.channel_id, direction="out")
    assert created.status == 201, created
    body = created.body
    assert set(body) == FIELDS
    assert body["status"] == "initiating"
    assert body["customer_id"] == CUSTOMER_A
    assert body["reference_type"] == "call" and body["reference_id"] == two_party_call.channel_id
    assert body["provider"] == "piper"  # the configured default
    assert body["voice_id"] == "" and body["direction"] == "out" and body["language"] == "en-US"
    assert STAMP.match(body["tm_create"]) and body["tm_update"] == body["tm_create"]
    assert body["tm_delete"] == "9999-01-01 00:00:00.000000"
    uuid.UUID(body["id"])

    active = await api.wait_status(body["id"], "active")
    assert active["tm_update"] > active["tm_create"]

    stopped = await api.stop(body["id"])
    assert stopped.status == 200 and stopped.body["status"] == "stopped"
    again = await api.stop(body["id"])  # idempotent
    assert again.status == 200 and again.body["status"] == "stopped"

    deleted = await api.delete(body["id"])
    assert deleted.status == 200
    assert STAMP.match(deleted.body["tm_delete"]) and deleted.body["tm_delete"] != "9999-01-01 00:00:00.000000"
    fetched = await api.get(body["id"])
    assert fetched.status == 200 and fetched.body["tm_delete"] == deleted.body["tm_delete"]
    listed = await api.request("GET", "/speakings", params={"page_size": "100"})
    assert body["id"] not in [r["id"] for r in listed.body["result"]]


async def test_delete_stops_an_active_session_first(api, two_party_call, ari, speakd):
    speaking_id = await api.start_session(two_party_call.channel_id)
    deleted = await api.delete(speaking_id)
    assert deleted.status == 200 and deleted.body["status"] == "stopped"
    assert deleted.body["tm_delete"] != "9999-01-01 00:00:00.000000"
    channels = [c["id"] for c in await ari.get("/channels")]
    assert not [c for c in channels if c.startswith(f"{speakd.app}-{speaking_id}")]


async def test_say_while_initiating_is_queued_and_accepted(api, two_party_call):
    created = await api.create(two_party_call.channel_id)
    said = await api.say(created.body["id"], "Queued before the session was active.")
    assert said.status == 200, said
    await api.wait_status(created.body["id"], "active")
    await api.stop(created.body["id"])


async def test_list_paginates_newest_first_and_is_per_customer(api, make_two_party_call):
    ids = []
    for _ in range(3):
        call = await make_two_party_call()
        speaking_id = await api.start_session(call.channel_id)
        ids.append(speaking_id)
        await api.stop(speaking_id)
    seen: list[str] = []
    token_ = ""  # an empty page_token is the first page (schemathesis once found the document refusing it)
    for _ in range(10):
        page = await api.request("GET", "/speakings", params={"page_size": "2", "page_token": token_})
        assert page.status == 200 and set(page.body) == {"result", "next_page_token"}
        assert len(page.body["result"]) <= 2
        seen += [r["id"] for r in page.body["result"]]
        token_ = page.body["next_page_token"]
        if not token_:
            break
    assert seen[:3] == ids[::-1]  # newest first, no duplicates across pages
    assert len(seen) == len(set(seen))
    other = await api.as_customer(KEY_B).request("GET", "/speakings", params={"page_size": "100"})
    assert not set(ids) & {r["id"] for r in other.body["result"]}


async def test_openapi_document_is_served(api):
    reply = await api.as_customer(None).request("GET", "/openapi.json")
    assert reply.status == 200
    assert reply.body["openapi"].startswith("3.")
    assert {"/v1.0/speakings", "/v1.0/speakings/{id}/say", "/v1.0/speakings/{id}/flush", "/v1.0/voices"} <= set(
        reply.body["paths"]
    )


# -- 400 -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ("{not json", ["not valid json"]),
        ("[1, 2]", ["json object"]),
        ({"reference_id": "x"}, ["reference_type", "required"]),
        ({"reference_type": "call"}, ["reference_id", "required"]),
        ({"reference_type": "call", "reference_id": ""}, ["reference_id", "empty"]),
        ({"reference_type": "meeting", "reference_id": "x"}, ["reference_type", "call", "confbridge"]),
        ({"reference_type": "call", "reference_id": "x", "provider": "acme"}, ["provider", "elevenlabs"]),
        ({"reference_type": "call", "reference_id": "x", "direction": "sideways"}, ["direction", "in", "out"]),
        ({"reference_type": "call", "reference_id": "x", "language": "english!"}, ["language", "bcp47"]),
        ({"reference_type": "call", "reference_id": "x", "language": 42}, ["language", "string"]),
        ({"reference_type": "call", "reference_id": "x", "colour": "red"}, ["unknown field", "colour"]),
        ({"reference_type": "call", "reference_id": "x", "language": "ko-KR"}, ["piper", "ko-KR"]),
        ({"reference_type": "call", "reference_id": "x", "provider": "gcp"}, ["gcp", "not configured"]),
        ({"reference_type": "call", "reference_id": "no-such-channel-here"}, ["no-such-channel-here", "not"]),
    ],
)
async def test_create_rejects_bad_input_with_a_clear_message(api, body, words):
    if isinstance(body, str):
        reply = await api.request("POST", "/speakings", data=body, headers={"Content-Type": "application/json"})
    else:
        reply = await api.request("POST", "/speakings", json=body)
    assert_error(reply, 400, *words)


async def test_say_text_rules(api, two_party_call):
    speaking_id = await api.start_session(two_party_call.channel_id)
    assert_error(await api.say(speaking_id, ""), 400, "text", "empty")
    assert_error(await api.say(speaking_id, "   "), 400, "text", "empty")
    assert_error(await api.request("POST", f"/speakings/{speaking_id}/say", json={}), 400, "text", "required")
    assert_error(await api.request("POST", f"/speakings/{speaking_id}/say", json={"text": 5}), 400, "text", "string")
    assert_error(await api.say(speaking_id, "a" * 5001), 400, "5000")
    assert_error(await api.say(speaking_id, "hi", payload_type="ssml"), 400, "piper", "ssml")
    # 5000 characters, not bytes: four-byte characters are still one character each.
    assert (await api.say(speaking_id, "é" * 2500 + "😀" * 2500)).status == 200
    await api.flush(speaking_id)
    await api.stop(speaking_id)
    assert_error(await api.say(speaking_id, "too late"), 400, "stopped")
    assert_error(await api.flush(speaking_id), 400, "stopped")


@pytest.mark.parametrize(
    ("params", "word"),
    [({"page_size": "0"}, "page_size"), ({"page_size": "x"}, "page_size"), ({"page_token": "yesterday"}, "page_token")],
)
async def test_list_rejects_bad_paging(api, params, word):
    assert_error(await api.request("GET", "/speakings", params=params), 400, word)


# -- 401 -----------------------------------------------------------------------------------


async def test_credentials(api):
    anonymous = api.as_customer(None)
    assert_error(await anonymous.request("GET", "/speakings"), 401, "accesskey")
    assert_error(await api.as_customer("wrong-key").request("GET", "/speakings"), 401, "accesskey")
    assert_error(await anonymous.request("GET", "/speakings", params={"token": "garbage"}), 401, "token")
    assert_error(await anonymous.request("GET", "/speakings", params={"token": token(exp_in=-60)}), 401, "expired")
    assert_error(await anonymous.request("GET", "/speakings", params={"token": token(None)}), 401, "customer_id")
    assert_error(
        await anonymous.request(
            "GET", "/speakings", params={"token": token(secret="another-secret-0123456789abcdef-xyz")}
        ),
        401,
        "token",
    )
    assert (await anonymous.request("GET", "/speakings", params={"token": token()})).status == 200
    bearer = await anonymous.request("GET", "/speakings", headers={"Authorization": f"Bearer {token()}"})
    assert bearer.status == 200
    assert_error(await anonymous.request("GET", "/speakings", headers={"Authorization": "Basic eDp5"}), 401, "bearer")
    assert_error(await anonymous.request("POST", "/speakings", json={}), 401)


async def test_accesskey_cookie_and_mixed_credentials(api):
    anonymous = api.as_customer(None)
    cookie = await anonymous.request("GET", "/speakings", headers={"Cookie": f"accesskey={KEY_A}"})
    assert cookie.status == 200, cookie
    assert_error(await anonymous.request("GET", "/speakings", headers={"Cookie": "accesskey=wrong"}), 401, "cookie")
    # A good credential does not excuse a bad one beside it, whichever is which.
    assert_error(await api.request("GET", "/speakings", headers={"Cookie": "accesskey=wrong"}), 401, "cookie")
    assert_error(
        await api.as_customer("wrong").request("GET", "/speakings", headers={"Cookie": f"accesskey={KEY_A}"}), 401
    )
    mixed = {"accesskey": KEY_A, "token": "garbage"}
    assert_error(await api.request("GET", "/speakings", params=mixed), 401, "token")
    # Two good credentials of two customers say nothing certain about who is asking.
    assert_error(await api.request("GET", "/speakings", headers={"Cookie": f"accesskey={KEY_B}"}), 401, "different")
    both = await api.request("GET", "/speakings", params={"token": token()}, headers={"Cookie": f"accesskey={KEY_A}"})
    assert both.status == 200, both


# -- 404 -----------------------------------------------------------------------------------


async def test_unknown_and_foreign_sessions_are_404(api, two_party_call):
    unknown = str(uuid.uuid4())
    for reply in (
        await api.get(unknown),
        await api.say(unknown, "hi"),
        await api.flush(unknown),
        await api.stop(unknown),
        await api.delete(unknown),
    ):
        assert_error(reply, 404, unknown)
    speaking_id = await api.start_session(two_party_call.channel_id)
    other = api.as_customer(KEY_B)
    for reply in (
        await other.get(speaking_id),
        await other.say(speaking_id, "hi"),
        await other.flush(speaking_id),
        await other.stop(speaking_id),
        await other.delete(speaking_id),
    ):
        assert_error(reply, 404)
    # The owner still has it, untouched.
    assert (await api.get(speaking_id)).body["status"] == "active"
    # A JWT for customer B sees the same as B's access key.
    assert_error(
        await api.as_customer(None).request("GET", f"/speakings/{speaking_id}", params={"token": token(CUSTOMER_B)}),
        404,
    )
    await api.stop(speaking_id)


async def test_call_owned_by_another_customer_is_404(api, make_two_party_call):
    call = await make_two_party_call(variables={"SPEAKD_CUSTOMER_ID": CUSTOMER_B})
    assert_error(await api.create(call.channel_id), 404)
    created = await api.as_customer(KEY_B).create(call.channel_id)
    assert created.status == 201, created
    await api.as_customer(KEY_B).stop(created.body["id"])


async def test_unknown_endpoint_is_json(api):
    reply = await api.request("GET", "/nothing-here")
    assert_error(reply, 404, "no such endpoint")
    reply = await api.request("PUT", "/speakings")
    assert_error(reply, 405)


# -- 409 -----------------------------------------------------------------------------------


async def test_second_session_on_the_same_call_conflicts(api, two_party_call):
    first = await api.start_session(two_party_call.channel_id)
    second = await api.create(two_party_call.channel_id)
    assert_error(second, 409, first, "stop it first")
    await api.stop(first)
    third = await api.create(two_party_call.channel_id)  # free again once stopped
    assert third.status == 201
    await api.stop(third.body["id"])


async def test_call_not_answered_conflicts(api, ari, harness_app):
    channel_id = f"unanswered-{uuid.uuid4().hex[:8]}"
    await ari.post("/channels/create", endpoint="Local/alice@speakd-test/n", app=harness_app.name, channelId=channel_id)
    try:
        assert (await ari.get(f"/channels/{channel_id}"))["state"] != "Up"
        assert_error(await api.create(channel_id), 409, "not answered")
    finally:
        await ari.delete_quietly(f"/channels/{channel_id}")


async def test_nothing_is_written_for_a_rejected_create(api):
    # Compared by id, newest first: a record written for the refused create would be the
    # newest, so it would head the page even when the page is full.
    channel_id = f"no-such-channel-{uuid.uuid4().hex[:8]}"
    before = await api.request("GET", "/speakings", params={"page_size": "100"})
    assert_error(await api.create(channel_id), 400, channel_id)
    after = await api.request("GET", "/speakings", params={"page_size": "100"})
    assert [r["id"] for r in after.body["result"]] == [r["id"] for r in before.body["result"]]
    assert not [r for r in after.body["result"] if r["reference_id"] == channel_id]


async def test_session_record_is_written_before_the_answer(api, two_party_call, speakd):
    import sqlite3

    created = await api.create(two_party_call.channel_id)
    db = sqlite3.connect(speakd.workdir / "speakd.sqlite3")
    row = db.execute("SELECT status FROM speakings WHERE id = ?", (created.body["id"],)).fetchone()
    db.close()
    assert row is not None
    await api.wait_status(created.body["id"], "active")
    await api.stop(created.body["id"])


async def test_the_say_queue_is_bounded_and_flush_empties_it(api, two_party_call):
    speaking_id = await api.start_session(two_party_call.channel_id)
    replies = [await api.say(speaking_id, f"Item number {i} of a long list.") for i in range(140)]
    refused = [r for r in replies if r.status == 429]
    assert refused, "a session must not queue without bound"
    assert all(r.status in (200, 429) for r in replies)
    assert_error(refused[0], 429, "flush")
    assert (await api.flush(speaking_id)).status == 200
    assert (await api.say(speaking_id, "Room again after the flush.")).status == 200
    await api.stop(speaking_id)


@pytest.mark.both_transports
async def test_health_reports_sessions_and_pacing(api, speakd, two_party_call):
    anonymous = api.as_customer(None)
    speaking_id = await api.start_session(two_party_call.channel_id)
    async with anonymous._http.get(f"{api.base}/health") as resp:
        body = await resp.json()
    assert resp.status == 200
    assert body["ari_connected"] is True and body["live_sessions"] >= 1
    assert body["media_transport"] == speakd.transport
    if speakd.transport == "rtp":
        assert {"pacer_realtime", "pacer_max_late_ms", "pacer_stalls"} <= set(body)
    await api.stop(speaking_id)
