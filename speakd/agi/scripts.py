"""The FastAGI scripts speakd serves: ``speak``, ``flush`` and ``stop`` on the calling channel.

Each script reports back in channel variables (docs/ways-in.md, "From the dialplan"); a refusal never
breaks the dialplan: it is logged and set in ``SPEAKD_ERROR`` (and ``SPEAKD_SAY_STATUS=error``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import structlog

from speakd.agi.protocol import AgiEnvironment, AgiResponse, exec_app, set_variable
from speakd.errors import InvalidRequest, SpeakdError, either
from speakd.parsing import parse_bool
from speakd.sessions.requests import SAY_FIELDS, SESSION_OPTIONS, call_create_request, say_request
from speakd.sessions.service import CallVerb, SpeakingService

log = structlog.get_logger(__name__)
T = TypeVar("T")

# Options of ``speak`` after its text: session options (a new session only; ``voice`` is short
# for ``voice_id``), say options, flags.
CREATE_OPTIONS = {name: name for name in SESSION_OPTIONS} | {"voice": "voice_id"}
SAY_OPTIONS = tuple(f for f in SAY_FIELDS if f != "text")  # the text is the first argument
FLAGS = ("wait", "keepalive")
# A channel in the dialplan is the caller: by default it is the one that hears.
CALLER_DIRECTION = "out"
# After a hangup mid-wait: how long the say may take to be marked final (the hangup stops the session).
HANGUP_SETTLE_S = 5.0

USAGE = "AGI(agi://<host>:<port>/speak,<text>[,option=value...][,wait])"

# The variables each script sets (every one, every time: a dialplan never reads a stale value).
SPEAKING_ID = "SPEAKD_SPEAKING_ID"
SAY_ID = "SPEAKD_SAY_ID"
SAY_STATUS = "SPEAKD_SAY_STATUS"
HEARD_TEXT = "SPEAKD_HEARD_TEXT"
ERROR = "SPEAKD_ERROR"


class Connection(Protocol):
    """What a script needs of its FastAGI connection (speakd.agi.server.AgiConnection)."""

    @property
    def hung_up(self) -> bool: ...

    async def command(self, line: str) -> AgiResponse: ...

    async def until_hangup(self, aw: asyncio.Future[T]) -> T | None: ...


@dataclass
class SpeakArgs:
    text: str
    create: dict[str, str] = field(default_factory=dict)
    say: dict[str, str] = field(default_factory=dict)
    wait: bool = False
    keepalive: bool = True


def parse_speak_args(args: list[str]) -> SpeakArgs:
    """``<text>[,option=value...][,wait]`` as the dialplan gave them (agi_arg_1...)."""
    if not args:
        raise InvalidRequest(f"speak needs a text: {USAGE}")
    parsed = SpeakArgs(args[0])
    for raw in args[1:]:
        arg = raw.strip()
        if not arg:
            continue  # an empty argument (",,"): nothing asked
        key, sep, value = arg.partition("=")
        key, value = key.strip().lower(), value.strip()
        if key in FLAGS:
            try:
                setattr(parsed, key, parse_bool(value) if sep else True)  # a bare "wait" is wait=yes
            except ValueError:
                raise InvalidRequest(f"option '{key}' must be yes or no; got '{value}'") from None
        elif sep and key in CREATE_OPTIONS:
            parsed.create[CREATE_OPTIONS[key]] = value
        elif sep and key in SAY_OPTIONS:
            parsed.say[key] = value
        else:
            # Not reject_unknown: the argument is refused as written (a known name without "=" too).
            raise InvalidRequest(
                f"unknown speak option '{arg}' (options: {either([*CREATE_OPTIONS, *SAY_OPTIONS, *FLAGS])}); "
                "a text with commas must be quoted: "
                'AGI(agi://<host>:<port>/speak,"Hello, world")'
            )
    return parsed


class AgiScripts:
    """Runs one FastAGI request against the Speaking service."""

    def __init__(self, service: SpeakingService, *, default_customer: str, default_provider: str) -> None:
        self.service = service
        self.default_customer = default_customer
        self.default_provider = default_provider

    async def run(self, env: AgiEnvironment, conn: Connection) -> None:
        script = env.script
        handler = {"speak": self.speak, "flush": self.flush, "stop": self.stop}.get(script)
        if handler is None:
            message = f"unknown speakd AGI script '{script}': use speak, flush or stop"
            log.warning("agi_refused", script=script, error=message)
            await _set(conn, {ERROR: message})
            return
        await handler(env, conn)

    async def _customer(self, env: AgiEnvironment) -> str:
        return await self.service.customer_of_channel(
            env.channel_id, self.default_customer, "default customer ([agi] customer_id)"
        )

    async def speak(self, env: AgiEnvironment, conn: Connection) -> None:
        out = {SPEAKING_ID: "", SAY_ID: "", SAY_STATUS: "error", HEARD_TEXT: "", ERROR: ""}
        keepalive = False
        try:
            args = parse_speak_args(env.args)
            # Validated before anything happens on the call.
            create = call_create_request(
                env.channel_id, {"direction": CALLER_DIRECTION, **args.create}, self.default_provider
            )
            say = say_request({"text": args.text, **args.say})
            customer = await self._customer(env)
            out[SPEAKING_ID] = self.service.active_on("call", env.channel_id) or ""
            if args.wait and args.keepalive:
                # A channel sitting in AGI has nothing written to it, and whisper audio rides on
                # frames written to the channel (asterisk#1966): a silence generator writes them.
                keepalive = await _command_ok(conn, exec_app("Playtones", "0"), "keepalive_start_failed")
            record, item = await self.service.speak_on_call(customer, env.channel_id, create, say)
            out |= {SPEAKING_ID: record.id, SAY_ID: item.say_id, SAY_STATUS: str(item.status)}
            log.info("agi_say_queued", speaking_id=record.id, say_id=item.say_id, wait=args.wait)
            if args.wait:
                final = await conn.until_hangup(asyncio.ensure_future(self.service.wait_say(record.id, item.say_id)))
                if final is None:  # the caller hung up: the hangup ends the session, and the say with it
                    out[SAY_STATUS], out[HEARD_TEXT] = await self._settled(customer, record.id, item.say_id)
                else:
                    out |= {SAY_STATUS: str(final.status), HEARD_TEXT: final.heard_text}
                    if final.error:
                        out[ERROR] = final.error
        except SpeakdError as exc:
            log.warning("agi_refused", script="speak", error=exc.message, channel=env.channel)
            out |= {SAY_STATUS: "error", ERROR: exc.message}
        finally:
            if keepalive and not conn.hung_up:
                await _command_ok(conn, exec_app("StopPlaytones"), "keepalive_stop_failed")
        log.info("agi_speak_done", speaking_id=out[SPEAKING_ID], say_id=out[SAY_ID], status=out[SAY_STATUS])
        await _set(conn, out)

    async def _settled(self, customer: str, speaking_id: str, say_id: str) -> tuple[str, str]:
        """The say's status and heard text once the hangup has ended it (or as it is by then)."""
        try:
            final = await asyncio.wait_for(self.service.wait_say(speaking_id, say_id), HANGUP_SETTLE_S)
            return str(final.status), final.heard_text
        except TimeoutError:
            says = await self.service.says(customer, speaking_id)
            say = next((s for s in says if s["say_id"] == say_id), {})
            return say.get("status", "error"), say.get("heard_text", "")

    async def flush(self, env: AgiEnvironment, conn: Connection) -> None:
        await self._session_verb(env, conn, "flush")

    async def stop(self, env: AgiEnvironment, conn: Connection) -> None:
        await self._session_verb(env, conn, "stop")

    async def _session_verb(self, env: AgiEnvironment, conn: Connection, verb: CallVerb) -> None:
        out = {SPEAKING_ID: "", ERROR: ""}
        try:
            if any(a.strip() for a in env.args):
                raise InvalidRequest(f"{verb} takes no arguments: AGI(agi://<host>:<port>/{verb})")
            customer = await self._customer(env)
            # The dialplan's stop is idempotent, as a stop by id is; a flush of nothing is refused.
            speaking_id = await self.service.on_call(verb, customer, env.channel_id, missing_ok=verb == "stop")
            if speaking_id is None:
                log.info("agi_stop_nothing_active", channel=env.channel)
            else:
                out[SPEAKING_ID] = speaking_id
                log.info(f"agi_{verb}", speaking_id=speaking_id)
        except SpeakdError as exc:
            log.warning("agi_refused", script=verb, error=exc.message, channel=env.channel)
            out[ERROR] = exc.message
        await _set(conn, out)


async def _command_ok(conn: Connection, line: str, failure_event: str) -> bool:
    response = await conn.command(line)
    if not response.ok:
        log.warning(failure_event, command=line.strip(), response=response.describe())
    return response.ok


async def _set(conn: Connection, variables: dict[str, str]) -> None:
    for name, value in variables.items():
        response = await conn.command(set_variable(name, value))
        if response.code != 200:
            log.warning("agi_set_variable_failed", variable=name, response=response.describe())
