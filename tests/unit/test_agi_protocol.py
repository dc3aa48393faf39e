"""The FastAGI protocol without I/O, the speak arguments, and the server over a loopback socket."""

from __future__ import annotations

import asyncio

import pytest

from speakd.agi.protocol import (
    MAX_COMMAND_BYTES,
    AgiEnvironment,
    AgiProtocolError,
    AgiResponse,
    EnvironmentParser,
    ResponseParser,
    exec_app,
    format_command,
    quote,
    set_variable,
)
from speakd.agi.scripts import parse_speak_args
from speakd.agi.server import AgiServer
from speakd.errors import InvalidRequest
from speakd.sessions.service import SpeakingService


def parse_environment(lines: list[str]) -> AgiEnvironment:
    """The whole block at once (the lines up to, and without, the empty one)."""
    parser = EnvironmentParser()
    for line in lines:
        if (env := parser.feed(line)) is not None:
            return env
    env = parser.feed("")
    assert env is not None
    return env


def parse_response(lines: list[str]) -> tuple[AgiResponse, bool]:
    """The response in ``lines`` (all of them, in order) and whether a HANGUP came first."""
    parser = ResponseParser()
    for line in lines:
        if (response := parser.feed(line)) is not None:
            return response, parser.hung_up
    raise AgiProtocolError("incomplete AGI response")


ENV = [
    "agi_network: yes",
    "agi_network_script: speak",
    "agi_request: agi://127.0.0.1:4573/speak",
    "agi_channel: Local/welcome@speakd-examples-00000001;2",
    "agi_uniqueid: t123-caller",
    "agi_callerid: unknown",
    "agi_arg_1: Hello, world: again",
    "agi_arg_2: wait",
    "agi_arg_3: ",
]


def res_agi_parse_args(line: str) -> list[str]:
    """res_agi.c parse_args(), transcribed: how Asterisk splits a command line into arguments."""
    args: list[str] = []
    cur: list[str] | None = None
    quoted = escaped = False
    whitespace = True
    for ch in line:
        if ch == '"' and not escaped:
            quoted = not quoted
            if quoted and whitespace:
                cur = []
                args.append("")
                whitespace = False
            escaped = False
            continue
        if ch in " \t" and not quoted and not escaped:
            whitespace = True
            if cur is not None:
                args[-1] = "".join(cur)
            cur = None
            continue
        if ch == "\\" and not escaped:
            escaped = True
            continue
        if whitespace:
            cur = []
            args.append("")
            whitespace = False
        assert cur is not None
        cur.append(ch)
        args[-1] = "".join(cur)
        escaped = False
    return args


def test_environment_keeps_values_and_collects_args_in_order():
    env = parse_environment(ENV)
    assert env.script == "speak"
    assert env.channel_id == "t123-caller"
    assert env.channel.startswith("Local/welcome@")
    assert env.args == ["Hello, world: again", "wait", ""]
    assert env.values["request"] == "agi://127.0.0.1:4573/speak"


def _query(env: AgiEnvironment) -> str:
    """The agi:// URL's query (no script reads one; the environment keeps it in ``values``)."""
    return env.values.get("network_script", "").partition("?")[2]


def test_environment_script_drops_slashes_and_query():
    env = parse_environment(["agi_network_script: /speak?x=1", "agi_uniqueid: 1.2"])
    assert env.script == "speak"
    assert _query(env) == "x=1"


@pytest.mark.parametrize(
    "line", ["GET / HTTP/1.1", "agi_channel", "hello: world", "agi bad: x"], ids=["http", "nocolon", "prefix", "space"]
)
def test_environment_refuses_what_is_not_agi(line):
    with pytest.raises(AgiProtocolError):
        parse_environment([line])


def test_environment_is_bounded():
    parser = EnvironmentParser()
    for i in range(200):
        parser.feed(f"agi_arg_{i}: x")
    with pytest.raises(AgiProtocolError, match="longer than"):
        parser.feed("agi_arg_201: x")


@pytest.mark.parametrize(
    "value",
    ["plain", "", "with space", 'a "quoted" word', "back\\slash", 'end\\"', "tab\there", "ünïcödé €"],
)
def test_quote_reads_back_as_one_argument(value):
    line = format_command("SET", "VARIABLE", quoted=("NAME", value))
    assert line.endswith("\n") and line.count("\n") == 1
    assert res_agi_parse_args(line[:-1]) == ["SET", "VARIABLE", "NAME", value]


def test_quote_turns_line_breaks_into_spaces():
    assert res_agi_parse_args(quote("one\ntwo\r\nthree")) == ["one two three"]


def test_a_long_value_is_cut_to_fit_asterisks_buffer():
    value = 'x"\\' * 2000
    line = set_variable("SPEAKD_HEARD_TEXT", value)
    assert len(line.encode()) <= MAX_COMMAND_BYTES
    _, _, name, got = res_agi_parse_args(line[:-1])
    assert name == "SPEAKD_HEARD_TEXT"
    assert value.startswith(got) and len(got) > 1000


def test_multibyte_values_are_cut_by_characters():
    line = set_variable("V", "€" * 2000)
    assert len(line.encode()) <= MAX_COMMAND_BYTES
    line.encode().decode()  # whole characters


def test_command_words_must_be_bare():
    with pytest.raises(ValueError):
        format_command("SET VARIABLE")
    assert exec_app("Playtones", "0") == 'EXEC Playtones "0"\n'
    assert exec_app("StopPlaytones") == "EXEC StopPlaytones\n"


def test_responses():
    r, hung_up = parse_response(["200 result=1"])
    assert (r.code, r.result, r.ok, hung_up) == (200, "1", True, False)
    r, _ = parse_response(["200 result=1 (some (nested) value)"])
    assert r.data == "some (nested) value"
    r, _ = parse_response(["200 result=0 (timeout) endpos=12345"])
    assert (r.data, r.rest) == ("timeout", "endpos=12345")
    r, _ = parse_response(["200 result=-1"])
    assert not r.ok
    r, _ = parse_response(["510 Invalid or unknown command"])
    assert r.code == 510 and not r.ok
    r, _ = parse_response(["511 Command Not Permitted on a dead channel or intercept routine"])
    assert r.code == 511


def test_usage_error_spans_lines():
    r, _ = parse_response(
        [
            "520-Invalid command syntax.  Proper usage follows:",
            " Usage: SET VARIABLE <variablename> <value>",
            "520 End of proper usage.",
        ]
    )
    assert r.code == 520 and r.usage == [" Usage: SET VARIABLE <variablename> <value>"]
    assert "Usage" in r.describe()
    r, _ = parse_response(["520 Invalid command syntax.  Proper usage not available."])
    assert r.code == 520


def test_hangup_before_a_response_is_noted():
    r, hung_up = parse_response(["HANGUP", "200 result=1"])
    assert hung_up and r.code == 200


@pytest.mark.parametrize("line", ["garbage", "200 nothing", "100-x"])
def test_responses_that_are_not_agi(line):
    with pytest.raises(AgiProtocolError):
        parse_response([line, "200 result=1"])


def test_speak_args():
    a = parse_speak_args(["Hello there", "language=de-DE", "voice=x", " direction = in ", "", "wait"])
    assert a.text == "Hello there"
    assert a.create == {"language": "de-DE", "voice_id": "x", "direction": "in"}
    assert a.wait and a.keepalive
    a = parse_speak_args(["Hi", "client_state=a=b", "stop=all", "wait=no", "keepalive=no", "command_id=c1"])
    assert a.say == {"client_state": "a=b", "stop": "all", "command_id": "c1"}
    assert not a.wait and not a.keepalive


def test_speak_args_refusals_say_what_to_fix():
    with pytest.raises(InvalidRequest, match="needs a text"):
        parse_speak_args([])
    with pytest.raises(InvalidRequest, match="must be quoted"):
        parse_speak_args(["Hello", " world"])
    with pytest.raises(InvalidRequest, match="yes or no"):
        parse_speak_args(["Hello", "wait=maybe"])
    with pytest.raises(InvalidRequest, match="unknown speak option"):
        parse_speak_args(["Hello", "speed=2"])


# -- the server, with a fake Asterisk on a loopback socket -----------------------------------------


async def fake_asterisk(port: int, env: list[str], replies: list[str]):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(("\n".join(env) + "\n\n").encode())
    commands = []
    for reply in replies:
        commands.append((await reader.readline()).decode())
        writer.write(reply.encode())
    rest = await reader.read()  # the server closes when the script ends
    writer.close()
    return commands, rest


async def test_server_runs_the_script_and_closes():
    seen = []

    async def handler(env, conn):
        seen.append(env.script)
        response = await conn.command(set_variable("A", "1"))
        seen.append(response.code)
        response = await conn.command(exec_app("Playtones", "0"))
        seen.append((response.code, conn.hung_up))

    server = AgiServer("127.0.0.1", 0, handler)
    await server.start()
    try:
        commands, rest = await fake_asterisk(server.bound_port, ENV, ["200 result=1\n", "HANGUP\n200 result=0\n"])
    finally:
        await server.aclose()
    assert commands == ['SET VARIABLE "A" "1"\n', 'EXEC Playtones "0"\n']
    assert rest == b""
    assert seen == ["speak", 200, (200, True)]


async def test_until_hangup_returns_none_on_hangup_and_cancels_the_wait():
    outcome = {}
    never: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def handler(env, conn):
        outcome["result"] = await conn.until_hangup(never)
        outcome["hung_up"] = conn.hung_up

    server = AgiServer("127.0.0.1", 0, handler)
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.bound_port)
        writer.write(("\n".join(ENV) + "\n\n").encode())
        await asyncio.sleep(0.1)
        writer.write(b"HANGUP\n")
        assert await asyncio.wait_for(reader.read(), 2) == b""
        writer.close()
    finally:
        await server.aclose()
    assert outcome == {"result": None, "hung_up": True}
    assert never.cancelled()


async def test_garbage_and_silence_are_dropped_and_shutdown_cancels_what_runs():
    started = asyncio.Event()

    async def handler(env, conn):
        started.set()
        await asyncio.sleep(3600)

    server = AgiServer("127.0.0.1", 0, handler, env_timeout=0.3)
    await server.start()
    # Not AGI: closed at once.
    r1, w1 = await asyncio.open_connection("127.0.0.1", server.bound_port)
    w1.write(b"GET / HTTP/1.1\r\n\r\n")
    assert await asyncio.wait_for(r1.read(), 2) == b""
    # Says nothing: closed after env_timeout.
    r2, w2 = await asyncio.open_connection("127.0.0.1", server.bound_port)
    assert await asyncio.wait_for(r2.read(), 2) == b""
    # A script running at shutdown: cancelled, its connection closed.
    r3, w3 = await asyncio.open_connection("127.0.0.1", server.bound_port)
    w3.write(("\n".join(ENV) + "\n\n").encode())
    await asyncio.wait_for(started.wait(), 2)
    await asyncio.wait_for(server.aclose(grace=0.1), 5)
    assert await asyncio.wait_for(r3.read(), 2) == b""
    for w in (w1, w2, w3):
        w.close()


# -- config and the scripts' refusals (a stand-in service and connection) --------------------------


def test_agi_config(tmp_path):
    from speakd.config import ConfigError, load_config

    assert load_config(environ={}).agi.listen == ""  # off by default
    config = load_config(environ={"SPEAKD_AGI_LISTEN": "[::1]:4573", "SPEAKD_AGI_CUSTOMER_ID": "c1"})
    assert config.agi.address() == ("::1", 4573)
    assert config.agi.customer_id == "c1"
    with pytest.raises(ConfigError, match=r"agi\.listen"):
        load_config(environ={"SPEAKD_AGI_LISTEN": "4573"})


class FakeConnection:
    def __init__(self):
        self.hung_up = False
        self.sent: list[str] = []

    async def command(self, line):
        self.sent.append(line)
        return parse_response(["200 result=1"])[0]

    async def until_hangup(self, fut):
        return await fut

    def variables(self) -> dict[str, str]:
        return {
            args[2]: args[3] for args in map(res_agi_parse_args, (s.strip() for s in self.sent)) if args[0] == "SET"
        }


class FakeService(SpeakingService):
    """The service's ARI and session seams stood in for; its call-level commands are the real ones."""

    owner_variable = "SPEAKD_CUSTOMER_ID"

    def __init__(self, owner=""):
        self.owner = owner
        self.spoken = []

    async def channel_customer(self, channel_id, fallback=""):
        return self.owner or fallback

    def active_on(self, reference_type, reference_id):
        return None

    async def speak_on_call(self, *args):
        self.spoken.append(args)
        raise AssertionError("not expected")


async def run_script(env_lines, service, default_customer=""):
    from speakd.agi.scripts import AgiScripts

    conn = FakeConnection()
    scripts = AgiScripts(service, default_customer=default_customer, default_provider="piper")
    await scripts.run(parse_environment(env_lines), conn)
    return conn


async def test_speak_refusals_are_set_in_variables_and_nothing_is_spoken():
    env = [line for line in ENV if not line.startswith("agi_arg")]
    conn = await run_script([*env, "agi_arg_1: hello"], FakeService())  # no customer anywhere
    assert conn.variables()["SPEAKD_SAY_STATUS"] == "error"
    assert "no customer" in conn.variables()["SPEAKD_ERROR"]
    conn = await run_script([*env, "agi_arg_1: hello", "agi_arg_2: direction=sideways"], FakeService("c1"))
    assert "'direction' must be one of" in conn.variables()["SPEAKD_ERROR"]
    conn = await run_script([*env, "agi_arg_1: hello", "agi_arg_2: language=english"], FakeService("c1"))
    assert "BCP47" in conn.variables()["SPEAKD_ERROR"]
    assert not any("Playtones" in line for line in conn.sent)  # refused before the keepalive


async def test_flush_with_nothing_active_is_an_error_stop_is_not():
    env = [line.replace(": speak", ": flush") for line in ENV if not line.startswith("agi_arg")]
    conn = await run_script(env, FakeService(), default_customer="c1")
    assert "nothing to flush" in conn.variables()["SPEAKD_ERROR"]
    env = [line.replace(": speak", ": stop") for line in ENV if not line.startswith("agi_arg")]
    conn = await run_script(env, FakeService(), default_customer="c1")
    assert conn.variables() == {"SPEAKD_SPEAKING_ID": "", "SPEAKD_ERROR": ""}
    env = [line.replace(": speak", ": dance") for line in ENV if not line.startswith("agi_arg")]
    conn = await run_script(env, FakeService(), default_customer="c1")
    assert "unknown speakd AGI script 'dance'" in conn.variables()["SPEAKD_ERROR"]
