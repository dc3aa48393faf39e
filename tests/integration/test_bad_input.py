"""Inputs and configurations that once broke speakd, against a real daemon and the sandbox Asterisk:
deeply nested JSON, a good credential beside a bad one, language tags, a bad provider value.
(``speakd check-config``: tests/unit/test_config_check.py.)"""

from __future__ import annotations

import itertools
import time

import aiohttp
import jwt
import pytest
import pytest_asyncio
from harness.daemon import CUSTOMER_A, JWT_SECRET, KEY_A, KEY_B, Api, SpeakdProcess

pytestmark = pytest.mark.asyncio(loop_scope="session")

# aiohttp's body limit in speakd is 256 KiB: the deepest bodies that fit.
DEEP_ARRAY = b"[" * 100_000
DEEP_OBJECT = b'{"a":' * 50_000


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def daemon(ari_settings, tmp_path_factory):
    process = SpeakdProcess(
        tmp_path_factory.mktemp("speakd-bad-input"),
        ari_settings["url"],
        ari_settings["user"],
        ari_settings["password"],
        transport="websocket",
    )
    await process.start()
    yield process
    await process.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def client(daemon):
    api = Api(daemon.base)
    yield api
    await api.close()


def _is_error(reply, status: int, reason: str) -> None:
    assert reply.status == status, reply
    assert reply.body["error"]["reason"] == reason, reply
    assert reply.body["error"]["request_id"]


# -- deeply nested JSON ------------------------------------------------------------------------


@pytest.mark.parametrize("body", [DEEP_ARRAY, DEEP_OBJECT], ids=["array", "object"])
async def test_deeply_nested_json_is_a_400_on_every_json_endpoint(client, make_two_party_call, body):
    reply = await client.request("POST", "/speakings", data=body, headers={"Content-Type": "application/json"})
    _is_error(reply, 400, "invalid_json")
    assert "nested too deeply" in reply.message
    call = await make_two_party_call()
    speaking_id = await client.start_session(call.channel_id, direction="out")
    reply = await client.request(
        "POST", f"/speakings/{speaking_id}/say", data=body, headers={"Content-Type": "application/json"}
    )
    _is_error(reply, 400, "invalid_json")
    # The session is untouched and still takes a say.
    assert (await client.say(speaking_id, "Still here.")).status == 200
    assert (await client.stop(speaking_id)).status == 200


async def test_deeply_nested_json_on_the_event_websocket_is_refused_and_the_connection_stays(daemon):
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{daemon.base}/v1.0/ws?accesskey={KEY_A}") as ws:
        for deep in ("[" * 60_000, '{"a":' * 12_000):  # the WebSocket takes messages of 64 KiB at most
            await ws.send_str(deep)
            answer = await ws.receive_json(timeout=10)
            assert answer["type"] == "error" and "nested too deeply" in answer["message"]
        topic = f"customer_id:{CUSTOMER_A}:speaking:*"
        await ws.send_json({"type": "subscribe", "topics": [topic]})
        assert await ws.receive_json(timeout=10) == {"type": "subscribed", "topics": [topic]}


# -- a good credential beside a bad one ---------------------------------------------------------


def _token(customer_id: str = CUSTOMER_A) -> str:
    return jwt.encode({"exp": int(time.time()) + 3600, "customer_id": customer_id}, JWT_SECRET, algorithm="HS256")


def _credential(way: str, value: str, params: list, headers: list) -> None:
    if way == "accesskey":
        params.append(("accesskey", value))
    elif way == "token":
        params.append(("token", value))
    elif way == "bearer":
        headers.append(("Authorization", f"Bearer {value}"))
    else:
        headers.append(("Cookie", f"accesskey={value}"))


WAYS = ("accesskey", "cookie", "token", "bearer")
GOOD = {"accesskey": KEY_A, "cookie": KEY_A, "token": "<token>", "bearer": "<token>"}
BAD = {"accesskey": "not-a-key", "cookie": "not-a-key", "token": "<token>x", "bearer": "<token>x"}
# A credential sent empty is checked too (a client meant to send something).
EMPTY = dict.fromkeys(WAYS, "")


async def _list_with(daemon, credentials: list[tuple[str, str]], path: str = "/v1.0/speakings") -> int:
    params: list = []
    headers: list = []
    token = _token()
    for way, value in credentials:
        _credential(way, value.replace("<token>", token), params, headers)
    async with (
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http,
        http.get(f"{daemon.base}{path}", params=params, headers=headers) as resp,
    ):
        return resp.status


async def test_every_way_alone_is_accepted(daemon):
    for way in WAYS:
        assert await _list_with(daemon, [(way, GOOD[way])]) == 200, way


@pytest.mark.parametrize(("good", "bad"), list(itertools.product(WAYS, WAYS)))
async def test_a_good_credential_beside_a_bad_or_empty_one_is_401(daemon, good, bad):
    for wrong in (BAD[bad], EMPTY[bad]):
        assert await _list_with(daemon, [(good, GOOD[good]), (bad, wrong)]) == 401, wrong
        assert await _list_with(daemon, [(bad, wrong), (good, GOOD[good])]) == 401, wrong


async def test_the_event_websocket_refuses_a_good_credential_beside_a_bad_one(daemon):
    assert await _list_with(daemon, [("bearer", "<token>"), ("token", "<token>x")], path="/v1.0/ws") == 401


async def test_good_credentials_of_two_customers_are_401(daemon):
    assert await _list_with(daemon, [("accesskey", KEY_A), ("cookie", KEY_B)]) == 401


# -- language tags: one parser, one answer ------------------------------------------------------


@pytest.mark.parametrize(
    ("tag", "says"),
    [("en_us", "send 'en-US'"), ("en-US-x-twain", "no provider speaks"), ("english!", "BCP47")],
)
async def test_a_tag_is_refused_alike_on_create_and_on_voices(client, tag, says):
    created = await client.create("no-such-call", language=tag)
    listed = await client.request("GET", "/voices", params={"language": tag})
    for reply in (created, listed):
        _is_error(reply, 400, "invalid_field")
        assert says in reply.message
    assert created.message == listed.message


async def test_tags_are_canonicalised_alike_on_create_and_on_voices(client, make_two_party_call):
    # Piper (Joe) speaks en-US: any spelling of it is accepted and stored canonical ...
    assert (await client.request("GET", "/voices", params={"language": "EN-us"})).body["result"]
    call = await make_two_party_call()
    speaking_id = await client.start_session(call.channel_id, language="EN-us", direction="out")
    assert (await client.get(speaking_id)).body["language"] == "en-US"
    await client.stop(speaking_id)
    # ... and zh-yue is Cantonese (yue), which it does not speak: no voices, and a create says so.
    assert (await client.request("GET", "/voices", params={"language": "zh-yue"})).body["result"] == []
    _is_error(await client.create(call.channel_id, language="zh-yue"), 400, "unsupported_language")


# -- a bad provider value ------------------------------------------------------------------------


async def test_a_bad_piper_value_disables_piper_with_what_to_fix_not_the_daemon(ari_settings, tmp_path):
    process = SpeakdProcess(
        tmp_path, ari_settings["url"], ari_settings["user"], ari_settings["password"], extra_config='threads = "x"'
    )
    await process.start()  # up and serving
    try:
        api = Api(process.base)
        try:
            reply = await api.create("no-such-call")
        finally:
            await api.close()
        _is_error(reply, 400, "provider_not_configured")
        assert "piper: 'threads' must be an integer, not 'x'" in reply.message
    finally:
        await process.stop()
    assert "provider_unavailable" in process.log_text()
    assert "Traceback" not in process.log_text()
