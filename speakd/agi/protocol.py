"""The FastAGI protocol, without I/O: what Asterisk sends, what we send back.

A FastAGI session (Asterisk's ``AGI(agi://host:port/script,arg1,arg2...)``):

1. Asterisk connects and sends its *environment*: ``agi_<name>: <value>`` lines, then an empty
   line. The dialplan's arguments are ``agi_arg_1`` ... ``agi_arg_N``; the script is
   ``agi_network_script`` (the URL's path, with any ``?query``).
2. We send one command per line; Asterisk answers each with a response:
   ``200 result=<n> [(<data>)] [<more>]``; ``510 Invalid or unknown command``;
   ``511 Command Not Permitted on a dead channel...``; or a usage error
   ``520-Invalid command syntax.  Proper usage follows:`` + usage lines + ``520 End of proper usage.``
   (or a single ``520 ...`` line).
3. When the channel hangs up, Asterisk sends ``HANGUP`` on a line of its own, between or before
   responses (unless the channel sets ``AGISIGHUP=no``). Afterwards only "dead" commands work
   (``SET VARIABLE``, ``GET VARIABLE``, ``VERBOSE``, ``EXEC``...); the rest get 511.
4. Closing the connection ends the ``AGI()`` application; the dialplan continues.

Asterisk reads a command into a 2048-byte buffer (res_agi's ``AGI_BUF_LEN``): a longer line is cut
and its remainder read as a second, garbage command. :func:`format_command` keeps every line under
that, shortening the last argument (a variable's value) if it must.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote

# res_agi reads a command line into char buf[2048]: the line with its newline must fit.
MAX_COMMAND_BYTES = 2047
# What we accept from Asterisk: an environment is about 25 short lines plus the arguments.
MAX_ENV_LINES = 200
MAX_LINE_BYTES = 16 * 1024
MAX_USAGE_LINES = 100

HANGUP_LINE = "HANGUP"


class AgiProtocolError(Exception):
    """Asterisk (or whatever connected) sent something that is not FastAGI."""


@dataclass
class AgiEnvironment:
    """The block Asterisk sends first. ``values`` keeps every ``agi_*`` key without its prefix."""

    values: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)

    @property
    def script(self) -> str:
        """The script name: the URL path without slashes and query (``speak`` for ``agi://h:p/speak``)."""
        path = self.values.get("network_script", "")
        return unquote(path.partition("?")[0].strip("/"))

    @property
    def channel_id(self) -> str:
        """The calling channel's unique id: its ARI channel id."""
        return self.values.get("uniqueid", "")

    @property
    def channel(self) -> str:
        return self.values.get("channel", "")


class EnvironmentParser:
    """Feed it the lines Asterisk sends first; ``feed`` returns the environment at the empty line."""

    def __init__(self) -> None:
        self._values: dict[str, str] = {}
        self._lines = 0

    def feed(self, line: str) -> AgiEnvironment | None:
        line = line.rstrip("\r\n")
        if not line:
            if not self._values:
                raise AgiProtocolError("empty AGI environment")
            return _environment(self._values)
        self._lines += 1
        if self._lines > MAX_ENV_LINES:
            raise AgiProtocolError(f"AGI environment longer than {MAX_ENV_LINES} lines")
        key, sep, value = line.partition(":")
        if not sep or not key.startswith("agi_") or " " in key:
            raise AgiProtocolError(f"not an AGI environment line: {line[:80]!r}")
        self._values[key[4:]] = value[1:] if value.startswith(" ") else value
        return None


def _environment(values: dict[str, str]) -> AgiEnvironment:
    args: list[str] = []
    n = 1
    while f"arg_{n}" in values:
        args.append(values[f"arg_{n}"])
        n += 1
    return AgiEnvironment(dict(values), args)


# -- commands ----------------------------------------------------------------------------------


def quote(value: str) -> str:
    """One command argument, as res_agi's parser reads it back: in double quotes, with ``"`` and
    ``\\`` escaped by a backslash. A line break would end the command, so it becomes a space."""
    value = value.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_command(*words: str, quoted: tuple[str, ...] = ()) -> str:
    """A command line (with its newline): ``words`` as they are, then ``quoted`` arguments.

    The last quoted argument is shortened (by whole characters) if the line would not fit
    Asterisk's buffer; any other overflow is a caller's bug.
    """
    for word in words:
        if not word or any(c.isspace() for c in word) or '"' in word or "\\" in word:
            raise ValueError(f"command word {word!r} must be one bare word")
    parts = [*words, *(quote(q) for q in quoted)]
    line = " ".join(parts) + "\n"
    excess = len(line.encode()) - MAX_COMMAND_BYTES
    if excess > 0:
        if not quoted:
            raise ValueError(f"AGI command is {excess} bytes too long")
        head = " ".join(parts[:-1]) + " "
        room = MAX_COMMAND_BYTES - len(head.encode()) - 1
        last = quoted[-1]
        while last and len(quote(last).encode()) > room:
            # Cut a little more than the excess each time: escapes make quoting grow.
            last = last[: max(0, len(last) - max(1, (len(quote(last).encode()) - room) // 2))]
        if len(quote(last).encode()) > room:
            raise ValueError("AGI command does not fit Asterisk's buffer")
        line = head + quote(last) + "\n"
    return line


def set_variable(name: str, value: str) -> str:
    return format_command("SET", "VARIABLE", quoted=(name, value))


def exec_app(app: str, args: str = "") -> str:
    """``EXEC <app> <args>``: run a dialplan application on the channel (``args`` comma-separated)."""
    return format_command("EXEC", app, quoted=(args,)) if args else format_command("EXEC", app)


# -- responses ---------------------------------------------------------------------------------


@dataclass
class AgiResponse:
    code: int
    result: str = ""  # the value after result=
    data: str = ""  # the text in parentheses, if any
    rest: str = ""  # what follows (e.g. endpos=...)
    usage: list[str] = field(default_factory=list)  # a 520's usage text
    line: str = ""

    @property
    def ok(self) -> bool:
        return self.code == 200 and self.result != "-1"

    def describe(self) -> str:
        if self.code == 200:
            return f"result={self.result}" + (f" ({self.data})" if self.data else "")
        return self.line + ("\n" + "\n".join(self.usage) if self.usage else "")


_CODE = re.compile(r"^(\d{3})([ -])(.*)$")


class ResponseParser:
    """Feed it lines after sending a command. ``feed`` returns the response once complete;
    a ``HANGUP`` line before it sets ``hung_up`` and is otherwise skipped."""

    def __init__(self) -> None:
        self.hung_up = False
        self._usage: list[str] | None = None
        self._first = ""

    def feed(self, line: str) -> AgiResponse | None:
        line = line.rstrip("\r\n")
        if self._usage is not None:  # inside a 520- block: until "520 ..." (the end line)
            if line.startswith("520 "):
                return AgiResponse(520, usage=self._usage, line=self._first)
            if len(self._usage) >= MAX_USAGE_LINES:
                raise AgiProtocolError("520 usage text longer than expected")
            self._usage.append(line)
            return None
        if line == HANGUP_LINE:
            self.hung_up = True
            return None
        m = _CODE.match(line)
        if m is None:
            raise AgiProtocolError(f"not an AGI response: {line[:80]!r}")
        code, sep, text = int(m.group(1)), m.group(2), m.group(3)
        if sep == "-":
            if code != 520:
                raise AgiProtocolError(f"unexpected multi-line response: {line[:80]!r}")
            self._usage, self._first = [], line
            return None
        if code == 200:
            return _result(text, line)
        return AgiResponse(code, line=line)


def _result(text: str, line: str) -> AgiResponse:
    if not text.startswith("result="):
        raise AgiProtocolError(f"200 without result=: {line[:80]!r}")
    value, _, rest = text[len("result=") :].partition(" ")
    data = ""
    if rest.startswith("("):
        # GET VARIABLE's value may itself hold parentheses: take up to the last one, unless
        # what follows it looks like more fields (endpos=...).
        close = rest.rfind(")")
        tail = rest[close + 1 :] if close >= 0 else ""
        if close >= 0 and "=" in tail:
            close = rest.find(")")
        if close < 0:
            raise AgiProtocolError(f"unclosed ( in {line[:80]!r}")
        data, rest = rest[1:close], rest[close + 1 :]
    return AgiResponse(200, result=value, data=data, rest=rest.strip(), line=line)
