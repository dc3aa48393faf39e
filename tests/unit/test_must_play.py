"""Must-play says (``interruptible`` false) with the scripted provider and the fake far end of
test_session: a flush or a stop of says leaves them whole, the says around them go, and only
the session's end cuts them. What the far end played is what a caller would have heard."""

from __future__ import annotations

import asyncio

import test_session
from test_session import finished, until, words

from speakd.sessions.says import SayStatus

make_env = test_session.make  # test_session's fixture, by this name here


def protected(env, text: str):
    item = env.session.new_say(text)
    item.interruptible = False
    env.session.enqueue(item)
    return item


async def test_a_flush_leaves_the_must_play_say_whole_and_the_next_say_plays_after_it(make_env):
    env = await make_env(speed=2)
    a = protected(env, words("A", 30))
    b = env.say(words("B", 10))
    await until(lambda: a.status == SayStatus.PLAYING and a.synthesized and b.synthesized)
    await until(lambda: len(env.sink.played) >= 5)
    assert env.session.flush() == [a]
    c = env.say(words("C", 5))
    await finished(a, b, c)
    await env.sink.wait_idle(35)
    # A heard whole, nothing of B (synthesized ahead, it never left speakd), then C.
    assert env.sink.played_letters() == b"A" * 30 + b"C" * 5
    assert env.sink.flush_points == []  # the far end was never told to drop anything
    assert (a.status, a.heard_text, a.played_ms) == (SayStatus.PLAYED, a.text, 600)
    assert (b.status, b.heard_chars) == (SayStatus.INTERRUPTED, 0)
    assert c.status == SayStatus.PLAYED
    await env.stored(a, b, c)
    assert env.last_saved(a)["interruptible"] is False and env.last_saved(b)["interruptible"] is True


async def test_a_must_play_say_still_being_synthesized_goes_on_through_a_flush(make_env):
    env = await make_env()
    env.provider.gates["A"] = asyncio.Event()  # A stalls after 2 frames
    a = protected(env, words("A", 20))
    b = env.say(words("B", 5))
    await until(lambda: len(env.sink.played) >= 2)
    assert env.session.flush() == [a]
    assert "A" not in env.provider.closed  # its synthesis was not cancelled
    env.provider.gates["A"].set()
    await finished(a, b)
    await env.sink.wait_idle(20)
    assert env.sink.played_letters() == b"A" * 20
    assert a.status == SayStatus.PLAYED and b.status == SayStatus.INTERRUPTED


async def test_a_flush_cuts_the_say_playing_and_keeps_a_must_play_say_queued_after_it(make_env):
    env = await make_env(speed=2)
    x = env.say(words("X", 40))
    p = protected(env, words("P", 8))
    q = env.say(words("Q", 5))
    await until(lambda: len(env.sink.played) >= 3)
    assert env.session.flush() == [p]
    await finished(x, p, q)
    await env.sink.wait_idle()
    played = env.sink.played_after_flush()
    assert played == b"P" * 8  # P from its start (synthesized again), nothing of Q
    assert x.status == SayStatus.INTERRUPTED and 0 < x.heard_chars < len(x.text)
    assert p.status == SayStatus.PLAYED and p.heard_text == p.text
    assert q.status == SayStatus.INTERRUPTED


async def test_stop_current_does_not_cut_a_must_play_say(make_env):
    env = await make_env(speed=2)
    a = protected(env, words("A", 20))
    b = env.say(words("B", 4))
    await until(lambda: len(env.sink.played) >= 3)
    env.session.interrupt_current()
    await finished(a, b)
    await env.sink.wait_idle(24)
    assert env.sink.played_letters() == b"A" * 20 + b"B" * 4
    assert a.status == b.status == SayStatus.PLAYED


async def test_the_sessions_end_cuts_a_must_play_say_at_once(make_env):
    env = await make_env(speed=1)
    a = protected(env, words("A", 100))
    await until(lambda: len(env.sink.played) >= 3)
    assert await env.session.close() == 1
    heard = len(env.sink.played)
    await asyncio.sleep(0.1)
    assert len(env.sink.played) == heard  # nothing played after the end (the far end was flushed)
    assert a.status == SayStatus.INTERRUPTED and a.heard_chars < len(a.text)


async def test_a_must_play_say_plays_on_after_the_next_says_audio_was_dropped_twice(make_env):
    """Two flushes in a row (a stop: all, then a flush): still whole, once."""
    env = await make_env(speed=2)
    a = protected(env, words("A", 25))
    env.say(words("B", 5))
    await until(lambda: len(env.sink.played) >= 2)
    assert env.session.flush() == [a]
    env.say(words("C", 5))
    await asyncio.sleep(0.02)
    assert env.session.flush() == [a]
    d = env.say(words("D", 3))
    await finished(a, d)
    await env.sink.wait_idle(28)
    assert env.sink.played_letters() == b"A" * 25 + b"D" * 3
