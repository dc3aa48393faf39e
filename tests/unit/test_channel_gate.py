"""speakd.media.channel_gate: connects together, changes together, never both, in turn."""

from __future__ import annotations

import asyncio

import pytest

from speakd.media.channel_gate import ChannelGate, Use


async def _hold(gate: ChannelGate, use: Use, log: list[str], name: str, release: asyncio.Event) -> None:
    async with gate.connecting() if use is Use.CONNECT else gate.changing():
        log.append(f"{name} in")
        await release.wait()
        log.append(f"{name} out")


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def _arrive(tasks: asyncio.TaskGroup, gate: ChannelGate, use: Use, log: list[str], name: str, release):
    """A holder started and at the gate (in, or waiting)."""
    task = tasks.create_task(_hold(gate, use, log, name, release))
    await _settle()
    return task


async def test_the_same_use_holds_it_together_and_the_other_waits_for_all_of_them():
    gate, log = ChannelGate(), []
    first, second, connect = asyncio.Event(), asyncio.Event(), asyncio.Event()
    async with asyncio.TaskGroup() as tasks:
        await _arrive(tasks, gate, Use.CHANGE, log, "make", first)
        await _arrive(tasks, gate, Use.CHANGE, log, "remove", second)
        await _arrive(tasks, gate, Use.CONNECT, log, "connect", connect)
        assert log == ["make in", "remove in"] and gate.holders == (Use.CHANGE, 2)
        first.set()
        await _settle()
        assert log[-1] == "make out" and "connect in" not in log
        second.set()
        await _settle()
        assert log[-2:] == ["remove out", "connect in"] and gate.holders == (Use.CONNECT, 1)
        connect.set()
    assert gate.holders == (None, 0)


async def test_a_change_arriving_behind_a_waiting_connect_waits_its_turn():
    """No starvation: a stream of changes cannot keep a connect out."""
    gate, log = ChannelGate(), []
    change, connect, late = asyncio.Event(), asyncio.Event(), asyncio.Event()
    async with asyncio.TaskGroup() as tasks:
        await _arrive(tasks, gate, Use.CHANGE, log, "change", change)
        await _arrive(tasks, gate, Use.CONNECT, log, "connect", connect)
        await _arrive(tasks, gate, Use.CHANGE, log, "late change", late)
        assert log == ["change in"]
        change.set()
        await _settle()
        assert log == ["change in", "change out", "connect in"]
        connect.set()
        late.set()
    assert log == ["change in", "change out", "connect in", "connect out", "late change in", "late change out"]


async def test_waiters_of_one_use_in_a_row_go_in_together():
    gate, log = ChannelGate(), []
    change, connects = asyncio.Event(), asyncio.Event()
    async with asyncio.TaskGroup() as tasks:
        await _arrive(tasks, gate, Use.CHANGE, log, "change", change)
        for name in ("a", "b", "c"):
            await _arrive(tasks, gate, Use.CONNECT, log, name, connects)
        change.set()
        await _settle()
        assert gate.holders == (Use.CONNECT, 3)
        connects.set()
    assert gate.holders == (None, 0)


async def test_a_waiter_cancelled_lets_the_ones_behind_it_in():
    gate, log = ChannelGate(), []
    change, connect, other = asyncio.Event(), asyncio.Event(), asyncio.Event()
    async with asyncio.TaskGroup() as tasks:
        await _arrive(tasks, gate, Use.CHANGE, log, "change", change)
        waiting = await _arrive(tasks, gate, Use.CONNECT, log, "connect", connect)
        await _arrive(tasks, gate, Use.CHANGE, log, "other change", other)
        assert log == ["change in"]  # behind the waiting connect
        waiting.cancel()
        await _settle()
        assert log == ["change in", "other change in"] and gate.holders == (Use.CHANGE, 2)
        change.set()
        other.set()
    assert gate.holders == (None, 0)


async def test_a_waiter_cancelled_as_it_was_let_in_gives_its_place_back():
    gate = ChannelGate()
    held = gate.changing()
    await held.__aenter__()
    entered = asyncio.Event()

    async def connect() -> None:
        async with gate.connecting():
            entered.set()

    task = asyncio.create_task(connect())
    await _settle()
    await held.__aexit__(None, None, None)  # lets the connect in ...
    task.cancel()  # ... and it is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not entered.is_set() and gate.holders == (None, 0)
    async with gate.changing():
        assert gate.holders == (Use.CHANGE, 1)
