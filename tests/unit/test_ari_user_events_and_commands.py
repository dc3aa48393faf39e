"""ARI user events out (the sink) and in (operators' commands) against a scripted fake ARI.

What Asterisk does with a user event is checked against the sandbox in
tests/integration/test_ari_user_events.py; here: who speakd raises each event for, in what
order, with which variables, and what it does when things go away or pile up."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from speakd.ari.errors import AriNotFound, AriUnprocessable
from speakd.ari_commands import AriCommands
from speakd.errors import NotFound
from speakd.events.ari_user_events import AriUserEventSink, flat, variables_of
from speakd.events.model import Event, EventType
from speakd.sessions.service import SpeakingService

OWN = "speakd"


class FakeAri:
    def __init__(self) -> None:
        self.connected = asyncio.Event()
        self.connected.set()
        self.apps: list[dict[str, Any]] = []
        self.objects: set[str] = {"channels/call-1", "bridges/conf-1"}
        self.raised: list[tuple[str, str, str | None, dict[str, str]]] = []  # (app, name, source, variables)
        self.hold: asyncio.Event | None = None

    async def get(self, path: str, **params: Any) -> Any:
        if path == "applications":
            return self.apps
        if path in self.objects:
            return {"id": path.split("/")[1]}
        raise AriNotFound(404, "not found")

    async def request(self, method: str, path: str, *, params: dict[str, Any], json_body: Any) -> Any:
        if self.hold is not None:
            await self.hold.wait()
        source = params.get("source")
        if source and f"{source.split(':')[0]}s/{source.split(':')[1]}" not in self.objects:
            raise AriUnprocessable(422, "Event source was not found")
        if params["application"] not in {a["name"] for a in self.apps}:
            raise AriNotFound(404, "Application not found")
        self.raised.append((params["application"], path.removeprefix("events/user/"), source, json_body["variables"]))
        return None

    def watch(self, name: str, channels: tuple[str, ...] = (), bridges: tuple[str, ...] = ()) -> None:
        self.apps.append({"name": name, "channel_ids": list(channels), "bridge_ids": list(bridges)})


def event(kind: EventType, say_id: str = "", source: str = "channel:call-1", **data: Any) -> Event:
    body = {"speaking_id": "sp-1", "say_id": say_id, **data} if say_id else {"id": "sp-1", "status": "active", **data}
    return Event(kind, "2026-01-01 00:00:00.000000", "cust-1", "sp-1", body, source)


@pytest.fixture
async def sink():
    ari = FakeAri()
    sink = AriUserEventSink(ari, OWN)  # type: ignore[arg-type]
    sink.start()
    yield ari, sink
    await sink.aclose()


async def settle(sink: AriUserEventSink) -> None:
    async with asyncio.timeout(2):
        await sink._queue.join()


def test_variables_are_strings_and_carry_the_envelope():
    e = event(EventType.SAY_INTERRUPTED, "say-1", heard_chars=12, heard_text="Hello there.", client_state="cs")
    variables = variables_of(e)
    assert variables["heard_chars"] == "12" and variables["heard_text"] == "Hello there."
    assert variables["topic"] == "customer_id:cust-1:speaking:sp-1"
    assert variables["timestamp"] == "2026-01-01 00:00:00.000000"
    assert variables["source"] == "channel:call-1" and variables["speaking_id"] == "sp-1"
    assert all(isinstance(v, str) for v in variables.values())
    assert (flat(None), flat(True), flat({"b": 1, "a": [2]})) == ("", "true", '{"a":[2],"b":1}')


async def test_each_watcher_of_the_source_gets_every_event_in_order_and_speakd_does_not(sink):
    ari, sink = sink
    ari.watch(OWN, channels=("call-1",))
    ari.watch("op-1", channels=("call-1",))
    ari.watch("op-2", channels=("call-1", "other"))
    ari.watch("bystander", channels=("other",))
    ari.watch("everything", channels=("__AST_CHANNEL_ALL_TOPIC",), bridges=("__AST_BRIDGE_ALL_TOPIC",))
    kinds = [EventType.SPEAKING_CREATED, EventType.SPEAKING_STARTED, EventType.SAY_STARTED, EventType.SAY_FINISHED]
    for kind in kinds:
        sink.offer(event(kind, "say-1" if kind.startswith("speaking_say") else ""))
    await settle(sink)
    for app in ("op-1", "op-2", "everything"):
        got = [(name, source) for a, name, source, _ in ari.raised if a == app]
        assert got == [(str(k), "channel:call-1") for k in kinds], app
    assert {a for a, *_ in ari.raised} == {"op-1", "op-2", "everything"}


async def test_a_conference_is_raised_on_its_bridge(sink):
    ari, sink = sink
    ari.watch("op", bridges=("conf-1",))
    ari.watch("caller-watcher", channels=("call-1",))
    sink.offer(event(EventType.SPEAKING_STARTED, source="bridge:conf-1"))
    await settle(sink)
    assert [(a, s) for a, _, s, _ in ari.raised] == [("op", "bridge:conf-1")]


async def test_after_a_hangup_the_last_watchers_still_get_the_last_events_without_a_source(sink):
    ari, sink = sink
    ari.watch("op", channels=("call-1",))
    sink.offer(event(EventType.SAY_STARTED, "say-1"))
    await settle(sink)
    # The channel goes: Asterisk forgets who watched it, and no event can name it any more.
    ari.objects.discard("channels/call-1")
    ari.apps[0]["channel_ids"] = []
    sink.offer(event(EventType.SAY_INTERRUPTED, "say-1", reason="hangup"))
    sink.offer(event(EventType.SPEAKING_STOPPED, reason="hangup"))
    await settle(sink)
    assert [(n, s) for _, n, s, _ in ari.raised] == [
        ("speaking_say_started", "channel:call-1"),
        ("speaking_say_interrupted", None),
        ("speaking_stopped", None),
    ]
    assert ari.raised[-1][3]["source"] == "channel:call-1"
    # Its session over, the channel's watchers are forgotten.
    assert "channel:call-1" not in sink._watchers


async def test_a_source_gone_between_lookup_and_raise_is_raised_without_it(sink):
    ari, sink = sink
    ari.watch("op", channels=("call-1",))
    ari.objects.discard("channels/call-1")  # listed a moment ago, gone now
    sink.offer(event(EventType.SPEAKING_STOPPED, reason="hangup"))
    await settle(sink)
    assert [(a, s) for a, _, s, _ in ari.raised] == [("op", None)]


async def test_a_source_nobody_watches_costs_one_lookup_and_no_raise(sink):
    ari, sink = sink
    ari.watch("bystander", channels=("other",))
    sink.offer(event(EventType.SPEAKING_CREATED))
    await settle(sink)
    assert ari.raised == []


async def test_offer_never_blocks_or_raises_and_a_full_queue_drops(sink):
    ari, _ = sink
    ari.hold = asyncio.Event()
    ari.watch("op", channels=("call-1",))
    small = AriUserEventSink(ari, OWN, queue_events=3)  # type: ignore[arg-type]
    small.start()
    try:
        for _ in range(10):
            small.offer(event(EventType.SPEAKING_STARTED))
        await asyncio.sleep(0.05)
        assert small.dropped > 0
    finally:
        ari.hold.set()
        await small.aclose()
    small.offer(event(EventType.SPEAKING_STARTED))  # closed: ignored, no error


async def test_close_delivers_what_is_queued(sink):
    ari, sink = sink
    ari.watch("op", channels=("call-1",))
    for _ in range(5):
        sink.offer(event(EventType.SPEAKING_STARTED))
    await sink.aclose()
    assert len(ari.raised) == 5


async def test_ari_disconnected_drops_the_batch_and_delivery_goes_on(sink):
    ari, sink = sink
    ari.watch("op", channels=("call-1",))
    ari.connected.clear()
    sink.offer(event(EventType.SPEAKING_STARTED))
    await settle(sink)
    ari.connected.set()
    sink.offer(event(EventType.SPEAKING_STOPPED))
    await settle(sink)
    assert [n for _, n, _, _ in ari.raised] == ["speaking_stopped"]


# -- commands in ------------------------------------------------------------------------------


class FakeService(SpeakingService):
    """The service's ARI and session seams stood in for; its call-level commands are the real ones."""

    owner_variable = "SPEAKD_CUSTOMER_ID"

    def __init__(self, owner: str = "") -> None:
        self.owner = owner
        self.calls: list[tuple[Any, ...]] = []
        self.live: dict[str, str] = {}

    async def channel_customer(self, channel_id: str, fallback: str = "") -> str:
        return self.owner or fallback

    def active_on(self, reference_type: str, reference_id: str) -> str | None:
        return self.live.get(reference_id)

    async def speak_on_call(self, customer_id, channel_id, create, say):
        self.calls.append(("say", customer_id, channel_id, create, say))

        class Item:
            say_id = "say-1"

        class Record:
            id = "sp-1"

        return Record(), Item()

    async def flush(self, customer_id, speaking_id):
        self.calls.append(("flush", customer_id, speaking_id))

    async def stop(self, customer_id, speaking_id):
        if customer_id != "cust-1":
            raise NotFound(f"speaking '{speaking_id}' not found")
        self.calls.append(("stop", customer_id, speaking_id))


def command(name: str, channel_id: str | None = "call-1", **variables: Any) -> dict[str, Any]:
    cmd: dict[str, Any] = {"type": "ChannelUserevent", "eventname": name, "userevent": {"eventname": name, **variables}}
    if channel_id:
        cmd["channel"] = {"id": channel_id}
    return cmd


def commands(service: FakeService, operator: str = "") -> tuple[AriCommands, list[tuple[Any, ...]]]:
    raised: list[tuple[Any, ...]] = []
    handler = AriCommands(
        service,  # type: ignore[arg-type]
        lambda *args: raised.append(args),
        operator_customer_id=operator,
        default_provider="piper",
    )
    return handler, raised


async def test_say_uses_the_channel_owner_and_the_options():
    service = FakeService(owner="cust-1")
    handler, raised = commands(service, operator="operator")
    await handler.handle(
        command("speakd_say", text="Hello.", language="de-de", direction="out", client_state="x", stop="all")
    )
    assert raised == []
    _, customer, channel, create, say = service.calls[0]
    assert (customer, channel) == ("cust-1", "call-1")
    assert (create.reference_type, create.reference_id, create.language, create.direction, create.provider) == (
        "call",
        "call-1",
        "de-DE",
        "out",
        "piper",
    )
    assert (say.text, say.client_state, str(say.stop)) == ("Hello.", "x", "all")


async def test_without_an_owner_the_operator_customer_speaks():
    service = FakeService()
    handler, _ = commands(service, operator="operator")
    await handler.handle(command("speakd_say", text="Hello."))
    assert service.calls[0][1] == "operator"


@pytest.mark.parametrize(
    ("cmd", "operator", "reason", "says"),
    [
        (command("speakd_say", text="Hello.", command_id="c1"), "", "no_customer", "names no customer"),
        (command("speakd_say", text="  ", client_state="s"), "op", "invalid_field", "'text' must not be empty"),
        (command("speakd_say", text="Hi", voice="x"), "op", "invalid_field", "unknown variable(s) voice"),
        (command("speakd_say", channel_id=None, text="Hi", reply_app="me"), "op", "invalid_request", "source=channel"),
        (command("speakd_flush"), "op", "not_found", "no speaking session is live"),
        (command("speakd_say", text="Hi", language="english"), "op", "invalid_field", "BCP47"),
    ],
)
async def test_refusals_are_raised_back_as_speakd_error(cmd, operator, reason, says):
    service = FakeService()
    handler, raised = commands(service, operator=operator)
    await handler.handle(cmd)
    assert service.calls == []
    [(name, source, variables, also_to)] = raised
    assert name == "speakd_error" and variables["command"] == cmd["eventname"]
    assert variables["reason"] == reason and says in variables["message"]
    assert source == (f"channel:{cmd['channel']['id']}" if "channel" in cmd else "")
    for echoed in ("command_id", "client_state"):
        assert variables.get(echoed, "") == cmd["userevent"].get(echoed, "")
    assert also_to == ((cmd["userevent"]["reply_app"],) if "reply_app" in cmd["userevent"] else ())


async def test_flush_and_stop_act_on_the_live_session_of_the_channel():
    service = FakeService(owner="cust-1")
    service.live["call-1"] = "sp-1"
    handler, raised = commands(service)
    await handler.handle(command("speakd_flush"))
    await handler.handle(command("speakd_stop"))
    assert service.calls == [("flush", "cust-1", "sp-1"), ("stop", "cust-1", "sp-1")]
    service.owner = "cust-2"  # another customer's channel name cannot touch it
    await handler.handle(command("speakd_stop"))
    assert raised[0][2]["reason"] == "not_found"


async def test_other_user_events_are_ignored_and_commands_run_in_order_off_the_reader():
    service = FakeService(owner="cust-1")
    service.live["call-1"] = "sp-1"
    handler, raised = commands(service)
    handler.start()
    try:
        handler.offer(command("speaking_started"))  # someone else's user event: not ours
        handler.offer(command("speakd_say", text="One."))
        handler.offer(command("speakd_flush"))
        handler.offer(command("speakd_say", text="Two."))
        async with asyncio.timeout(2):
            while len(service.calls) < 3:
                await asyncio.sleep(0.01)
    finally:
        await handler.aclose()
    assert [c[0] for c in service.calls] == ["say", "flush", "say"]
    assert [c[4].text for c in service.calls if c[0] == "say"] == ["One.", "Two."]
    handler.offer(command("speakd_say", text="Late."))  # closed: refused, not queued
    assert raised[-1][2]["reason"] == "unavailable"
