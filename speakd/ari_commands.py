"""Operators' ARI applications driving speakd by user events: a way in, beside the API and AGI
(and like them, above the sessions it drives), reading requests as they do (sessions.requests).

An application sends ``POST /events/user/<command>?application=<speakd's app>&source=channel:<id>``
with its arguments as variables (``{"variables": {...}}``); speakd's application receives it
as a ``ChannelUserevent`` (``eventname``, ``userevent``: the variables, ``channel``: the
channel's snapshot). Commands:

- ``speakd_say``: ``text`` (required), ``payload_type``, ``client_state``, ``command_id``, ``stop``
  as in the API's say; ``language``, ``provider``, ``voice_id``, ``direction`` for the session
  made when the channel has none live (ignored otherwise).
- ``speakd_flush``, ``speakd_stop``: the session live on the channel.

Every command may carry ``reply_app``: an application that also gets the command's
``speakd_error``, whether or not it watches the channel.

The customer is the one the channel's owner variable names, else the configured operator
customer; with neither the command is refused. A refused command is logged and raised back as
a ``speakd_error`` user event on the channel (``command``, ``message``, ``reason``, and the
command's ``command_id``/``client_state`` if it had them), which every application watching the
channel receives.

Commands are queued (bounded) by the ARI events reader without waiting and run in order by a
task owned here: a command awaits ARI itself, which the events reader must never do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog

from speakd.errors import (
    INTERNAL_ERROR,
    InvalidRequest,
    ServiceUnavailable,
    SpeakdError,
    TooManyRequests,
    invalid_field,
    reject_unknown,
)
from speakd.sessions.requests import SAY_FIELDS, SESSION_OPTIONS, call_create_request, say_request
from speakd.sessions.service import SHUTTING_DOWN, CallVerb, SpeakingService
from speakd.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

SAY = "speakd_say"
FLUSH = "speakd_flush"
STOP = "speakd_stop"
ERROR = "speakd_error"
COMMANDS = (SAY, FLUSH, STOP)
REPLY_APP = "reply_app"
ACCEPTED = {
    SAY: (*SAY_FIELDS, *SESSION_OPTIONS, REPLY_APP),
    FLUSH: (REPLY_APP,),
    STOP: (REPLY_APP,),
}
# What a command other than a say does to the channel's session (refused if none is live).
VERBS: dict[str, CallVerb] = {FLUSH: "flush", STOP: "stop"}
QUEUE_COMMANDS = 200

# (event name, source, variables, also to these applications): raises a user event.
RaiseEvent = Callable[[str, str, dict[str, str], tuple[str, ...]], None]


class AriCommands:
    def __init__(
        self,
        service: SpeakingService,
        raise_event: RaiseEvent,
        *,
        operator_customer_id: str = "",
        default_provider: str,
        queue_commands: int = QUEUE_COMMANDS,
    ) -> None:
        self._service = service
        self._raise_event = raise_event
        self._operator_customer_id = operator_customer_id
        self._default_provider = default_provider
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(queue_commands)
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def offer(self, event: dict[str, Any]) -> None:
        """A ``ChannelUserevent`` for speakd's application (from the ARI events reader)."""
        name = event.get("eventname", "")
        if name not in COMMANDS:
            log.debug("ari_user_event_ignored", eventname=name)
            return
        if self._closed:
            self._refuse(event, ServiceUnavailable(SHUTTING_DOWN))
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._refuse(event, TooManyRequests(f"more than {self._queue.maxsize} ARI commands waiting; retry shortly"))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="speakd-ari-commands")

    async def aclose(self) -> None:
        self._closed = True
        await cancel_and_wait(self._task)

    async def _run(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                await self.handle(event)
            except Exception:  # a bug must not end command handling for good
                log.exception("ari_command_crashed", command=event.get("eventname"))
                self._refuse(event, SpeakdError(INTERNAL_ERROR))

    async def handle(self, event: dict[str, Any]) -> None:
        name = event.get("eventname", "")
        channel_id = (event.get("channel") or {}).get("id", "")
        try:
            variables = _variables(event, name)
            if not channel_id:
                raise InvalidRequest(f"{name} must be sent with source=channel:<channel id>")
            customer_id = await self._service.customer_of_channel(
                channel_id, self._operator_customer_id, "operator customer ([ari] operator_customer_id)"
            )
            if name == SAY:
                say = say_request(variables)
                options = {k: variables[k] for k in SESSION_OPTIONS if k in variables}
                create = call_create_request(channel_id, options, self._default_provider)
                record, item = await self._service.speak_on_call(customer_id, channel_id, create, say)
                log.info(
                    "ari_command",
                    command=name,
                    channel_id=channel_id,
                    speaking_id=record.id,
                    say_id=item.say_id,
                    command_id=say.command_id or None,
                )
                return
            speaking_id = await self._service.on_call(VERBS[name], customer_id, channel_id)
            log.info("ari_command", command=name, channel_id=channel_id, speaking_id=speaking_id)
        except SpeakdError as exc:
            self._refuse(event, exc)

    def _refuse(self, event: dict[str, Any], exc: SpeakdError) -> None:
        message, reason = exc.message, exc.reason
        name = event.get("eventname", "")
        channel_id = (event.get("channel") or {}).get("id", "")
        sent = event.get("userevent") or {}
        log.info("ari_command_refused", command=name, channel_id=channel_id or None, reason=reason, error=message)
        variables = {"command": name, "message": message, "reason": reason, "channel_id": channel_id}
        for echoed in ("command_id", "client_state"):
            if isinstance(sent.get(echoed), str) and sent[echoed]:
                variables[echoed] = sent[echoed]
        reply_app = sent.get(REPLY_APP)
        also_to = (reply_app,) if isinstance(reply_app, str) and reply_app else ()
        self._raise_event(ERROR, f"channel:{channel_id}" if channel_id else "", variables, also_to)


def _variables(event: dict[str, Any], name: str) -> dict[str, Any]:
    variables = {k: v for k, v in (event.get("userevent") or {}).items() if k != "eventname"}
    reject_unknown(variables, ACCEPTED[name], "variable")  # the speakd_error names the command
    reply_app = variables.pop(REPLY_APP, "")
    if not isinstance(reply_app, str):
        raise invalid_field(f"'{REPLY_APP}' must be a string")
    return variables
