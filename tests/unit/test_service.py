"""The service's lifecycle against a scripted fake ARI and a fake media path: races a real
Asterisk makes hard to provoke on purpose (a hangup during setup, two stops at once, events for
unknown objects, the media path closing on its own). The same behaviours are covered against
the real Asterisk in tests/integration."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import structlog
from harness.fakes import SinkTransport

from speakd.ari.errors import AriNotFound
from speakd.audio import AudioFormat
from speakd.config import TransportKind
from speakd.errors import Conflict, InvalidRequest, NotFound
from speakd.media.channel_gate import ChannelGate, Use
from speakd.media.transport import TransportError
from speakd.providers import ProviderRegistry
from speakd.providers.base import AudioChunk, Provider
from speakd.sessions import session as session_module
from speakd.sessions.requests import CreateRequest, SayRequest
from speakd.sessions.service import SpeakingService
from speakd.store.records import Owner, Speaking, now_stamp
from speakd.store.sqlite import SqliteStore

APP = "speakd-unit"


class SilentProvider(Provider):
    """One frame of silence per word of the text."""

    name = "piper"

    def check(self, language, voice_id, payload_type="text"):
        pass

    async def synthesize(self, request):
        for _ in request.text.split() or [""]:
            yield AudioChunk(b"\xff" * 160, AudioFormat("ulaw", 8000))
            await asyncio.sleep(0)


class FakeMedia:
    """A MediaPaths for the websocket transport whose far end is a local SinkTransport."""

    codec = "ulaw"
    kind = TransportKind.WEBSOCKET

    def __init__(self) -> None:
        self.transports: list[SinkTransport] = []
        self.opened_for: list[str] = []
        self.hold_open: asyncio.Event | None = None
        self.fail_open = False
        self.chosen = 0
        self.gate = ChannelGate()

    def changing(self):
        return self.gate.changing()

    def external_media_params(self) -> dict[str, str]:
        return {
            "transport": "websocket",
            "encapsulation": "none",
            "connection_type": "server",
            "external_host": "INCOMING",
            "format": self.codec,
        }

    async def open(self, channel: dict[str, Any], **log_context: str) -> SinkTransport:
        connection_id = (channel.get("channelvars") or {}).get("MEDIA_WEBSOCKET_CONNECTION_ID")
        if not connection_id:
            raise TransportError("Asterisk did not report the media WebSocket (MEDIA_WEBSOCKET_CONNECTION_ID)")
        async with self.gate.connecting():
            if self.hold_open is not None:
                await self.hold_open.wait()
            if self.fail_open:
                raise TransportError("could not open the media WebSocket: refused")
            sink = SinkTransport(speed=10)
            await sink.start()
        self.transports.append(sink)
        self.opened_for.append(log_context.get("speaking_id", ""))
        return sink

    async def choose(self) -> None:
        self.chosen += 1

    def health(self) -> dict[str, Any]:
        return {"media_transport": str(self.kind)}

    def unreleased(self) -> list[SinkTransport]:
        return [t for t in self.transports if not t.aclosed]


class FakeAri:
    """Answers like Asterisk for one call leg; emits the events Asterisk would."""

    def __init__(self) -> None:
        self.app = APP
        self.connected = asyncio.Event()
        self.connected.set()
        self.service: SpeakingService | None = None
        self.channels: dict[str, dict[str, Any]] = {"call-1": {"id": "call-1", "state": "Up"}}
        self.bridges: set[str] = set()
        self.calls: list[tuple[str, str]] = []
        self.hold_snoop: asyncio.Event | None = None
        self.snoop_gone = False  # the call leg vanishes just as the snoop is asked for
        self.gate: ChannelGate | None = None  # the media's: made or removed media channels hold it
        self.ungated: list[str] = []  # media channels made or removed without it

    def _event(self, event_type: str, channel_id: str) -> None:
        assert self.service is not None
        asyncio.get_running_loop().call_soon(
            lambda: asyncio.ensure_future(self.service.on_event({"type": event_type, "channel": {"id": channel_id}}))
        )

    async def get(self, path: str, **params: Any) -> Any:
        self.calls.append(("GET", path))
        if path.endswith("/variable"):
            raise AriNotFound(404, "Provided variable was not found")
        if path == "channels":
            return list(self.channels.values())
        if path == "bridges":
            return [{"id": b} for b in self.bridges]
        if path == "asterisk/ping":
            return {"ping": "pong"}
        kind, _, object_id = path.partition("/")
        if kind == "channels" and object_id in self.channels:
            return self.channels[object_id]
        raise AriNotFound(404, "Channel not found")

    async def post(self, path: str, **params: Any) -> Any:
        self.calls.append(("POST", path))
        if path.endswith("/snoop"):
            if path.split("/")[1] not in self.channels or self.snoop_gone:
                raise AriNotFound(404, "Channel not found")
            if self.hold_snoop is not None:
                try:
                    await self.hold_snoop.wait()
                except asyncio.CancelledError:
                    # A request already sent is carried out even if the client gives up on it.
                    asyncio.get_running_loop().call_later(0.02, self._create_late, params["snoopId"])
                    raise
            self.channels[params["snoopId"]] = {"id": params["snoopId"], "state": "Up"}
            self._event("StasisStart", params["snoopId"])
            return self.channels[params["snoopId"]]
        if path == "channels/externalMedia":
            self._check_gated(path)
            self.channels[params["channelId"]] = {"id": params["channelId"], "state": "Up"}
            self._event("StasisStart", params["channelId"])
            return {
                "id": params["channelId"],
                "channelvars": {"MEDIA_WEBSOCKET_CONNECTION_ID": f"conn-{params['channelId']}"},
            }
        if path == "bridges":
            self.bridges.add(params["bridgeId"])
        return None

    async def delete(self, path: str, **params: Any) -> Any:
        self.calls.append(("DELETE", path))
        kind, _, object_id = path.partition("/")
        if object_id.endswith("-media"):
            self._check_gated(path)
        if kind == "channels":
            if self.channels.pop(object_id, None) is None:
                raise AriNotFound(404, "Channel not found")
        elif kind == "bridges":
            if object_id not in self.bridges:
                raise AriNotFound(404, "Bridge not found")
            self.bridges.discard(object_id)
        return None

    def _check_gated(self, path: str) -> None:
        if self.gate is not None and self.gate.holders[0] is not Use.CHANGE:
            self.ungated.append(path)

    def _create_late(self, snoop_id: str) -> None:
        self.channels[snoop_id] = {"id": snoop_id, "state": "Up"}

    def hang_up_call(self) -> None:
        self.channels.pop("call-1", None)
        self._event("ChannelHangupRequest", "call-1")

    def leftovers(self) -> list[str]:
        return [i for i in [*self.channels, *self.bridges] if i.startswith(APP)]


@pytest.fixture
async def env():
    ari = FakeAri()
    async with SqliteStore(":memory:") as store:
        service = SpeakingService(
            store=store,
            ari=ari,  # type: ignore[arg-type]
            providers=ProviderRegistry({"piper": SilentProvider()}, {}),
            media=FakeMedia(),  # type: ignore[arg-type]
            owner_variable="SPEAKD_CUSTOMER_ID",
            lead_ms=300,
            mark_every_ms=100,
        )
        ari.service = service
        ari.gate = service.media.gate
        yield ari, service
        await asyncio.wait_for(service.shutdown(), 10)
        for sink in service.media.transports:
            assert sink.violations == []


def request(reference_id: str = "call-1") -> CreateRequest:
    return CreateRequest("call", reference_id, "en-US", "piper", "", "out")


async def until(check, timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.005)


async def test_setup_then_hangup_stops_and_removes_everything(env):
    ari, service = env
    record = await service.create("c1", request())
    assert record.status == "initiating"
    await until(lambda: record.status == "active")
    assert sorted(ari.leftovers()) == sorted(
        [f"{APP}-{record.id}-snoop", f"{APP}-{record.id}-media", f"{APP}-{record.id}-bridge"]
    )
    assert service.media.opened_for == [record.id]
    ari.hang_up_call()
    await until(lambda: record.status == "stopped")
    assert ari.leftovers() == []
    assert service.media.unreleased() == []  # the media transport is closed too
    assert (await service.store.get(record.id)).status == "stopped"  # written through


async def test_hangup_during_setup_still_leaves_nothing(env):
    ari, service = env
    ari.hold_snoop = asyncio.Event()
    record = await service.create("c1", request())
    await until(lambda: ("POST", "channels/call-1/snoop") in ari.calls)
    ari.hang_up_call()  # the call goes while the snoop request is still in flight
    await asyncio.sleep(0.05)
    ari.hold_snoop.set()  # ... and Asterisk then creates the snoop anyway
    await until(lambda: record.status == "stopped")
    await asyncio.sleep(0.05)
    assert ari.leftovers() == []
    assert service.media.unreleased() == []


async def test_concurrent_stops_tear_down_once(env):
    ari, service = env
    record = await service.create("c1", request())
    await until(lambda: record.status == "active")
    results = await asyncio.gather(service.stop("c1", record.id), service.stop("c1", record.id))
    assert [r.status for r in results] == ["stopped", "stopped"]
    assert sum(1 for call in ari.calls if call == ("DELETE", f"bridges/{APP}-{record.id}-bridge")) == 1
    assert ari.leftovers() == []
    assert len(service.media.transports) == 1 and service.media.unreleased() == []


async def test_media_channels_are_made_and_removed_only_while_no_media_path_connects(env):
    """speakd.media.channel_gate: four sessions stop while four others start."""
    ari, service = env
    for i in range(2, 9):
        ari.channels[f"call-{i}"] = {"id": f"call-{i}", "state": "Up"}
    first = [await service.create("c1", request(f"call-{i}")) for i in range(1, 5)]
    await until(lambda: all(r.status == "active" for r in first))
    started = await asyncio.gather(
        *(service.stop("c1", r.id) for r in first), *(service.create("c1", request(f"call-{i}")) for i in range(5, 9))
    )
    await until(lambda: all(r.status == "active" for r in started[4:]))
    made = [call for call in ari.calls if call == ("POST", "channels/externalMedia")]
    removed = [call for call in ari.calls if call[0] == "DELETE" and call[1].endswith("-media")]
    assert (len(made), len(removed), len(service.media.transports)) == (8, 4, 8)
    assert ari.ungated == []
    assert service.media.gate.holders == (None, 0)


async def test_conflict_and_reuse_after_stop(env):
    _ari, service = env
    first = await service.create("c1", request())
    with pytest.raises(Conflict, match=first.id):
        await service.create("c1", request())
    with pytest.raises(Conflict) as other_customer:
        await service.create("c2", request())
    assert first.id not in other_customer.value.message  # not told another customer's session id
    await service.stop("c1", first.id)
    second = await service.create("c1", request())
    assert second.id != first.id


async def test_a_call_live_on_another_node_is_a_conflict_found_by_the_store(env):
    _ari, service = env
    stamp = now_stamp()
    theirs = Speaking("s-other", "c2", "call", "call-1", "en-US", "piper", "", "out", "active", stamp, stamp)
    await service.store.insert(theirs, Owner("pbx-2", "run-2"), "call-1")  # this node's memory knows nothing of it
    with pytest.raises(Conflict, match="another speaking session is already active on call 'call-1'"):
        await service.create("c1", request())
    assert service.sessions.holder(("call", "call-1")) is None and service.live_count == 0  # nothing kept
    theirs.status = "stopped"
    await service.store.update(theirs)
    mine = await service.create("c1", request())
    assert mine.status == "initiating"


async def test_delete_stops_the_session_and_a_second_delete_keeps_its_tm_delete(env):
    ari, service = env
    record = await service.create("c1", request())
    await until(lambda: record.status == "active")
    deleted = await service.delete("c1", record.id)
    assert deleted.status == "stopped" and deleted.tm_delete != "9999-01-01 00:00:00.000000"
    assert ari.leftovers() == []
    again = await service.delete("c1", record.id)
    assert again.tm_delete == deleted.tm_delete  # what was said stays on record, as it was
    assert (await service.store.get(record.id)).tm_delete == deleted.tm_delete
    listed, _ = await service.list("c1", 10, None)
    assert record.id not in [r.id for r in listed]


async def test_unknown_call_and_foreign_session(env):
    _ari, service = env
    with pytest.raises(InvalidRequest, match="no-such"):
        await service.create("c1", request("no-such"))
    record = await service.create("c1", request())
    with pytest.raises(NotFound):
        await service.get("c2", record.id)


async def test_events_about_other_objects_are_ignored(env):
    _ari, service = env
    record = await service.create("c1", request())
    await until(lambda: record.status == "active")
    for event_type in ("ChannelHangupRequest", "StasisEnd", "ChannelDestroyed"):
        await service.on_event({"type": event_type, "channel": {"id": "somebody-else"}})
    await service.on_event({"type": "BridgeDestroyed", "bridge": {"id": "not-ours"}})
    await asyncio.sleep(0.05)
    assert record.status == "active"


# -- the media path -----------------------------------------------------------------------------


async def test_the_transport_closing_on_its_own_stops_the_session(env):
    ari, service = env
    record = await service.create("c1", request())
    await until(lambda: record.status == "active")
    (sink,) = service.media.transports
    with structlog.testing.capture_logs() as logs:
        sink.far_end_close("media WebSocket closed by Asterisk (code 1006)")
        await until(lambda: record.status == "stopped")
    stopped = [e for e in logs if e["event"] == "session_stopped"]
    assert [(e["reason"], e["detail"]) for e in stopped] == [
        ("error", "media WebSocket closed by Asterisk (code 1006)")
    ]
    assert ari.leftovers() == []
    assert sink.aclosed
    assert (await service.store.get(record.id)).status == "stopped"
    second = await service.create("c1", request())  # the call is free again
    await until(lambda: second.status == "active")


async def test_a_media_path_that_cannot_be_opened_fails_setup_and_leaves_nothing(env):
    ari, service = env
    service.media.fail_open = True
    record = await service.create("c1", request())
    await until(lambda: record.status == "stopped")
    assert ari.leftovers() == []  # the ExternalMedia channel made before the failure is gone too
    assert service.media.transports == []


async def test_a_call_gone_while_the_media_path_opens_releases_the_transport(env):
    ari, service = env
    service.media.hold_open = asyncio.Event()  # the media WebSocket takes a while to connect...
    ari.snoop_gone = True  # ... and the call went away just before the snoop
    record = await service.create("c1", request())
    await asyncio.sleep(0.2)
    service.media.hold_open.set()  # the WebSocket connects after all
    await until(lambda: record.status == "stopped")
    assert ari.leftovers() == []
    assert service.media.unreleased() == []


async def test_reconnect_chooses_the_transport_and_keeps_live_sessions(env):
    ari, service = env
    record = await service.create("c1", request())
    await until(lambda: record.status == "active")
    await service.on_ari_connected()
    assert service.media.chosen == 1
    assert record.status == "active"
    assert len(ari.leftovers()) == 3  # our own objects are not taken for orphans


# -- says ---------------------------------------------------------------------------------------


async def test_a_live_session_that_forgot_older_says_lists_them_from_the_store(env, monkeypatch):
    _ari, service = env
    monkeypatch.setattr(session_module, "KEPT_FINAL_SAYS", 2)
    record = await service.create("c1", request())
    await until(lambda: record.status == "active")
    ids = [(await service.say("c1", record.id, SayRequest(f"say {n}")))[1].say_id for n in range(5)]
    live = service.sessions.get(record.id).session
    await until(lambda: live.says_forgotten == 3)
    listed = await service.says("c1", record.id)
    assert [s["say_id"] for s in listed] == ids
    assert [s["status"] for s in listed] == ["played"] * 5
    assert [s["heard_text"] for s in listed] == [f"say {n}" for n in range(5)]


async def test_says_are_listed_newest_last_and_survive_in_the_store_after_stop(env):
    _ari, service = env
    record = await service.create("c1", request())
    texts = ["one", "two words", "three short words"]
    ids = []
    for text in texts:
        _, item = await service.say("c1", record.id, SayRequest(text))  # accepted while still initiating
        ids.append(item.say_id)
    listed = await service.says("c1", record.id)
    assert [s["say_id"] for s in listed] == ids
    await until(lambda: record.status == "active")
    async with asyncio.timeout(5):
        while [s["status"] for s in await service.says("c1", record.id)] != ["played"] * 3:
            await asyncio.sleep(0.01)
    _, long_one = await service.say("c1", record.id, SayRequest(" ".join(["word"] * 400)))  # 8 s: still playing at stop
    _, waiting = await service.say("c1", record.id, SayRequest("never heard"))
    await until(lambda: long_one.status == "playing")
    await asyncio.sleep(0.1)  # a second of it at 10x
    live = await service.says("c1", record.id)
    # No marks while stopping (see test_playout.py::test_aclose_does_not_hang_when_a_mark_wakes_the_feeder).
    service.media.transports[0].stall()
    await asyncio.sleep(0.01)
    await service.stop("c1", record.id)
    stored = await service.says("c1", record.id)  # read from the store now
    assert [s["say_id"] for s in stored] == [*ids, long_one.say_id, waiting.say_id]
    assert stored[:3] == live[:3]
    assert [s["status"] for s in stored] == ["played", "played", "played", "interrupted", "interrupted"]
    assert [s["heard_text"] for s in stored[:3]] == texts
    assert stored[4]["heard_chars"] == 0 and stored[4]["tm_play_start"] == "9999-01-01 00:00:00.000000"
    assert stored[3]["tm_play_start"] <= stored[3]["tm_play_end"] != "9999-01-01 00:00:00.000000"
    with pytest.raises(NotFound):
        await service.says("c2", record.id)  # another customer's session
    with pytest.raises(InvalidRequest):
        await service.say("c1", record.id, SayRequest("too late"))
