"""speakd driven from the dialplan over FastAGI: asterisk-config's [speakd-examples], run for real.

Each call is a Local channel: its ;2 half runs the example (the "caller", in the dialplan, the
channel the AGI names), its ;1 half is the caller's phone, which records what the caller hears
and sends a carrier, as a real phone would. Nothing else writes to the caller: a channel in the
dialplan is the idle leg of asterisk#1966.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field

import numpy as np
import pytest
import pytest_asyncio
from harness.audio import envelope_correlation, render_piper
from harness.calls import fetch_recording, new_test_id, wait_phone_ready
from harness.daemon import CUSTOMER_A, CUSTOMER_B, KEY_B, Api, SpeakdProcess, free_port
from harness.hearing import assert_heard, assert_not_heard, last_speech_s, speech_seconds

pytestmark = pytest.mark.asyncio(loop_scope="session")

EXAMPLES = "speakd-examples"
WELCOME = "Welcome to speakd. This sentence comes from the dialplan, and the dialplan waits for it."
ANNOUNCE = "This announcement plays while the dialplan carries on."
SHORT = "Here is the short version instead."
SPOKEN = "This is speakd, speaking from the dialplan."


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def agi_daemon(ari_settings, tmp_path_factory):
    """A daemon with FastAGI on a free port; channels that name no customer belong to customer A."""
    port = free_port()
    daemon = SpeakdProcess(
        tmp_path_factory.mktemp("speakd-agi"),
        ari_settings["url"],
        ari_settings["user"],
        ari_settings["password"],
        extra_config=f'\n[agi]\nlisten = "127.0.0.1:{port}"\ncustomer_id = "{CUSTOMER_A}"\n',
    )
    daemon.agi_url = f"agi://127.0.0.1:{port}"
    await daemon.start()
    yield daemon
    await daemon.stop()
    assert '"agi_script_crashed"' not in daemon.log_text()


@pytest_asyncio.fixture(loop_scope="session")
async def agi_api(agi_daemon):
    client = Api(agi_daemon.base)
    yield client
    await client.close()


@dataclass
class DialplanCall:
    """A caller running ``extension@context``; ``channel_id`` is the caller's channel (the AGI's)."""

    ari: object
    app: object
    test_id: str
    channel_id: str  # ;2: runs the dialplan
    phone_id: str  # ;1: the caller's phone, records what the caller hears
    _recording: np.ndarray | None = field(default=None, repr=False)

    def dialplan_steps(self) -> list[tuple[str, str, float]]:
        """(application, data, wall-clock time) of each dialplan step the caller ran so far."""
        return [
            (e["dialplan_app"], e["dialplan_app_data"], _epoch(e["timestamp"]))
            for e in self.app.of_type("ChannelDialplan", self.channel_id)
        ]

    async def step_after(self, app: str, data_prefix: str, within: float = 30.0) -> tuple[str, float]:
        """The application run right after the step ``app`` whose data starts with ``data_prefix``."""

        def found(_e=None):
            steps = self.dialplan_steps()
            for i, (name, data, _) in enumerate(steps[:-1]):
                if name == app and data.startswith(data_prefix):
                    return steps[i + 1]
            return None

        await self.app.wait_for(lambda e: found() is not None, within, f"the step after {app}({data_prefix}...)")
        name, _, at = found()
        return name, at

    async def step_started(self, app: str, data_prefix: str = "", within: float = 30.0) -> float:
        event = await self.app.wait_for(
            lambda e: (
                e.get("type") == "ChannelDialplan"
                and e.get("channel", {}).get("id") == self.channel_id
                and e.get("dialplan_app") == app
                and e.get("dialplan_app_data", "").startswith(data_prefix)
            ),
            within,
            f"{app}({data_prefix}...)",
        )
        return _epoch(event["timestamp"])

    async def var(self, name: str) -> str:
        return (await self.ari.get(f"/channels/{self.channel_id}/variable", variable=name))["value"]

    async def recording_started_at(self) -> float:
        return float(await self.ari.global_var(f"SPEAKD_REC_T0_{self.test_id}_caller"))

    async def hangup(self) -> None:
        await self.ari.delete_quietly(f"/channels/{self.channel_id}")

    async def recording(self) -> np.ndarray:
        if self._recording is None:
            await self.hangup()
            self._recording = await fetch_recording(
                self.ari, f"{self.test_id}-caller", gone=[self.channel_id, self.phone_id]
            )
        return self._recording


def _epoch(ari_timestamp: str) -> float:
    return dt.datetime.strptime(ari_timestamp, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def _stamp_epoch(stamp: str) -> float:
    return dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=dt.UTC).timestamp()


@pytest_asyncio.fixture(loop_scope="session")
async def dialplan_call(ari, harness_app, agi_daemon):
    """``await dialplan_call("welcome", variables={...})`` -> a DialplanCall; hung up at teardown."""
    made: list[DialplanCall] = []

    async def make(
        extension: str, context: str = EXAMPLES, variables: dict[str, str] | None = None, agi_url: str | None = None
    ) -> DialplanCall:
        test_id = new_test_id("g")
        call = DialplanCall(ari, harness_app, test_id, f"{test_id}-caller", f"{test_id}-phone")
        made.append(call)
        await ari.post(
            "/channels",
            json={
                "variables": {
                    "_SPEAKD_TEST_ID": test_id,
                    "SPEAKD_PARTY": "caller",
                    "_SPEAKD_TEST_MAX_SECONDS": "120",
                    "_SPEAKD_AGI": agi_url or agi_daemon.agi_url,
                    **{f"_{k}": v for k, v in (variables or {}).items()},
                }
            },
            endpoint=f"Local/{extension}@{context}/n",
            context="speakd-test",
            extension="phone",
            channelId=call.phone_id,
            otherChannelId=call.channel_id,
        )
        await ari.post(f"/applications/{harness_app.name}/subscription", eventSource=f"channel:{call.channel_id}")
        await wait_phone_ready(ari, test_id, "caller")
        return call

    yield make
    for call in made:
        await call.hangup()


# Measured: the sandbox's Local-channel caller in AGI hears speakd about 6 dB quieter than a party
# of a bridged call does. That loss belongs to Local channels behind a generator, not to the wait
# path: on real RTP channels both hear what speakd sends (docs/media.md, test_loudness.py).
# assert_heard counts speech frames above an absolute -40 dBFS, so the reference is taken down by as much.
AGI_LEVEL_DB = -6.0


def assert_heard_in_agi(recording: np.ndarray, reference: np.ndarray) -> int:
    return assert_heard(recording, reference * 10 ** (AGI_LEVEL_DB / 20), "caller")


async def says_of(api: Api, speaking_id: str) -> list[dict]:
    reply = await api.request("GET", f"/speakings/{speaking_id}/says")
    assert reply.status == 200, reply
    return reply.body["result"] if isinstance(reply.body, dict) else reply.body


@pytest.mark.by_ear
async def test_speak_and_wait_the_caller_hears_it_and_the_dialplan_goes_on_after(agi_api, dialplan_call):
    call = await dialplan_call("welcome")
    agi_at = await call.step_started("AGI")
    next_app, continued_at = await call.step_after("AGI", "agi://")
    assert next_app == "Verbose"
    assert await call.var("SPEAKD_SAY_STATUS") == "played"
    assert await call.var("SPEAKD_ERROR") == ""
    assert await call.var("SPEAKD_HEARD_TEXT") == WELCOME
    speaking_id = await call.var("SPEAKD_SPEAKING_ID")
    (say,) = await says_of(agi_api, speaking_id)
    assert say["say_id"] == await call.var("SPEAKD_SAY_ID")
    assert say["status"] == "played" and say["text"] == WELCOME
    played_end = _stamp_epoch(say["tm_play_end"])
    reference = render_piper(WELCOME)
    # The dialplan went on once the say had played to its end, not before, and promptly.
    assert continued_at >= played_end - 0.02, f"continued {played_end - continued_at:.3f}s before the say ended"
    assert continued_at - played_end < 0.5, f"continued {continued_at - played_end:.3f}s after the say ended"
    assert continued_at - agi_at > len(reference) / 8000, "the AGI returned before the text could have played"

    recording = await call.recording()
    assert_heard_in_agi(recording, reference)
    # ... and what the caller heard ended before the dialplan continued.
    heard_end = await call.recording_started_at() + last_speech_s(recording)
    assert heard_end <= continued_at + 0.1, f"speech heard {heard_end - continued_at:.3f}s after the AGI returned"


@pytest.mark.by_ear
async def test_without_keepalive_an_idle_caller_hears_nothing(ari, agi_api, dialplan_call):
    """The evidence for the keepalive: the same speech with keepalive=no is played but not heard
    (asterisk#1966: whisper rides on frames written to the channel, and a channel in AGI has none)."""
    version = (await ari.get("/asterisk/info"))["system"]["version"]
    major, minor = (int(p) for p in version.split(".")[:2])
    if (major, minor) >= (22, 11):
        pytest.skip(f"Asterisk {version} carries whisper on idle channels (asterisk#1966 fixed)")
    call = await dialplan_call(
        "speak", "speakd-test-agi", {"SPEAKD_TEXT": SPOKEN, "SPEAKD_OPT1": "wait", "SPEAKD_OPT2": "keepalive=no"}
    )
    await call.step_after("AGI", "agi://")
    assert await call.var("SPEAKD_SAY_STATUS") == "played"  # speakd played it to the end ...
    assert_not_heard(await call.recording(), "caller")  # ... and the idle caller heard none of it


@pytest.mark.by_ear
async def test_speak_without_wait_returns_at_once_and_plays_on(agi_api, dialplan_call):
    call = await dialplan_call("announce")
    next_app, continued_at = await call.step_after("AGI", "agi://")
    assert next_app == "Verbose"
    assert await call.var("SPEAKD_SAY_STATUS") == "queued"
    speaking_id = await call.var("SPEAKD_SPEAKING_ID")
    reference = render_piper(ANNOUNCE)
    await asyncio.sleep(len(reference) / 8000 + 1.5)
    (say,) = await says_of(agi_api, speaking_id)
    assert say["status"] == "played" and say["client_state"] == "announce"
    assert continued_at < _stamp_epoch(say["tm_play_start"]), "the AGI waited for the speech"
    assert_heard_in_agi(await call.recording(), reference)


@pytest.mark.by_ear
async def test_flush_and_stop_from_the_dialplan(agi_api, agi_daemon, dialplan_call):
    call = await dialplan_call("interrupt")
    name, _ = await call.step_after("AGI", f"{agi_daemon.agi_url}/stop")
    assert name == "Verbose"
    speaking_id = await call.var("SPEAKD_SPEAKING_ID")
    assert await call.var("SPEAKD_ERROR") == ""
    session = (await agi_api.get(speaking_id)).body
    assert session["status"] == "stopped"
    long_say, short_say = await says_of(agi_api, speaking_id)
    assert long_say["status"] == "interrupted"
    assert 0 < long_say["heard_chars"] < len(long_say["text"])
    assert short_say["status"] == "played" and short_say["text"] == SHORT

    recording = await call.recording()
    played_s = long_say["played_ms"] / 1000
    corr, _ = envelope_correlation(recording, render_piper(long_say["text"])[: int(played_s * 8000)])
    assert corr > 0.8, f"the start of the long text should be heard (corr {corr:.2f})"
    corr, _ = envelope_correlation(recording, render_piper(SHORT))
    assert corr > 0.8, f"the short version should be heard (corr {corr:.2f})"
    # Only what played of the long text was heard, then the short version: no more.
    assert speech_seconds(recording) < played_s + len(render_piper(SHORT)) / 8000 + 0.5


async def test_a_refusal_sets_speakd_error_and_the_dialplan_goes_on(dialplan_call):
    call = await dialplan_call("greeting", variables={"GREETING": " "})
    next_app, _ = await call.step_after("AGI", "agi://")
    assert next_app == "GotoIf"
    await call.step_started("Verbose", "1,speakd did not speak")  # the example's fallback
    assert await call.var("AGISTATUS") == "SUCCESS"
    assert await call.var("SPEAKD_SAY_STATUS") == "error"
    assert await call.var("SPEAKD_ERROR") == "'text' must not be empty"
    assert await call.var("SPEAKD_SPEAKING_ID") == ""


async def test_the_channels_customer_wins_over_the_default(agi_api, dialplan_call):
    call = await dialplan_call("greeting", variables={"GREETING": SPOKEN, "SPEAKD_CUSTOMER_ID": CUSTOMER_B})
    name, _ = await call.step_after("AGI", "agi://")
    assert name == "GotoIf"
    assert await call.var("SPEAKD_SAY_STATUS") == "played"
    speaking_id = await call.var("SPEAKD_SPEAKING_ID")
    assert (await agi_api.as_customer(KEY_B).get(speaking_id)).status == 200
    assert (await agi_api.get(speaking_id)).status == 404  # not the default customer's (A)


async def test_speakd_unreachable_the_dialplan_goes_on(dialplan_call):
    call = await dialplan_call("greeting", variables={"GREETING": SPOKEN}, agi_url=f"agi://127.0.0.1:{free_port()}")
    await call.step_started("Verbose", "1,speakd did not speak")
    assert await call.var("AGISTATUS") == "FAILURE"


async def test_bad_options_and_flush_with_nothing_active(dialplan_call):
    call = await dialplan_call("speak", "speakd-test-agi", {"SPEAKD_TEXT": SPOKEN, "SPEAKD_OPT1": "speed=2"})
    await call.step_after("AGI", "agi://")
    assert "unknown speak option 'speed=2'" in await call.var("SPEAKD_ERROR")
    assert await call.var("SPEAKD_SAY_STATUS") == "error"


async def test_hangup_while_waiting_ends_the_session_and_the_script(agi_api, agi_daemon, dialplan_call):
    long_text = "This text is long enough that the caller hangs up well before it ends. " * 3
    call = await dialplan_call("speak", "speakd-test-agi", {"SPEAKD_TEXT": long_text, "SPEAKD_OPT1": "wait"})

    async def session():
        listed = (await agi_api.request("GET", "/speakings", params={"page_size": "100"})).body["result"]
        return next((s for s in listed if s["reference_id"] == call.channel_id and s["status"] == "active"), None)

    await call.ari.wait_until(session, 15, "the AGI's session to be active")
    speaking_id = (await session())["id"]
    await asyncio.sleep(1.5)
    await call.hangup()
    await agi_api.wait_status(speaking_id, "stopped", timeout=5)

    async def done_line():
        return next(
            (line for line in agi_daemon.log_text().splitlines() if '"agi_speak_done"' in line and speaking_id in line),
            None,
        )

    await call.ari.wait_until(done_line, 10, "the AGI script to report")
    assert '"status": "interrupted"' in await done_line()
    (say,) = await says_of(agi_api, speaking_id)
    assert say["status"] == "interrupted"
