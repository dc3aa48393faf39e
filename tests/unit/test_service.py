"""The service's lifecycle against a scripted fake ARI: races a real Asterisk makes hard to
provoke on purpose (a hangup during setup, two stops at once, events for unknown objects).
The same behaviours are covered against the real Asterisk in tests/integration."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from speakd.ari.errors import AriNotFound
from speakd.errors import Conflict, InvalidRequest, NotFound
from speakd.media.pacer import Pacer
from speakd.providers import ProviderRegistry
from speakd.providers.base import AudioChunk, AudioFormat, Provider
from speakd.sessions.service import CreateRequest, SpeakingService
from speakd.store.sqlite import SqliteStore

APP = "speakd-unit"


class SilentProvider(Provider):
    name = "piper"

    def check(self, language, voice_id, payload_type="text"):
        pass

    async def synthesize(self, request):
        yield AudioChunk(b"\xff" * 160, AudioFormat("ulaw", 8000))


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
        kind, _, object_id = path.partition("/")
        if kind == "channels" and object_id in self.channels:
            return self.channels[object_id]
        raise AriNotFound(404, "Channel not found")

    async def post(self, path: str, **params: Any) -> Any:
        self.calls.append(("POST", path))
        if path.endswith("/snoop"):
            if path.split("/")[1] not in self.channels:
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
            self.channels[params["channelId"]] = {"id": params["channelId"], "state": "Up"}
            self._event("StasisStart", params["channelId"])
            return {
                "id": params["channelId"],
                "channelvars": {"UNICASTRTP_LOCAL_ADDRESS": "127.0.0.1", "UNICASTRTP_LOCAL_PORT": "40000"},
            }
        if path == "bridges":
            self.bridges.add(params["bridgeId"])
        return None

    async def delete(self, path: str, **params: Any) -> Any:
        self.calls.append(("DELETE", path))
        kind, _, object_id = path.partition("/")
        if kind == "channels":
            if self.channels.pop(object_id, None) is None:
                raise AriNotFound(404, "Channel not found")
        elif kind == "bridges":
            if object_id not in self.bridges:
                raise AriNotFound(404, "Bridge not found")
            self.bridges.discard(object_id)
        return None

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
            pacer=Pacer(lambda packet, addr: None),
            external_host="127.0.0.1:5000",
            codec="ulaw",
            owner_variable="SPEAKD_CUSTOMER_ID",
        )
        ari.service = service
        yield ari, service
        await service.shutdown()


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
    ari.hang_up_call()
    await until(lambda: record.status == "stopped")
    assert ari.leftovers() == []
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


async def test_concurrent_stops_tear_down_once(env):
    ari, service = env
    record = await service.create("c1", request())
    await until(lambda: record.status == "active")
    results = await asyncio.gather(service.stop("c1", record.id), service.stop("c1", record.id))
    assert [r.status for r in results] == ["stopped", "stopped"]
    assert sum(1 for call in ari.calls if call == ("DELETE", f"bridges/{APP}-{record.id}-bridge")) == 1
    assert ari.leftovers() == []


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
