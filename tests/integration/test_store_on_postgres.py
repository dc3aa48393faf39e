"""speakd on PostgreSQL (``[store] url``) under a live call, and the server restarted mid-say:
requests that need a write are 503 naming the server while it is down, the say plays on and is
heard whole, its state is written once the server is back, and speakd takes writes again by
itself (no restart). The PostgreSQL server is the tests' own (tests/harness/postgres.py)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import asyncpg
import pytest
from harness.audio import render_piper
from harness.daemon import Api, SpeakdProcess
from harness.hearing import GREETING, LONG, assert_heard
from harness.postgres import ROLE_PASSWORD, postgres, postgres_server  # noqa: F401 (fixtures)

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _stored(url: str, sql: str) -> list[tuple]:
    """What the server has, read by a connection of the test's own (not speakd's memory)."""
    connection = await asyncpg.connect(url)
    try:
        return [tuple(row) for row in await connection.fetch(sql)]
    finally:
        await connection.close()


async def says(api: Api, speaking_id: str) -> list[dict]:
    return (await api.request("GET", f"/speakings/{speaking_id}/says")).body["result"]


@pytest.mark.by_ear
async def test_postgres_restarted_mid_say_is_503_meanwhile_and_the_say_is_heard_whole(
    ari_settings,
    tmp_path,
    make_two_party_call,
    postgres,  # noqa: F811 (the fixture)
):
    url = postgres.new_database()
    daemon = SpeakdProcess(
        tmp_path, ari_settings["url"], ari_settings["user"], ari_settings["password"], transport="websocket",
        store_url=url,
    )  # fmt: skip
    await daemon.start()
    api = Api(daemon.base)
    try:
        call, other_call = await make_two_party_call(), await make_two_party_call()
        speaking_id = await api.start_session(call.channel_id, direction="out")
        assert (await api.say(speaking_id, GREETING)).status == 200
        assert (await api.say(speaking_id, LONG)).status == 200
        await asyncio.sleep(1.0)  # the greeting is playing
        postgres.stop()

        refused = await api.say(speaking_id, "This one cannot be stored.")
        assert refused.status == 503, refused
        assert refused.body["error"]["reason"] == "unavailable"
        assert f"PostgreSQL at 127.0.0.1:{postgres.port} is unreachable" in refused.message, refused.message
        created = await api.create(other_call.channel_id, direction="out")
        assert (created.status, created.body["error"]["reason"]) == (503, "unavailable")
        async with aiohttp.ClientSession() as http, http.get(f"{daemon.base}/health") as answer:
            health = answer.status, await answer.json()
        assert health[0] == 503 and health[1]["failed"] == ["store"]
        assert "is unreachable" in health[1]["store_error"]

        # The greeting ends and the long say starts while the server is down: speakd tells
        # their states from memory, and keeps them to write.
        deadline = time.monotonic() + 10
        while [s["status"] for s in await says(api, speaking_id)] != ["played", "playing"]:
            assert time.monotonic() < deadline, await says(api, speaking_id)
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        postgres.start()  # back in the middle of the long say

        deadline = time.monotonic() + len(render_piper(LONG)) / 8000 + 15
        while await _stored(url, "SELECT status FROM says ORDER BY seq") != [("played",), ("played",)]:
            assert time.monotonic() < deadline, "the says' states were not written once the server was back"
            await asyncio.sleep(0.2)
        created = await api.create(other_call.channel_id, direction="out")
        assert created.status == 201, created
        assert (await api.stop(created.body["id"])).status == 200
        assert (await api.stop(speaking_id)).status == 200

        recording = await call.recording("alice")
        assert_heard(recording, render_piper(GREETING), "alice (the say that ended while the server was down)")
        assert_heard(recording, render_piper(LONG), "alice (the say the server restarted under)")
    finally:
        await api.close()
        await daemon.stop()
    log = daemon.log_text()
    assert "store_unwritable" in log and "store_writable_again" in log
    assert "Traceback" not in log and ROLE_PASSWORD not in log
    stored = dict(await _stored(url, "SELECT id, status FROM speakings"))
    assert stored == {speaking_id: "stopped", created.body["id"]: "stopped"}
