"""Media channels made, connected and removed by many at once leave chan_websocket working.

chan_websocket looks an incoming media connection up without its table's lock; a media
channel made or destroyed meanwhile can leave the table locked for good (speakd.media.
channel_gate). Here 16 clients make, connect and remove media channels for 15 s through
speakd's own set-up code, in the gate its teardown holds (harness.media_channels): every step
must end within seconds, and Asterisk must still make a media channel at the end. Without the
gate's connect side this wedged the sandbox Asterisk in one run of three
(bench/chan_websocket_race.py: with no gate at all, within half a minute).
"""

from __future__ import annotations

import asyncio

import pytest
from harness.media_channels import STEP_TIMEOUT, make_connect_remove, run_clients, websocket_media

pytestmark = pytest.mark.asyncio(loop_scope="session")

CLIENTS = 16
SECONDS = 15.0


async def test_many_media_channels_made_connected_and_removed_at_once_leave_chan_websocket_working(ari_settings):
    async with websocket_media(ari_settings["url"], ari_settings["user"], ari_settings["password"]) as ctx:
        done = await run_clients(ctx, CLIENTS, SECONDS)
        await asyncio.wait_for(make_connect_remove(ctx), STEP_TIMEOUT)  # the table is usable
        print(f"{done} media channels made, connected and removed by {CLIENTS} clients in {SECONDS:g} s")
        assert done > CLIENTS * 10, f"only {done} media channels in {SECONDS:g} s"
        assert ctx.media.gate.holders == (None, 0)
        assert [c["id"] for c in await ctx.ari.get("channels") if c["id"].startswith(ctx.app)] == []
