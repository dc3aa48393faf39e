"""The service's side of nodes that die (against test_service.py's fake ARI and media path): a
session that another node ended while it found this run lost is stopped here, its Asterisk
objects removed, without writing its rows or publishing its events (that node did); and the
events this node publishes for a lost run's session it ended: its interrupted says, then its
``speaking_stopped`` with reason ``node_lost``, with no source (its Asterisk is the lost node's)."""

from __future__ import annotations

import asyncio

import pytest
from test_service import FakeAri, FakeMedia, SilentProvider, request, until

from speakd.errors import InvalidRequest
from speakd.events import Event, EventBus
from speakd.providers import ProviderRegistry
from speakd.sessions.requests import SayRequest
from speakd.sessions.service import SpeakingService
from speakd.store.records import Owner
from speakd.store.sqlite import SqliteStore

OWNER = Owner("pbx-a", "run-a1")
ENDED = "2026-03-01 12:00:09.000000"


class Published:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def offer(self, event: Event) -> None:
        self.events.append(event)

    def kinds(self) -> list[tuple[str, str]]:
        return [(str(e.event_type), e.data.get("reason", "")) for e in self.events]


@pytest.fixture
async def fenced_env(tmp_path):
    ari = FakeAri()
    published = Published()
    bus = EventBus()
    bus.add_sink(published)
    async with SqliteStore(str(tmp_path / "s.sqlite3")) as store:
        service = SpeakingService(
            store=store,
            ari=ari,  # type: ignore[arg-type]
            providers=ProviderRegistry({"piper": SilentProvider()}, {}),
            media=FakeMedia(),  # type: ignore[arg-type]
            owner_variable="SPEAKD_CUSTOMER_ID",
            events=bus,
            lead_ms=300,
            mark_every_ms=100,
            owner=OWNER,
        )
        store.fence(OWNER.run_id, service.stop_fenced)
        ari.service = service
        yield ari, service, published
        await asyncio.wait_for(service.shutdown(), 10)


async def test_a_session_another_node_ended_stops_here_without_writes_or_events(fenced_env):
    ari, service, published = fenced_env
    record = await service.create("c1", request())
    await until(lambda: record.status == "active")
    _, item = await service.say("c1", record.id, SayRequest(" ".join(["word"] * 2000)))  # still playing below
    await until(lambda: item.status == "playing")
    store = service.store
    (ended,) = await store.end_lost_run(OWNER.run_id, ENDED)  # as another node does
    assert [say["status"] for say in ended[1]] == ["interrupted"]
    before = len(published.events)

    service.stop_fenced(await store.fenced_off([record.id]))  # as the watcher does once its lock is back
    # While its objects are still being removed, this node tells what the other node wrote.
    assert service.live_count == 1 and (await service.get("c1", record.id)).status == "stopped"
    (listed,), _ = await service.list("c1", 10, None)
    assert listed.status == "stopped"
    await until(lambda: service.live_count == 0)
    assert ari.leftovers() == [] and service.media.unreleased() == []
    await asyncio.sleep(0.05)
    assert published.events[before:] == []  # the other node published its end
    stored = await store.get(record.id)
    assert (stored.status, stored.tm_update) == ("stopped", ENDED)  # as the other node wrote it
    assert [say["status"] for say in await store.list_says(record.id)] == ["interrupted"]
    assert (await service.get("c1", record.id)).status == "stopped"


async def test_a_write_found_fenced_stops_the_session_too(fenced_env):
    ari, service, published = fenced_env
    record = await service.create("c1", request())
    await until(lambda: record.status == "active")
    await service.store.end_lost_run(OWNER.run_id, ENDED)
    published.events.clear()
    # The next write this run makes of the session (here: a say queued) matches nothing.
    with pytest.raises(InvalidRequest, match="is stopped"):
        await service.say("c1", record.id, SayRequest("Anyone there?"))
    await until(lambda: service.live_count == 0)
    assert ari.leftovers() == [] and published.events == []
    assert (await service.store.get(record.id)).tm_update == ENDED
    assert await service.store.list_says(record.id) == []  # the say taken back with its insert


async def test_a_lost_runs_session_is_published_once_with_node_lost(fenced_env):
    _ari, service, published = fenced_env
    record = await service.create("c1", request())
    await until(lambda: record.status == "active")
    _, item = await service.say("c1", record.id, SayRequest(" ".join(["word"] * 2000)))
    await until(lambda: item.status == "playing")  # no event of its own comes after the clear below
    ((stopped, says),) = await service.store.end_lost_run(OWNER.run_id, ENDED)
    published.events.clear()

    service.publish_lost(stopped, says, "node 'pbx-a' was lost")
    assert len(says) == 1
    assert published.kinds() == [("speaking_say_interrupted", "node_lost"), ("speaking_stopped", "node_lost")]
    assert all(e.source == "" for e in published.events)
    assert published.events[-1].data["status"] == "stopped" and published.events[-1].data["id"] == record.id
